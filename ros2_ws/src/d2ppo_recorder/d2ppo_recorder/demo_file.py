"""The recorder's output file: robomimic HDF5, replaced by a complete new version for every saved demo.

Why write-then-rename: HDF5 updates its superblock, object headers and B-trees in place, so a process that
dies in the middle of appending a demo can leave a file that no longer opens, losing every demo in it --
measured here: an append that failed with EFBIG (a full disk fails the same way) left a file h5py refused
to open ("truncated file"), even without a kill. So a save never touches the output file itself:

1. copy the output to ``.<name>.tmp-<pid>`` in the same directory (same filesystem, so step 3 is a rename);
2. append the demo and rewrite the train/valid masks there with the project's one writer
   (``d2ppo.data.robomimic_hdf5.RobomimicWriter``), then fsync it;
3. ``os.replace`` it over the output (atomic on POSIX) and fsync the directory, so the rename is durable.

At any moment -- SIGKILL, power loss, a full disk -- the output path names the previous complete version or
the new one. A failed save removes its temporary file; one left by a killed recorder is removed when the next
``DemoFile`` opens the same output (the pid in its name is not alive).

Why the writing runs in a child process: after a failed write, HDF5 (2.0.0 with h5py 3.16 here) is not safe
to use again in the same process -- measured: EFBIG inside ``create_dataset`` segfaulted the process, and
where the first failure did not, the next save after it did. So the recorder process only reads HDF5; each
save forks a child that writes the new version and exits (``os._exit``: no interpreter or ROS teardown),
reporting ``ok <demo>`` or ``error <reason>`` through a pipe. Whatever HDF5 does on an I/O error, the
recorder stays up with its episode in memory. Fork rather than a fresh interpreter: the child starts in
about a millisecond with the arrays already in its memory. The recorder has other (DDS) threads; the child
only runs numpy, h5py and file system calls, none of which take a lock those threads hold. The child dies with
its parent (PR_SET_PDEATHSIG) and blocks SIGINT/SIGTERM, which reach the whole process group: the parent
decides when to stop.

Copy-then-append rather than rewriting every demo: the copy moves earlier demos byte for byte (the kernel's
copy_file_range, a reflink on XFS/btrfs) instead of decoding and re-compressing all their images on every
save, and the demos already in the file are never re-encoded. It costs one sequential copy per save (50 MB
copied and fsynced in 0.15 s here) and free space for a second copy of the file while a demo is saved.
"""

from __future__ import annotations

import ctypes
import os
import re
import select
import shutil
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
from d2ppo.data.robomimic_hdf5 import RobomimicWriter, list_demos

_DEMO_NAME = re.compile(r"demo_(\d+)")
#: prctl, looked up now: a forked child must not call dlopen (another thread may have held the loader's lock).
try:
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _PRCTL = None
#: Seconds a save may take before the writer process is killed and the save reported failed (a hung disk).
WRITE_TIMEOUT_S = 300.0


class DemoWriteError(RuntimeError):
    """A demo could not be saved (disk full, permission, bad data, ...); the output file is unchanged."""


def temp_path(path: Path, pid: int | None = None) -> Path:
    """The temporary file the recorder process ``pid`` (default: this one) writes the next version of ``path`` into."""
    return path.with_name(f".{path.name}.tmp-{os.getpid() if pid is None else pid}")


def stale_temp_files(path: Path) -> list[Path]:
    """Temporary files of ``path`` left by processes that are gone (or by an earlier run with this pid)."""
    out = []
    for p in path.parent.glob(f".{path.name}.tmp-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and (int(pid) == os.getpid() or not _alive(int(pid))):
            out.append(p)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class DemoFile:
    """A robomimic file that demos are added to one atomic file version at a time.

    Args:
        path: the HDF5 file. Its directory is created if needed.
        env_args: robomimic ``env_args`` for a new file (an appended file keeps its own).
        append: keep the demos of an existing file; false starts a new file, replacing an existing one.
        valid_fraction: after each save, ``mask/train`` / ``mask/valid`` are rewritten with this split (0: none).

    Raises (at construction): DemoWriteError when the file cannot be created, DatasetFormatError (a
    ValueError) when an existing file to append to is not a readable robomimic file.
    """

    def __init__(self, path, env_args: Mapping, append: bool = True, valid_fraction: float = 0.1):
        self.path = Path(path)
        self.env_args = dict(env_args)
        self.valid_fraction = float(valid_fraction)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DemoWriteError(f"{self.path}: cannot create its directory: {e}") from e
        self.removed_temp_files = stale_temp_files(self.path)
        for p in self.removed_temp_files:
            p.unlink(missing_ok=True)
        if append and self.path.exists():
            names = list_demos(self.path)
        else:
            names = []
            try:
                self._save(lambda tmp: RobomimicWriter(tmp, self.env_args).close() or "")
            except DemoWriteError as e:
                raise DemoWriteError(f"{self.path}: cannot create the file: {e}") from e
        self.demo_count = len(names)
        indices = [int(m.group(1)) for m in map(_DEMO_NAME.fullmatch, names) if m]
        self.next_index = 1 + max(indices, default=-1)

    def add_demo(
        self,
        obs: Mapping[str, np.ndarray],
        actions: np.ndarray,
        rewards: np.ndarray | None = None,
        attrs: Mapping | None = None,
    ) -> str:
        """Save one demo (arrays as for ``RobomimicWriter.add_demo``: obs key -> [T, ...], actions [T, Da],
        rewards [T]); returns its name ("demo_N") once it is durable.

        Raises DemoWriteError with the reason when it could not be saved; the file then holds exactly the
        demos it held before.
        """

        def build(tmp: Path) -> str:
            shutil.copyfile(self.path, tmp)
            writer = RobomimicWriter(tmp, self.env_args, append=True)
            name = writer.add_demo(obs, actions, rewards=rewards, attrs=dict(attrs or {}))
            if self.valid_fraction > 0:
                writer.write_masks(self.valid_fraction, seed=0)
            writer.close()
            return name

        try:
            name = self._save(build)
        except DemoWriteError as e:
            raise DemoWriteError(f"{self.path}: demo_{self.next_index} not saved: {e}") from e
        if name is None:  # the writer died after its rename: the demo is in, the newest of the file
            name = max(list_demos(self.path), key=lambda n: int(_DEMO_NAME.fullmatch(n).group(1)))
        self.demo_count += 1
        self.next_index = int(name.split("_")[1]) + 1
        return name

    def _save(self, build: Callable[[Path], str]) -> str | None:
        """``build(tmp)`` writes the new version into the temporary file, in a forked writer child that then
        fsyncs it and renames it over the output (see the module docstring); returns what ``build`` returned,
        or None when the child died after its rename (the new version is in place, its report lost)."""
        tmp = temp_path(self.path)
        before = _file_identity(self.path)
        parent = os.getpid()
        read_fd, write_fd = os.pipe()
        try:
            pid = os.fork()
        except OSError as e:  # out of memory or processes
            os.close(read_fd)
            os.close(write_fd)
            raise DemoWriteError(f"could not start the writer process: {e}") from e
        if pid == 0:
            os.close(read_fd)
            _writer_child(parent, write_fd, lambda: _commit(build, tmp, self.path))  # never returns
        os.close(write_fd)
        report, timed_out = _read_until_eof(read_fd, WRITE_TIMEOUT_S)
        if timed_out:
            os.kill(pid, signal.SIGKILL)
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        status, _, text = report.partition(" ")
        if code == 0 and status == "ok":
            return text
        if _file_identity(self.path) != before:
            _fsync(self.path.parent, directory=True)
            return None
        tmp.unlink(missing_ok=True)  # a child that was killed or crashed could not clean up
        if timed_out:
            raise DemoWriteError(f"the writer process took more than {WRITE_TIMEOUT_S:.0f} s and was killed")
        if status == "error":
            raise DemoWriteError(text)
        why = f"signal {signal.Signals(-code).name}" if code < 0 else f"status {code}"
        raise DemoWriteError(f"the writer process died ({why})")

    def __len__(self) -> int:
        """Demos in the file."""
        return self.demo_count


# --- the writer child -------------------------------------------------------------------------------------
def _describe(e: BaseException) -> str:
    """One line naming the first cause of a failed write. h5py raises a chain (the failed write, then the failed
    close of the file, whose message is only a symptom); the OS errno inside it is what the operator can fix."""
    chain = []
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    for x in chain:
        if isinstance(x, OSError) and x.errno and x.strerror:
            return f"[Errno {x.errno}] {x.strerror}" + (f": {x.filename}" if x.filename else "")
    root = chain[-1]
    m = re.search(r"errno = (\d+)", " ".join(str(x) for x in chain))
    if m:
        errno = int(m.group(1))
        return f"[Errno {errno}] {os.strerror(errno)} (HDF5: {str(root).split('(', 1)[0].strip()})"
    return f"{type(root).__name__}: {root}"


def _file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of ``path``: a rename over it changes the inode."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when the recorder that started it dies (Linux prctl PR_SET_PDEATHSIG)."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _read_until_eof(fd: int, timeout_s: float) -> tuple[str, bool]:
    """Everything written to pipe ``fd`` until its writer closes it; (text, timed out). Closes ``fd``."""
    chunks, deadline = [], time.monotonic() + timeout_s
    try:
        while True:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                return b"".join(chunks).decode(errors="replace"), True
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks).decode(errors="replace"), False
            chunks.append(chunk)
    finally:
        os.close(fd)


def _writer_child(parent_pid: int, report_fd: int, save: Callable[[], str]) -> None:
    """The forked writer: ``save()``, its result on ``report_fd`` ("ok <result>" or "error <reason>"), then
    ``os._exit`` (never returns)."""
    code = 1
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})  # the parent decides
        _die_with_parent(parent_pid)
        # HDF5 and h5py print the exceptions of a failed write's clean-up; the reason goes through the pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        try:
            report = f"ok {save()}"
            code = 0
        except Exception as e:
            report = f"error {_describe(e)}"
        os.write(report_fd, report.encode())
    finally:
        os._exit(code)  # no interpreter or ROS teardown in the child; HDF5 may crash in its own after a failure


def _commit(build: Callable[[Path], str], tmp: Path, out: Path) -> str:
    """``build(tmp)``, fsync, rename over ``out``, fsync the directory; the temporary file never outlives a failure."""
    try:
        result = build(tmp)
        _fsync(tmp)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(out.parent, directory=True)
    return result

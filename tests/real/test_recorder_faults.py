"""The recorder under faults: a save that fails mid-write, SIGKILL inside the write window, non-finite actions,
an output it cannot create. Faults are real: the kernel refuses the writes (RLIMIT_FSIZE -> EFBIG, the errno
path a full disk's ENOSPC takes too: tests run as root, where read-only permissions do not stop writes, and
cannot mount a small filesystem), and the writer process is really killed.
"""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from d2ppo.data.robomimic_hdf5 import list_demos, read_demo, validate_file
from d2ppo_recorder.demo_file import DemoFile, DemoWriteError, temp_path
from d2ppo_recorder.episode import EpisodeRecorder, InputHistory, make_sample, real_env_args

CAMERA = "agentview"


@contextmanager
def file_size_limit(limit_bytes: int, pid: int = 0):
    """Writes past ``limit_bytes`` into any file fail with EFBIG in process ``pid`` (0: this one) while held.
    (Python ignores SIGXFSZ, so the write returns the error instead of killing the process.)"""
    old = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit_bytes, old[1]))
    try:
        yield
    finally:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, old)


def _temp_files(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f".{path.name}.tmp-*"))


def _episode(rec: EpisodeRecorder, t0: float, n: int, seed: int) -> None:
    """Record ``n`` samples with incompressible images (so a demo is far larger than the size-limit slack)."""
    rng = np.random.default_rng(seed)
    rec.start()
    for k in range(n):
        t = t0 + 0.05 * k
        history = InputHistory([CAMERA], keep_s=1.0)
        history.set_image(CAMERA, t, rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
        history.set_ee_pose(t, [0.5, 0.0, 0.3], [1.0, 0.0, 0.0, 0.0])
        history.set_fingers(t, 0.02, 0.02)
        history.set_arm_joints(t, np.zeros(7))
        obs, reason = make_sample(history, t, max_obs_age=0.2)
        assert reason == ""
        assert rec.add(obs, np.full(7, 0.01 * seed), "teleop") == ""


def test_a_save_that_fails_mid_write_keeps_the_file_unchanged_and_the_episode_for_a_retry(tmp_path):
    path = tmp_path / "demos.hdf5"
    rec = EpisodeRecorder(DemoFile(path, real_env_args("Lift", [CAMERA], 32, 20.0)))
    _episode(rec, 100.0, 20, seed=1)
    assert rec.stop() == "demo_0"
    before = hashlib.sha256(path.read_bytes()).hexdigest()

    _episode(rec, 200.0, 20, seed=2)
    # The copy of the file fits under the limit, the new demo's ~60 kB of images do not: the write fails inside
    # HDF5 (measured: the same fault during an in-place append leaves a file h5py can no longer open).
    with file_size_limit(path.stat().st_size + 8192), pytest.raises(DemoWriteError, match="File too large") as err:
        rec.stop()
    assert "demo_1 not saved" in str(err.value) and "stop again retries" in str(err.value)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before, "the output file was touched"
    assert list_demos(path) == ["demo_0"] and not _temp_files(path)
    assert rec.unsaved and not rec.recording and rec.steps == 20
    assert rec.write_errors == 1 and "File too large" in rec.last_write_error

    # The cause is gone: the same episode saves, and recording goes on.
    assert rec.stop() == "demo_1" and rec.last_write_error == "" and not rec.unsaved
    _episode(rec, 300.0, 5, seed=3)
    assert rec.stop() == "demo_2"
    validate_file(path, obs_keys=[f"{CAMERA}_image"], action_dim=7)
    assert list_demos(path) == ["demo_0", "demo_1", "demo_2"]
    for name, seed, n in (("demo_0", 1, 20), ("demo_1", 2, 20), ("demo_2", 3, 5)):
        demo = read_demo(path, name)
        assert len(demo) == n and np.allclose(demo.actions, 0.01 * seed)


def test_start_or_discard_drops_an_episode_whose_save_failed(tmp_path):
    path = tmp_path / "demos.hdf5"
    rec = EpisodeRecorder(DemoFile(path, real_env_args("Lift", [CAMERA], 32, 20.0)))
    _episode(rec, 100.0, 10, seed=1)
    with file_size_limit(path.stat().st_size + 4096), pytest.raises(DemoWriteError):
        rec.stop()
    assert rec.start() == 10 and rec.recording and rec.steps == 0  # the new episode replaces the unsaved one
    assert rec.discard() == 0
    _episode(rec, 200.0, 10, seed=2)
    with file_size_limit(path.stat().st_size + 4096), pytest.raises(DemoWriteError):
        rec.stop()
    assert rec.discard() == 10 and not rec.unsaved
    assert list_demos(path) == [] and rec.write_errors == 2


RECORDER_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from d2ppo_recorder.demo_file import DemoFile, DemoWriteError

    f = DemoFile(sys.argv[1], {"env_name": "Killed", "type": 4, "env_kwargs": {}}, append=True, valid_fraction=0.2)
    print("ready", len(f.removed_temp_files), flush=True)
    for seed, _ in enumerate(sys.stdin):  # one save per line
        rng = np.random.default_rng(seed)
        obs = {"agentview_image": rng.integers(0, 256, (40, 64, 64, 3), dtype=np.uint8),
               "robot0_eef_pos": rng.normal(size=(40, 3))}
        print("writing", f.next_index, flush=True)
        try:
            name = f.add_demo(obs, np.full((40, 7), (seed % 100) / 100.0), attrs={"seed": seed})
            print("saved", name.split("_")[1], flush=True)
        except DemoWriteError as e:
            print("failed", f.next_index, e, flush=True)
    """
)


def _check_demo(path: Path, name: str) -> None:
    """The demo holds exactly the arrays the recorder script made from its seed."""
    demo = read_demo(path, name)
    seed = int(demo.attrs["seed"])
    rng = np.random.default_rng(seed)
    np.testing.assert_array_equal(demo.obs["agentview_image"], rng.integers(0, 256, (40, 64, 64, 3), dtype=np.uint8))
    np.testing.assert_array_equal(demo.obs["robot0_eef_pos"], rng.normal(size=(40, 3)))
    np.testing.assert_allclose(demo.actions, (seed % 100) / 100.0)


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.mark.timeout(120)
def test_sigkill_inside_the_write_window_never_damages_saved_demos(tmp_path):
    """25 kills at a random moment while a save's temporary file exists (copying, writing HDF5, fsyncing or
    renaming): 20 of the writer process alone (the recorder reports the failed save and goes on), and every 5th
    of the whole recorder (its process group; the next recorder removes the temporary file left behind)."""
    path = tmp_path / "killed.hdf5"
    rng = np.random.default_rng(0)
    saved: set[int] = set()  # demos whose save returned
    maybe: set[int] = set()  # demos being saved at a kill: present whole, or absent
    hits = 0  # kills that landed while the temporary file existed

    def start():
        proc = subprocess.Popen(
            [sys.executable, "-c", RECORDER_SCRIPT, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert proc.stdout.readline().startswith("ready")
        return proc

    proc = start()
    try:
        for kill in range(25):
            if kill % 3 == 0:  # and now and then a save that runs to the end
                proc.stdin.write("go\n")
                proc.stdin.flush()
                assert proc.stdout.readline().startswith("writing")
                line = proc.stdout.readline()
                assert line.startswith("saved"), line
                saved.add(int(line.split()[1]))
            proc.stdin.write("go\n")
            proc.stdin.flush()
            index = int(proc.stdout.readline().split()[1])  # "writing <i>"
            tmp = temp_path(path, proc.pid)
            deadline = time.monotonic() + 5
            while not tmp.exists() and time.monotonic() < deadline:
                time.sleep(0.0005)
            # A save's temporary file lives 20-35 ms here (copy, HDF5 write of ~0.5 MB, fsync, rename).
            time.sleep(float(rng.uniform(0.0, 0.025)))
            hits += tmp.exists()
            maybe.add(index)
            if kill % 5 == 4:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate(timeout=10)
                left = _temp_files(path)
                assert left in ([], [tmp]), left
                proc = start()  # removes what the killed recorder left
            else:
                for child in _children(proc.pid):
                    os.kill(child, signal.SIGKILL)
                # "failed <i> ... died (signal SIGKILL)"; "saved <i>" when the kill came after the rename
                line = proc.stdout.readline()
                assert line.startswith(("failed", "saved")) and int(line.split()[1]) == index, line
                assert line.startswith("saved") or "SIGKILL" in line, line
                if line.startswith("saved"):
                    saved.add(index)
                maybe.discard(index)  # the recorder knows which: the file must agree exactly
            assert not _temp_files(path), "a killed save left its temporary file behind"

            # Every demo whose save returned is there and intact; one being saved is there whole, or absent.
            present = {int(n.split("_")[1]) for n in list_demos(path)}
            assert saved <= present <= saved | maybe, (kill, sorted(saved), sorted(present))
            for i in present - saved:
                _check_demo(path, f"demo_{i}")
            saved = present
        validate_file(path)
        for i in saved:
            _check_demo(path, f"demo_{i}")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)
    assert hits >= 15, f"only {hits} of 25 kills landed while a save was in progress"


def test_stale_temp_files_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    path = tmp_path / "d.hdf5"
    DemoFile(path, real_env_args("Lift", [], 0, 20.0))
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        for pid in (live.pid, dead.pid):
            temp_path(path, pid).write_bytes(b"partial")
        f = DemoFile(path, {}, append=True)
        assert f.removed_temp_files == [temp_path(path, dead.pid)]
        assert _temp_files(path) == [temp_path(path, live.pid)]
    finally:
        live.kill()
        live.wait()


# --- the node -----------------------------------------------------------------------------------------------
@pytest.mark.ros
@pytest.mark.timeout(120)
def test_recorder_node_survives_a_failed_save_and_non_finite_actions_and_records_again(spawn, test_node, tmp_path):
    """Through the real node over DDS: a NaN executed action is dropped and counted; a save that fails inside
    HDF5 (the node's file size limit lowered under it) answers stop with success=false and the reason, shows as
    ERROR in /diagnostics, leaves demo_0 intact; once the limit is back, stop again saves the same episode."""
    from d2ppo_control.ros_conversions import executed_msg
    from d2ppo_inference.ros_messages import image_msg
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image
    from std_srvs.srv import Trigger
    from test_recording_pipeline import FakeArmState
    from trajectory_msgs.msg import JointTrajectory

    out = tmp_path / "demos.hdf5"
    FakeArmState(test_node)
    image_pub = test_node.node.create_publisher(Image, f"/cameras/{CAMERA}/image_raw", 2)
    executed_pub = test_node.node.create_publisher(JointTrajectory, "/controller/executed", 10)
    rng = np.random.default_rng(0)
    nan_ticks = set()  # executed actions to publish as NaN (counted down per tick)
    tick = [0]

    def publish_inputs():
        now = test_node.node.get_clock().now().nanoseconds * 1e-9
        image_pub.publish(image_msg(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), now, "cam"))
        action = np.full(7, 0.1)
        if tick[0] in nan_ticks:
            action[2] = np.nan
        executed_pub.publish(executed_msg(action, now, "teleop"))
        tick[0] += 1

    test_node.node.create_timer(0.05, publish_inputs)
    diags = []
    test_node.node.create_subscription(
        DiagnosticArray, "/diagnostics", lambda m: diags.extend(s for s in m.status if s.name.endswith("recorder")), 50
    )
    recorder = spawn(
        "d2ppo_recorder.recorder_node",
        {"output": str(out), "camera_names": [CAMERA], "image_size": 32, "max_obs_age": 0.5, "diagnostics_period": 0.2},
    )

    def values() -> dict[str, str]:
        return {kv.key: kv.value for kv in diags[-1].values}

    start = test_node.call(Trigger, "/recorder/start")
    assert start.success, start.message + recorder.output()
    test_node.spin_until(lambda: diags and int(values()["steps"]) >= 3, 10)
    nan_ticks.update(range(tick[0] + 2, tick[0] + 4))  # two NaN actions in the middle of the episode
    test_node.spin_until(lambda: int(values().get("skipped_nonfinite", 0)) >= 2 and int(values()["steps"]) >= 10, 10)
    stop = test_node.call(Trigger, "/recorder/stop")
    assert stop.success and "demo_0" in stop.message, stop.message
    assert int(values()["skipped_nonfinite"]) == 2 and values()["write_errors"] == "0"
    demo_0 = read_demo(out, "demo_0")
    assert np.all(np.isfinite(demo_0.actions)) and np.allclose(demo_0.actions, 0.1)
    before = hashlib.sha256(out.read_bytes()).hexdigest()

    assert test_node.call(Trigger, "/recorder/start").success
    test_node.spin_until(lambda: int(values()["steps"]) >= 10, 10)
    with file_size_limit(out.stat().st_size + 8192, pid=recorder.proc.pid):
        failed = test_node.call(Trigger, "/recorder/stop")
    assert not failed.success and "demo_1 not saved" in failed.message and "File too large" in failed.message
    assert "stop again retries" in failed.message
    test_node.spin_until(lambda: diags[-1].level == b"\x02", 5)
    assert diags[-1].level == b"\x02" and "File too large" in diags[-1].message  # ERROR, with the reason
    assert values()["write_errors"] == "1" and int(values()["unsaved_steps"]) >= 10
    assert recorder.alive and hashlib.sha256(out.read_bytes()).hexdigest() == before and not _temp_files(out)

    retry = test_node.call(Trigger, "/recorder/stop")  # the cause is gone: the same episode saves
    assert retry.success and "demo_1" in retry.message, retry.message
    assert diags[-1].level != b"\x02" and values()["last_write_error"] == "" and values()["write_errors"] == "1"
    assert test_node.call(Trigger, "/recorder/start").success
    test_node.spin_for(0.5)
    assert test_node.call(Trigger, "/recorder/stop").success
    validate_file(out, obs_keys=[f"{CAMERA}_image"], action_dim=7)
    assert list_demos(out) == ["demo_0", "demo_1", "demo_2"] and recorder.alive
    np.testing.assert_array_equal(read_demo(out, "demo_0").obs[f"{CAMERA}_image"], demo_0.obs[f"{CAMERA}_image"])


@pytest.mark.ros
@pytest.mark.timeout(60)
def test_recorder_node_that_cannot_create_its_output_exits_naming_the_path(spawn, tmp_path):
    blocker = tmp_path / "not_a_directory"
    blocker.write_text("a regular file where the output's directory should be")
    recorder = spawn("d2ppo_recorder.recorder_node", {"output": str(blocker / "demos.hdf5")})
    assert recorder.proc.wait(30) == 2
    assert "recorder:" in recorder.output() and "cannot create its directory" in recorder.output()
    assert "not_a_directory" in recorder.output()

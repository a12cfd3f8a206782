"""Results files of the experiment runners (DESIGN.md, "Results files"): a JSON list of records, rewritten
atomically after every finished cell; confidence intervals over seeds; one progress line per cell.

Used by ``d2ppo.ablation`` (docs/results/ablation.json) and ``d2ppo.finetune_comparison``
(docs/results/finetune_comparison.json). A record is a flat dict; a runner names the fields that identify a
cell (its *key*), and a record with the same key replaces the old one, so a rerun never duplicates a cell.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
import types
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np


# ---------------------------------------------------------------------- records
def atomic_write_json(path: str | Path, obj) -> None:
    """Write JSON to a temporary file in the same folder and rename it over ``path``: a reader (or a crash)
    never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_records(path: str | Path) -> list[dict]:
    """The records of a results file ([] if it does not exist). A file that is not a JSON list is an error that
    names it (a runner must not overwrite someone's results it cannot read)."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        records = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a JSON file ({e.msg} at line {e.lineno})") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ValueError(f"{path}: expected a JSON list of records")
    return records


def record_key(record: dict, fields: Sequence[str]) -> tuple:
    """The cell a record belongs to: its values of ``fields`` (floats rounded, so 0.5 and 0.50000001 agree)."""
    return tuple(round(record.get(f), 9) if isinstance(record.get(f), float) else record.get(f) for f in fields)


def upsert(records: list[dict], record: dict, fields: Sequence[str]) -> list[dict]:
    """``records`` with ``record`` in place of any record of the same cell (appended if new)."""
    key = record_key(record, fields)
    out = [r for r in records if record_key(r, fields) != key]
    out.append(record)
    return out


# ---------------------------------------------------------------------- intervals
def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, lower, upper): Student-t interval of the mean over seeds, mean ± t_{(1+c)/2, n-1} · s / √n.

    With n = 1 there is no interval (lower = upper = mean). Success rates are bounded, so the bounds are
    clipped to [0, 1]. Over 3 seeds the t quantile is 4.30: the interval is wide, as it should be.
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    m = float(x.mean())
    if x.size < 2:
        return m, m, m
    from scipy.stats import t as student_t

    half = float(student_t.ppf(0.5 + confidence / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return m, max(0.0, m - half), min(1.0, m + half)


# ---------------------------------------------------------------------- progress
def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class CellClock:
    """One line per cell start and finish, with elapsed time and an ETA (mean finished-cell time x cells left,
    divided by the cells run at once)."""

    def __init__(self, total: int, parallel: int = 1, prefix: str = "[run]", unit: str = "cell", stream=None):
        self.total, self.parallel, self.prefix, self.unit = total, max(1, parallel), prefix, unit
        self.stream = stream or sys.stdout
        self.t0 = time.time()
        self.started: dict[str, float] = {}
        self.durations: list[float] = []
        self.n_started = 0

    def _eta(self) -> str:
        left = self.total - len(self.durations)
        if not self.durations:
            return "ETA unknown"
        return f"ETA {_hms(np.mean(self.durations) * left / self.parallel)}"

    def _say(self, text: str) -> None:
        print(f"{self.prefix} {text}", file=self.stream, flush=True)

    def start(self, name: str) -> None:
        self.n_started += 1
        self.started[name] = time.time()
        self._say(f"{self.unit} {self.n_started}/{self.total} start {name} (elapsed {_hms(time.time() - self.t0)}, {self._eta()})")

    def finish(self, name: str, result: str) -> None:
        took = time.time() - self.started.pop(name, time.time())
        self.durations.append(took)
        self._say(f"{self.unit} {len(self.durations)}/{self.total} done  {name}: {result} in {_hms(took)} "
                  f"(elapsed {_hms(time.time() - self.t0)}, {self._eta()})")


# ---------------------------------------------------------------------- command line from a dataclass
def parser_from_dataclass(cls, prog: str, description: str) -> argparse.ArgumentParser:
    """An argparse parser generated from a config dataclass (CleanRL's ``Args`` style): one ``--flag`` per field,
    its default the field's default and its help the field's ``metadata["help"]``, so defaults live in one place.

    Field types: bool -> ``--flag`` (store_true), tuple[X, ...] -> ``nargs="+"`` of X, ``X | None`` -> X (default None).
    """
    p = argparse.ArgumentParser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        typ = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        helptext = f.metadata.get("help", "")
        args = typing.get_args(typ)
        if typing.get_origin(typ) in (typing.Union, types.UnionType):
            typ = next(a for a in args if a is not type(None))
            args = typing.get_args(typ)
        if typ is bool:
            p.add_argument(flag, action="store_true", default=default, help=helptext)
        elif typing.get_origin(typ) is tuple:
            p.add_argument(flag, nargs="+", type=args[0], default=default,
                           help=f"{helptext} (default: {' '.join(map(str, default))})")
        else:
            p.add_argument(flag, type=typ, default=default, help=f"{helptext} (default: {default})")
    return p


def config_from_namespace(cls, ns: argparse.Namespace):
    """The dataclass from parsed arguments (lists become tuples)."""
    kw = {f.name: getattr(ns, f.name) for f in dataclasses.fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()})


def relative(path: str | Path, start: str | Path | None = None) -> str:
    """``path`` relative to ``start`` (default: the working directory) when it lies below it, else absolute."""
    path, start = Path(path).resolve(), Path(start or os.getcwd()).resolve()
    try:
        return str(path.relative_to(start))
    except ValueError:
        return str(path)


def unique(items: Iterable) -> list:
    """Items in first-seen order without repeats."""
    seen, out = set(), []
    for x in items:
        if x not in seen:
            seen.add(x)
            out.append(x)
    return out

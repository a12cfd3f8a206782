"""Smoke test of the sampler benchmark script: it runs and its last line is the documented JSON (no timing asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from d2ppo.obs import ObsSpec
from d2ppo.package import make_random_policy


def run_bench(*args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "d2ppo.bench.sampler", *args],
        capture_output=True,
        text=True,
        timeout=280,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_report(report: dict, backends: tuple[str, ...]) -> None:
    assert set(report) == {"backends", "threads", "steps"}
    assert report["threads"] == 1 and report["steps"] == 10
    assert tuple(report["backends"]) == backends
    for stats in report["backends"].values():
        assert 0 < stats["p50_ms"] <= stats["p99_ms"]
        assert stats["chunks"] == 5


@pytest.mark.timeout(300)
def test_benchmark_of_the_paper_image_model_ends_with_its_json_report():
    check_report(run_bench("--chunks", "5", "--warmup", "1", "--json"), ("naive", "torch", "onnx"))


@pytest.mark.timeout(300)
def test_benchmark_runs_a_given_low_dim_policy_package(tmp_path):
    path = make_random_policy(tmp_path / "lowdim", spec=ObsSpec(camera_names=()))
    check_report(run_bench("--chunks", "5", "--warmup", "1", "--policy", str(path)), ("naive", "torch", "onnx"))
    assert (path / "policy.onnx").is_file()

"""d2ppo.ablation end to end on a tiny grid (real training, real robosuite evaluation, one episode per cell):
records in the contract's format, reruns skip finished cells, the plot, bad input, the automatic choice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from d2ppo.ablation import main
from d2ppo.results import t_interval

CONTRACT = {"task": str, "obs": str, "lambda": float, "layer": str, "variant": str, "seed": int, "steps": int,
            "success_rate": float, "successes": int, "episodes": int}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """<dir>/lift_lowdim.hdf5: three scripted Lift demos (with the generator's train/valid masks)."""
    from d2ppo.experts.generate import generate

    d = tmp_path_factory.mktemp("data")
    generate("lift", episodes=3, out=d / "lift_lowdim.hdf5", seed=0, progress=False)
    return d


@pytest.fixture(autouse=True)
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(data_dir, tmp_path, *extra: str) -> list[str]:
    return ["--tasks", "lift", "--seeds", "0", "--steps", "12", "--episodes", "1", "--batch-size", "8",
            "--mlp-dims", "16", "16", "16", "--sweep-layer", "none", "--data-dir", str(data_dir),
            "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "results" / "ablation.json"), *extra]


@pytest.mark.timeout(300)
def test_a_two_cell_grid_writes_records_skips_them_on_rerun_and_plots(data_dir, tmp_path, capsys):
    args = tiny(data_dir, tmp_path, "--lambdas", "0", "0.5", "--layers", "early")
    out = tmp_path / "results" / "ablation.json"
    main(args)
    records = json.loads(out.read_text())
    assert len(records) == 2
    for r in records:
        for k, typ in CONTRACT.items():
            assert isinstance(r[k], typ), (k, r[k])
        assert (r["task"], r["obs"], r["layer"], r["variant"], r["steps"], r["episodes"]) == (
            "lift", "state", "early", "infonce_l2", 12, 1)
        assert r["successes"] == round(r["success_rate"] * r["episodes"])
        assert json.loads((Path(r["run"]) / "cell.json").read_text())["episodes"] == 1  # the done marker
        assert (Path(r["run"]) / "policy" / "eval" / "eval.json").is_file()  # as d2ppo.evaluate leaves it
    assert sorted(r["lambda"] for r in records) == [0.0, 0.5]
    card = json.loads(next((tmp_path / "runs").rglob("lam0.5_early_seed0/policy/policy.json")).read_text())
    assert card["training"]["command"].startswith("python -m d2ppo.train --data")
    assert card["training"]["dispersive"]["weight"] == 0.5 and card["training"]["steps"] == 12
    log = capsys.readouterr().out
    assert "cell 1/2 start" in log and "cell 2/2 done" in log and "ETA" in log
    png = tmp_path / "results" / "ablation.png"
    assert png.stat().st_size > 0

    # Rerun: both cells are skipped (nothing trained or evaluated: the policies are untouched).
    weights = next((tmp_path / "runs").rglob("lam0.5_early_seed0/policy/model.safetensors"))
    mtime = weights.stat().st_mtime_ns
    main(args)
    assert "2 cell(s) already in" in capsys.readouterr().out
    assert json.loads(out.read_text()) == records and weights.stat().st_mtime_ns == mtime

    # Without the results file, the done markers in the run folders restore the records without any work.
    out.unlink()
    main(args)
    assert "start" in capsys.readouterr().out
    assert json.loads(out.read_text()) == records and weights.stat().st_mtime_ns == mtime

    png.unlink()
    main(["--plot-only", "--out", str(out)])
    assert png.stat().st_size > 0


@pytest.mark.timeout(300)
def test_lambda_zero_is_one_policy_per_seed_recorded_under_each_layer(data_dir, tmp_path):
    main(tiny(data_dir, tmp_path, "--lambdas", "0", "--layers", "early", "late"))
    records = json.loads((tmp_path / "results" / "ablation.json").read_text())
    assert sorted(r["layer"] for r in records) == ["early", "late"]
    assert len({r["run"] for r in records}) == 1
    assert len([p for p in (tmp_path / "runs").rglob("policy.json")]) == 1


@pytest.mark.parametrize("extra,match", [
    (["--tasks", "lfit"], "--tasks: unknown task(s) ['lfit']"),
    (["--layers", "middle"], "--layers: unknown layer(s) ['middle']"),
    (["--layers", "encoder"], "--layers encoder: with --obs state"),
    (["--lambdas", "-0.5"], "--lambdas: λ must be finite and >= 0"),
    (["--tasks", "can"], "lowdim.hdf5 for task can (make it with: python -m d2ppo.experts.generate --task can"),
    (["--episodes", "0"], "--episodes: must be >= 1"),
    (["--sweep-layer", "sideways"], "--sweep-layer: unknown layer 'sideways'"),
], ids=["unknown-task", "unknown-layer", "encoder-without-images", "negative-lambda", "missing-data", "no-episodes",
        "unknown-sweep-layer"])
def test_bad_input_is_one_clear_line_before_anything_runs(data_dir, tmp_path, extra, match):
    with pytest.raises(SystemExit) as e:
        main([*tiny(data_dir, tmp_path), *extra])
    msg = str(e.value)
    assert msg.startswith("error: ") and match in msg and "\n" not in msg
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


def test_a_data_file_of_another_task_is_refused(data_dir, tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "can_lowdim.hdf5").write_bytes((data_dir / "lift_lowdim.hdf5").read_bytes())
    args = tiny(tmp_path / "d", tmp_path)
    args[args.index("lift")] = "can"
    with pytest.raises(SystemExit) as e:
        main(args)
    assert "holds Lift demos, not PickPlaceCan (can)" in str(e.value)


@pytest.mark.timeout(300)
def test_auto_probes_each_layer_chooses_by_validation_loss_and_compares_with_the_grid(data_dir, tmp_path):
    base = tiny(data_dir, tmp_path, "--layers", "early", "late")
    main([*base, "--lambdas", "0", "0.5"])  # the manual grid: 3 cells (λ = 0 shared by both layers)
    main([*base, "--auto", "--probe-steps", "5", "--probe-lambdas", "0.5", "--probe-windows", "32"])
    auto = json.loads((tmp_path / "results" / "ablation_auto.json").read_text())
    (entry,) = auto
    assert entry["task"] == "lift" and "validation diffusion loss" in entry["score"]
    probes = {(p["lambda"], p["layer"]): p for p in entry["probes"]}
    assert set(probes) == {(0.0, None), (0.5, "early"), (0.5, "late")}
    best = min(probes.values(), key=lambda p: p["val_loss"])
    assert (entry["choice"]["lambda"], entry["choice"]["layer"]) == (best["lambda"], best["layer"])
    for p in probes.values():
        assert p["val_loss"] > 0 and set(p["features"]) == {"early", "late"}
        assert p["features"]["early"]["effective_rank"] >= 1
    cmp = entry["comparison"]
    assert cmp["auto_cell"] is not None and cmp["best_manual_cell"]["success_mean"] >= cmp["auto_cell"]["success_mean"]
    assert cmp["cells"] == 3 and isinstance(cmp["auto_is_best"], bool)
    assert (tmp_path / "results" / "ablation.png").stat().st_size > 0


def test_t_interval_over_seeds():
    m, lo, hi = t_interval([0.2, 0.4, 0.6])
    assert m == pytest.approx(0.4)
    assert hi == pytest.approx(0.4 + 4.302653 * 0.2 / 3**0.5, rel=1e-5) and lo == 0.0  # clipped at 0
    assert t_interval([0.5]) == (0.5, 0.5, 0.5)


@pytest.mark.timeout(300)
def test_cells_run_two_at_a_time_with_jobs(data_dir, tmp_path, capsys):
    main(tiny(data_dir, tmp_path, "--lambdas", "0", "0.5", "--layers", "early", "--jobs", "2"))
    records = json.loads((tmp_path / "results" / "ablation.json").read_text())
    assert sorted(r["lambda"] for r in records) == [0.0, 0.5]
    assert all(r["eval_workers"] == 1 for r in records)  # one evaluation process per cell when cells run at once
    log = capsys.readouterr().out
    assert log.count(" start ") == 2 and log.count(" done ") == 2

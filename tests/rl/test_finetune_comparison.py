"""d2ppo.finetune_comparison: the contract's records (stubbed fine-tuning, then a tiny real run of every arm),
resuming, the curves plot, bad input; and d2ppo.rl.finetune's env-step budget that makes the arms equal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from d2ppo import finetune_comparison as fc

CONTRACT = {"task": str, "arm": str, "seed": int, "env_steps": int, "pretrained_success": float,
            "final_success": float, "episodes": int, "curve": list}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from d2ppo.experts.generate import generate

    d = tmp_path_factory.mktemp("data")
    generate("lift", episodes=3, out=d / "lift_lowdim.hdf5", seed=0, progress=False)
    return d


def args(data_dir, tmp_path, *extra: str) -> list[str]:
    return ["--task", "lift", "--seeds", "0", "1", "--env-steps", "64", "--data-dir", str(data_dir),
            "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "results" / "ft.json"), *extra]


def test_records_follow_the_contract_resume_and_plot_with_stubbed_runs(data_dir, tmp_path, monkeypatch, capsys):
    calls = []

    def fake_pretrain(cfg, lam, seed):
        return Path(f"pre/lam{lam:g}_seed{seed}/policy")

    def fake_finetune(argv):
        a = dict(zip(argv[::2], argv[1::2]))
        calls.append(argv)
        out = Path(a["--out"])
        out.mkdir(parents=True)
        seed, gauss = int(a["--seed"]), a["--algo"] == "gaussian"
        curve = [{"env_steps": s, "success_rate": r, "episodes": 16, "ci95": [0, 1]}
                 for s, r in ((0, 0.1 * seed), (3200, 0.2 + 0.1 * seed), (6600, 0.5))]
        (out / "policy.json").write_text(json.dumps({"finetuning": {"curve": curve}}))
        pre = None if gauss else {"success_rate": 0.3, "successes": 15, "episodes": 50}
        return {"out": str(out), "env_steps": 6600, "pretrained_evaluation": pre, "total_time_s": 1.0,
                "evaluation": {"success_rate": 0.6, "successes": 30, "episodes": 50, "ci95": [0.46, 0.72]}}

    monkeypatch.setattr(fc, "_pretrain", fake_pretrain)
    monkeypatch.setattr(fc, "_finetune", fake_finetune)
    fc.main(args(data_dir, tmp_path, "--bc-steps", "123"))
    records = json.loads((tmp_path / "results" / "ft.json").read_text())
    assert [(r["arm"], r["seed"]) for r in records] == [(a, s) for s in (0, 1) for a in ("d2ppo", "dppo", "gaussian")]
    for r in records:
        for k, typ in CONTRACT.items():
            assert isinstance(r[k], typ), (k, r[k])
        assert r["env_steps"] == 6600 and r["budget"] == 64 and r["final_success"] == 0.6 and r["episodes"] == 50
        assert r["curve"] == [[0, 0.1 * r["seed"]], [3200, 0.2 + 0.1 * r["seed"]], [6600, 0.5]]
        assert all(len(p) == 2 for p in r["curve"])
    by = {(r["arm"], r["seed"]): r for r in records}
    # diffusion arms: d2ppo.evaluate of the pre-trained package; gaussian: the BC policy's first curve point
    assert by["d2ppo", 0]["pretrained_success"] == 0.3 and by["d2ppo", 0]["pretrained_episodes"] == 50
    assert by["gaussian", 1]["pretrained_success"] == pytest.approx(0.1) and by["gaussian", 1]["pretrained_episodes"] == 16
    assert by["gaussian", 0]["bc_steps"] == 123 and by["d2ppo", 0]["bc_steps"] is None
    assert by["dppo", 0]["pretrain"]["lambda"] == 0.0 and by["d2ppo", 0]["pretrain"]["lambda"] == 0.5
    flags = {a[a.index("--algo") + 1] for a in calls}
    assert flags == {"d2ppo", "gaussian"} and all("--env-step-budget" in a for a in calls)
    gauss = next(a for a in calls if "gaussian" in a)
    assert gauss[gauss.index("--bc-steps") + 1] == "123"
    assert (tmp_path / "results" / "ft.png").stat().st_size > 0
    assert "run 1/6 start lift d2ppo seed 0" in capsys.readouterr().out

    # Rerun: every run is in the results file; nothing is fine-tuned again.
    n = len(calls)
    fc.main(args(data_dir, tmp_path, "--bc-steps", "123"))
    assert len(calls) == n and "6 run(s) already in" in capsys.readouterr().out
    # Without the results file the runs' record.json (done markers) restore the records.
    (tmp_path / "results" / "ft.json").unlink()
    fc.main(args(data_dir, tmp_path, "--bc-steps", "123"))
    assert len(calls) == n and json.loads((tmp_path / "results" / "ft.json").read_text()) == records
    (tmp_path / "results" / "ft.png").unlink()
    fc.main(["--plot-only", "--out", str(tmp_path / "results" / "ft.json")])
    assert (tmp_path / "results" / "ft.png").stat().st_size > 0


@pytest.mark.parametrize("extra,match", [
    (["--arms", "ppo"], "--arms: unknown arm(s) ['ppo']"),
    (["--task", "lfit"], "--task: unknown task 'lfit'"),
    (["--task", "can"], "can_lowdim.hdf5 for task can (make it with: python -m d2ppo.experts.generate"),
    (["--layer", "encoder"], "--layer: 'encoder'"),
    (["--env-steps", "-1"], "--env-steps: must be >= 0"),
    (["--pretrained-from", "/nonexistent/square_state_s10000"], "--pretrained-from: no package /nonexistent"),
], ids=["unknown-arm", "unknown-task", "missing-data", "encoder-layer", "negative-budget", "missing-ablation-cells"])
def test_bad_input_is_one_clear_line(data_dir, tmp_path, extra, match):
    with pytest.raises(SystemExit) as e:
        fc.main(args(data_dir, tmp_path, *extra))
    msg = str(e.value)
    assert msg.startswith("error: ") and match in msg and "\n" not in msg
    assert not (tmp_path / "runs").exists()


@pytest.mark.timeout(300)
def test_a_tiny_real_comparison_of_the_three_arms(data_dir, tmp_path):
    fc.main(args(data_dir, tmp_path, "--seeds", "0", "--env-steps", "16", "--pretrain-steps", "5", "--batch-size", "8",
                 "--mlp-dims", "16", "16", "16", "--bc-steps", "2", "--envs", "1", "--env-workers", "0",
                 "--steps-per-iter", "4", "--max-episode-steps", "16", "--eval-every", "1", "--eval-episodes", "1",
                 "--final-eval-episodes", "1", "--threads", "1"))
    records = json.loads((tmp_path / "results" / "ft.json").read_text())
    assert sorted(r["arm"] for r in records) == ["d2ppo", "dppo", "gaussian"]
    for r in records:
        for k, typ in CONTRACT.items():
            assert isinstance(r[k], typ), (k, r[k])
        assert 16 <= r["env_steps"] <= 16 + 4  # the budget, overshooting by less than one iteration
        assert r["curve"][0][0] == 0 and r["curve"][-1][0] == r["env_steps"]
        assert (Path(r["run"]) / "record.json").is_file()
    # dppo starts from a λ = 0 package, d2ppo and gaussian from the λ = 0.5 one
    pre = {r["arm"]: json.loads((Path(r["pretrain"]["policy"]) / "policy.json").read_text()) for r in records}
    assert pre["dppo"]["training"]["dispersive"]["weight"] == 0
    assert pre["d2ppo"]["training"]["dispersive"]["weight"] == 0.5 == pre["gaussian"]["training"]["dispersive"]["weight"]


@pytest.mark.timeout(300)
def test_finetune_stops_at_the_env_step_budget(lowdim_package, tmp_path):
    from d2ppo.rl.finetune import main

    out = tmp_path / "ft"
    main(["--policy", str(lowdim_package), "--out", str(out), "--run-dir", str(tmp_path / "run"), "--iterations", "5",
          "--env-step-budget", "8", "--envs", "1", "--workers", "0", "--steps-per-iter", "2", "--max-env-steps", "16",
          "--critic-warmup", "0", "--eval-every", "5", "--eval-episodes", "1", "--final-eval-episodes", "1"])
    ft = json.loads((out / "policy.json").read_text())["finetuning"]
    assert ft["iterations"] == 1 and ft["env_steps"] == 8  # 1 env x 2 chunks x 4 actions reach the budget
    assert ft["config"]["env_step_budget"] == 8
    assert ft["curve"][-1]["env_steps"] == ft["env_steps"]  # the last iteration is evaluated


def test_pretrained_from_starts_every_arm_from_the_ablation_cells_of_its_seed(data_dir, tmp_path, monkeypatch):
    group = tmp_path / "ablation" / "lift_state_s100"
    for name in ("lam0_seed0", "lam0.5_late_seed0"):
        (group / name / "policy").mkdir(parents=True)
        (group / name / "policy" / "policy.json").write_text(json.dumps({"training": {"steps": 100}}))
    policies = {}

    def fake_finetune(argv):
        a = dict(zip(argv[::2], argv[1::2]))
        policies[a["--algo"], a["--policy"]] = True
        Path(a["--out"]).mkdir(parents=True)
        (Path(a["--out"]) / "policy.json").write_text(json.dumps({"finetuning": {"curve": [{"env_steps": 0, "success_rate": 0.0}]}}))
        return {"out": a["--out"], "env_steps": 0, "evaluation": {"success_rate": 0.0, "episodes": 1, "ci95": [0, 1]}}

    monkeypatch.setattr(fc, "_finetune", fake_finetune)
    fc.main(args(data_dir, tmp_path, "--seeds", "0", "--layer", "late", "--pretrained-from", str(group)))
    assert set(policies) == {("d2ppo", str(group / "lam0.5_late_seed0" / "policy")),
                             ("d2ppo", str(group / "lam0_seed0" / "policy")),
                             ("gaussian", str(group / "lam0.5_late_seed0" / "policy"))}
    records = json.loads((tmp_path / "results" / "ft.json").read_text())
    assert {r["start"] for r in records} == {"from_lift_state_s100"} and records[0]["pretrain"]["steps"] == 100
    assert not (tmp_path / "runs" / "lift_pre5000").exists()  # nothing pre-trained

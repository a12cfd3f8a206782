"""Every released package under policies/ loads and its card and README state the same measured result.

A release needs (brief): the exact command, seed and data in the card's README, and the measured success rate
with the number of episodes (>= 50) in the card. These tests catch a README left behind when a package is
replaced, and a card whose figures do not add up.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from d2ppo.package import load_policy

ROOT = Path(__file__).resolve().parents[2]
RELEASED = sorted(p for p in (ROOT / "policies").iterdir() if (p / "policy.json").is_file())


def _check_evaluation(ev: dict, where: str) -> None:
    assert ev["episodes"] >= 50, f"{where}: {ev['episodes']} episodes; a released figure needs >= 50"
    assert ev["success_rate"] == pytest.approx(ev["successes"] / ev["episodes"]), f"{where}: rate != successes/episodes"
    lo, hi = ev["ci95"]
    assert lo <= ev["success_rate"] <= hi, f"{where}: success rate outside its own CI {ev['ci95']}"


def test_there_are_released_policies():
    assert {p.name for p in RELEASED} >= {"lift_img_d2ppo", "lift_lowdim_d2ppo_ft"}


@pytest.mark.parametrize("pkg", RELEASED, ids=lambda p: p.name)
def test_card_and_readme_state_the_measured_result(pkg: Path):
    load_policy(pkg)  # format, weights (safetensors), normalisers: raises on any problem
    card = json.loads((pkg / "policy.json").read_text())
    readme = (pkg / "README.md").read_text()
    ev = card["evaluation"]
    _check_evaluation(ev, f"{pkg.name} evaluation")
    assert f"{ev['successes']}/{ev['episodes']}" in readme, f"{pkg.name}/README.md does not state the card's result"
    assert f"--seed {ev['seed']}" in ev["command"] and f"--seed {ev['seed']}" in readme
    if "finetuning" in card:  # a fine-tuned package also carries the evaluation of its starting point
        pre = card["pretrained_evaluation"]
        _check_evaluation(pre, f"{pkg.name} pretrained_evaluation")
        assert (pre["seed"], pre["episodes"], pre["workers"]) == (ev["seed"], ev["episodes"], ev["workers"]), \
            "pre-trained and fine-tuned evaluations must use the same episodes"
        assert f"{pre['successes']}/{pre['episodes']}" in readme
        assert card["finetuning"]["command"].split()[:3] == ["python", "-m", "d2ppo.rl.finetune"]
        assert card["finetuning"]["command"] in " ".join(readme.replace("\\\n", " ").split()), \
            f"{pkg.name}/README.md does not show the exact fine-tuning command of the card"


@pytest.mark.parametrize("pkg", RELEASED, ids=lambda p: p.name)
def test_released_package_ships_an_onnx_sampler_that_matches_torch(pkg: Path):
    """DESIGN.md: every released package ships policy.onnx; the robot and real-time profiles run it
    (backend auto). Same observation and chain noise -> the same chunk as the torch sampler."""
    import numpy as np

    assert (pkg / "policy.onnx").is_file(), f"{pkg.name}: no policy.onnx (python -m d2ppo.export --policy {pkg})"
    package = load_policy(pkg)
    rng = np.random.default_rng(0)
    spec = package.spec
    obs = {"state": rng.uniform(-1, 1, (spec.n_obs_steps, spec.state_dim)).astype(np.float32)}
    if spec.uses_images:
        shape = (spec.n_obs_steps, len(spec.camera_names), 3, spec.image_size, spec.image_size)
        obs["rgb"] = rng.integers(0, 256, shape, dtype=np.uint8)
    noise = rng.standard_normal(package.sampler("torch").noise_shape(1)[1:], dtype=np.float32)
    want = package.sampler("torch")(obs, noise)
    got = package.sampler("onnx", threads=1)(obs, noise)
    assert np.abs(got - want).max() <= 1e-4

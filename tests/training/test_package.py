"""The policy package: round trip, no pickle, and one clear error per kind of broken package."""

import json

import numpy as np
import pytest
import torch
from d2ppo.model import PolicyConfig
from d2ppo.normalize import RangeNormalizer
from d2ppo.obs import ObsSpec
from d2ppo.package import PolicyPackageError, load_policy, make_random_policy, wilson_interval
from safetensors.torch import load_file, save_file

SMALL = PolicyConfig(mlp_dims=(32, 32, 32), vit_dim=32, spatial_emb=16)


@pytest.fixture
def pkg(tmp_path):
    return make_random_policy(tmp_path / "p", spec=ObsSpec(image_size=32), cfg=SMALL)


def test_round_trip_gives_identical_actions(pkg):
    a, b = load_policy(pkg), load_policy(pkg)
    obs = {"rgb": np.zeros((1, 1, 3, 32, 32), np.uint8), "state": np.zeros((1, 9), np.float32)}
    noise = np.random.default_rng(0).standard_normal((1, 11, 4, 7)).astype(np.float32)
    out = a.sampler()(obs, noise)
    assert out.shape == (4, 7)
    np.testing.assert_array_equal(out, b.sampler()(obs, noise))
    assert a.card["obs"]["camera_names"] == ["robot0_eye_in_hand"]
    assert (pkg / "model.safetensors").read_bytes()[:8] != b"\x80\x02"  # not a pickle


def test_normaliser_round_trip():
    x = np.random.default_rng(0).uniform(-3, 5, size=(100, 4)).astype(np.float32)
    x[:, 2] = 1.5  # a constant feature must not divide by zero
    n = RangeNormalizer.fit(x)
    y = n.normalize(x)
    assert y.min() >= -1 - 1e-6 and y.max() <= 1 + 1e-6
    np.testing.assert_allclose(n.unnormalize(y), x, atol=1e-5)
    n2 = RangeNormalizer.from_dict(json.loads(json.dumps(n.to_dict())))
    np.testing.assert_allclose(n2.normalize(torch.from_numpy(x)).numpy(), y, atol=1e-6)


def edit_card(pkg, fn):
    card = json.loads((pkg / "policy.json").read_text())
    fn(card)
    (pkg / "policy.json").write_text(json.dumps(card))


@pytest.mark.parametrize(
    "breakage,match",
    [
        (lambda p: (p / "model.safetensors").unlink(), "model.safetensors: missing"),
        (lambda p: (p / "policy.json").unlink(), "policy.json: missing"),
        (lambda p: (p / "policy.json").write_text("{not json"), "policy.json: not valid JSON"),
        (lambda p: edit_card(p, lambda c: c.update(format_version=99)), "unknown format_version 99"),
        (lambda p: edit_card(p, lambda c: c.pop("normalization")), "missing key 'normalization'"),
        (lambda p: edit_card(p, lambda c: c["model"].update(mlp_dims=[16, 16, 16])), "has shape"),
        (lambda p: edit_card(p, lambda c: c["normalization"]["action"].update(min=[0.0] * 3, max=[1.0] * 3)), "normalization.action"),
        (lambda p: (p / "model.safetensors").write_bytes(b"garbage"), "cannot read safetensors"),
    ],
    ids=["no_weights", "no_card", "bad_json", "version", "no_norm", "shape", "norm_dim", "corrupt_weights"],
)
def test_broken_package_fails_with_one_clear_message(pkg, breakage, match):
    breakage(pkg)
    with pytest.raises(PolicyPackageError, match=match):
        load_policy(pkg)


def test_nan_weights_are_rejected_by_name(pkg):
    w = load_file(str(pkg / "model.safetensors"))
    name = sorted(w)[0]
    w[name] = torch.full_like(w[name], float("nan"))
    save_file(w, str(pkg / "model.safetensors"))
    with pytest.raises(PolicyPackageError, match=f"{name}.*NaN"):
        load_policy(pkg)


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(PolicyPackageError, match="does not exist"):
        load_policy(tmp_path / "nope")


def test_wilson_interval_brackets_the_rate():
    lo, hi = wilson_interval(45, 50)
    assert lo < 0.9 < hi and 0.77 < lo < 0.8

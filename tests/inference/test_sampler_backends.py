"""The three chunk samplers (naive, torch encode-once, ONNX Runtime) compute the same actions.

Packages are the paper's model (ViT depth 1, MLP [768, 768, 768]) with random weights: parity does not depend
on training, and random weights keep a good share of the actions away from the ±1 clip.
"""

from __future__ import annotations

import os
import time

import numpy as np
import onnx
import pytest
from d2ppo.export import ONNX_NAME, OnnxChunkSampler, export_onnx
from d2ppo.export import main as export_main
from d2ppo.model import PolicyConfig
from d2ppo.obs import ObsSpec
from d2ppo.package import load_policy, make_random_policy

PARITY_ATOL = 1e-4
SPECS = {"image": ObsSpec(), "lowdim": ObsSpec(camera_names=())}
SMALL = dict(mlp_dims=(64, 64, 64), vit_dim=32, spatial_emb=16)


@pytest.fixture(scope="module", params=sorted(SPECS))
def package(request, tmp_path_factory):
    path = make_random_policy(tmp_path_factory.mktemp(request.param) / "policy", spec=SPECS[request.param], seed=3)
    return load_policy(path)


def random_obs(spec: ObsSpec, batch: int | None, seed: int = 0) -> dict[str, np.ndarray]:
    """Builder-shaped observation; ``batch=None`` gives the unbatched form the inference node passes."""
    rng = np.random.default_rng(seed)
    lead = () if batch is None else (batch,)
    obs = {"state": rng.uniform(-1, 1, (*lead, spec.n_obs_steps, spec.state_dim)).astype(np.float32)}
    if spec.uses_images:
        shape = (*lead, spec.n_obs_steps, len(spec.camera_names), 3, spec.image_size, spec.image_size)
        obs["rgb"] = rng.integers(0, 256, shape, dtype=np.uint8)
    return obs


def random_noise(package, batch: int, seed: int = 1) -> np.ndarray:
    cfg = package.cfg
    return (
        np.random.default_rng(seed)
        .standard_normal((batch, cfg.sample_steps + 1, cfg.horizon, cfg.action_dim))
        .astype(np.float32)
    )


@pytest.mark.parametrize("std", [0.0, 0.7])
def test_encode_once_sampler_gives_the_naive_samplers_actions(package, std):
    obs, noise = random_obs(package.spec, 3), random_noise(package, 3)
    once = package.sampler("torch", std=std)(obs, noise)
    naive = package.sampler("naive", std=std)(obs, noise)
    np.testing.assert_array_equal(once, naive)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("std", [0.0, 0.7])
def test_onnx_sampler_matches_torch_within_1e4(package, batch, std):
    obs, noise = random_obs(package.spec, batch, seed=batch), random_noise(package, batch, seed=10 + batch)
    want = package.sampler("torch", std=std)(obs, noise)
    got = package.sampler("onnx", std=std, threads=1)(obs, noise)
    assert got.shape == want.shape == (batch, package.horizon, package.action_dim)
    assert got.dtype == np.float32
    assert np.abs(got - want).max() <= PARITY_ATOL
    # Parity must not come only from both sides saturating at the clip.
    assert (np.abs(want) < 0.99).mean() > 0.1


def test_onnx_graph_is_stored_in_the_package_with_the_documented_io(package):
    out = export_onnx(package)
    assert out == package.path / ONNX_NAME and out.is_file()
    graph = onnx.load(str(out)).graph
    inputs = {i.name: i.type.tensor_type for i in graph.input}
    want = (["rgb"] if package.spec.uses_images else []) + ["state", "noise", "std"]
    assert list(inputs) == want
    if package.spec.uses_images:
        assert inputs["rgb"].elem_type == onnx.TensorProto.UINT8
    assert inputs["state"].elem_type == onnx.TensorProto.FLOAT
    assert inputs["noise"].shape.dim[0].dim_param == "batch"  # dynamic batch
    assert [o.name for o in graph.output] == ["actions"]
    # One graph: the encoder appears once, the denoiser's residual MLP once per DDIM step.
    ops = [n.op_type for n in graph.node]
    assert ops.count("Conv") == (2 if package.spec.uses_images else 0)
    gemm_per_step = 1 + 2 * 2 + 1  # input layer, two residual blocks of two layers, x̂0 layer
    assert ops.count("Gemm") == 1 + gemm_per_step * package.cfg.sample_steps  # + the conditioning projection


def test_unbatched_observation_gives_one_unnormalised_chunk(package):
    obs = random_obs(package.spec, None)
    noise = random_noise(package, 1)[0]
    got = package.sampler("onnx", threads=1)(obs, noise)
    want = package.sampler("torch")(obs, noise)
    assert got.shape == (package.horizon, package.action_dim)
    assert np.abs(got - want).max() <= PARITY_ATOL


def test_onnx_sampler_draws_reproducible_noise_when_none_is_given(package):
    obs = random_obs(package.spec, None)
    a = package.sampler("onnx", std=0.5, seed=4, threads=1)
    b = package.sampler("onnx", std=0.5, seed=4, threads=1)
    first = a(obs)
    np.testing.assert_array_equal(first, b(obs))
    assert not np.array_equal(first, a(obs))  # fresh noise every chunk


def test_stale_onnx_file_is_re_exported_when_the_weights_are_newer(package):
    onnx_path = package.path / ONNX_NAME
    export_onnx(package)
    old = time.time() - 3600
    os.utime(onnx_path, (old, old))
    OnnxChunkSampler(package, threads=1)
    assert onnx_path.stat().st_mtime > old + 60
    # A fresh file is reused, not rewritten.
    fresh = onnx_path.stat().st_mtime_ns
    OnnxChunkSampler(package, threads=1)
    assert onnx_path.stat().st_mtime_ns == fresh


def test_export_cli_writes_policy_onnx(tmp_path, capsys):
    path = make_random_policy(tmp_path / "p", spec=ObsSpec(camera_names=()), cfg=PolicyConfig(**SMALL))
    export_main(["--policy", str(path)])
    assert (path / ONNX_NAME).is_file()
    assert "policy.onnx" in capsys.readouterr().out


@pytest.mark.parametrize(
    "chain",
    [
        dict(x0_clip=0.0),  # no x̂0 clip: ε' = ε̂
        dict(eps_clip=0.5),  # clip on ε': the export keeps the unfolded DDIM update
        dict(sample_steps=5, ddim_eta=0.3, horizon=8, act_steps=8),
    ],
    ids=["no-x0-clip", "eps-clip", "5-steps"],
)
@pytest.mark.parametrize("spec", ["image", "lowdim"])
def test_onnx_parity_holds_for_other_chain_settings(tmp_path, chain, spec):
    cfg = PolicyConfig(**SMALL, **chain)
    package = load_policy(make_random_policy(tmp_path / "p", spec=SPECS[spec], cfg=cfg, seed=5))
    obs, noise = random_obs(package.spec, 2), random_noise(package, 2)
    for std in (0.0, 0.4):
        want = package.sampler("torch", std=std)(obs, noise)
        got = package.sampler("onnx", std=std, threads=1)(obs, noise)
        assert np.abs(got - want).max() <= PARITY_ATOL


def test_package_that_cannot_take_policy_onnx_still_gets_an_onnx_sampler(tmp_path):
    path = make_random_policy(tmp_path / "p", spec=ObsSpec(camera_names=()), cfg=PolicyConfig(**SMALL))
    package = load_policy(path)
    (path / ONNX_NAME).mkdir()  # writing policy.onnx fails like on a read-only mount (root ignores chmod)
    with pytest.warns(UserWarning, match="cannot write"):
        sampler = OnnxChunkSampler(package, threads=1)
    assert sampler.onnx_path.is_file() and sampler.onnx_path.parent != path
    obs, noise = random_obs(package.spec, 2), random_noise(package, 2)
    assert np.abs(sampler(obs, noise) - package.sampler("torch")(obs, noise)).max() <= PARITY_ATOL


@pytest.mark.parametrize(
    "spec,frozen_encoder",
    [("image", False), ("image", True), ("lowdim", False)],  # a low-dim encoder has no weights to freeze
    ids=["image-frozen-denoiser", "image-frozen-denoiser-and-encoder", "lowdim-frozen-denoiser"],
)
def test_onnx_parity_holds_for_a_chain_with_frozen_early_steps(tmp_path, spec, frozen_encoder):
    """A package fine-tuned on the last K′ = 4 of 10 steps: the first 6 run the frozen pre-trained denoiser (and
    encoder), in the ONNX graph as in torch."""
    path = make_random_policy(tmp_path / "p", spec=SPECS[spec], cfg=PolicyConfig(**SMALL), seed=5, frozen_steps=6,
                              frozen_encoder=frozen_encoder)
    package = load_policy(path)
    assert package.model.frozen_steps == 6
    obs, noise = random_obs(package.spec, 2), random_noise(package, 2)
    for std in (0.0, 0.4):
        want = package.sampler("torch", std=std)(obs, noise)
        assert np.abs(package.sampler("naive", std=std)(obs, noise) - want).max() <= 1e-6
        got = package.sampler("onnx", std=std, threads=1)(obs, noise)
        assert np.abs(got - want).max() <= PARITY_ATOL
        assert (np.abs(want) < 0.99).mean() > 0.1
    # The frozen steps matter: the same fine-tuned denoiser on every step gives other actions.
    single = load_policy(make_random_policy(tmp_path / "q", spec=SPECS[spec], cfg=PolicyConfig(**SMALL), seed=5))
    assert np.abs(single.sampler("torch", std=0.0)(obs, noise) - package.sampler("torch", std=0.0)(obs, noise)).max() > 1e-3

"""Shapes, the dispersive hook on hidden layers, the DDIM chain and the encode-once sampler."""

import pytest
import torch
from d2ppo.model import DiffusionPolicy, PolicyConfig
from d2ppo.model.policy import DispersiveConfig, cosine_alphas_cumprod
from d2ppo.obs import ObsSpec

SMALL = PolicyConfig(mlp_dims=(64, 64, 64), vit_dim=32, spatial_emb=16)


def obs_batch(spec, b=4):
    o = {"state": torch.randn(b, spec.n_obs_steps, spec.state_dim)}
    if spec.uses_images:
        o["rgb"] = torch.randint(0, 256, (b, spec.n_obs_steps, len(spec.camera_names), 3, spec.image_size, spec.image_size), dtype=torch.uint8)
    return o


def test_paper_image_model_has_121_tokens_and_three_768_wide_hidden_layers():
    p = DiffusionPolicy(ObsSpec(), PolicyConfig())
    assert p.encoder.vit.num_tokens == 121  # 96x96, conv stem k8 s4 then k3 s2 -> 11x11
    eps, hidden = p.denoiser(torch.randn(2, 4, 7), torch.tensor([0, 99]), p.encoder(obs_batch(p.spec, 2)), return_hidden=True)
    assert eps.shape == (2, 4, 7)
    assert {k: v.shape[-1] for k, v in hidden.items()} == {"early": 768, "mid": 768, "late": 768}


@pytest.mark.parametrize("cams,to", [((), 1), (("agentview", "robot0_eye_in_hand"), 2)])
def test_sample_shapes_and_range(cams, to):
    spec = ObsSpec(camera_names=cams, image_size=32, n_obs_steps=to)
    p = DiffusionPolicy(spec, SMALL).eval()
    a = p.sample(obs_batch(spec, 3))
    assert a.shape == (3, 4, 7)
    assert a.abs().max() <= 1.0


def test_cosine_schedule_is_monotone_and_ends_near_zero():
    ac = cosine_alphas_cumprod(100)
    assert ac.shape == (100,)
    assert (ac[1:] < ac[:-1]).all()
    assert ac[0] > 0.99 and ac[-1] < 1e-3


@pytest.mark.parametrize("layer", ["early", "mid", "late", "encoder"])
def test_dispersive_term_reaches_the_chosen_hidden_layer_in_one_forward_pass(layer):
    torch.manual_seed(0)
    spec = ObsSpec(camera_names=(), n_obs_steps=1)
    p = DiffusionPolicy(spec, SMALL)
    calls = []
    h = p.denoiser.register_forward_hook(lambda *a: calls.append(1))
    loss, logs = p.diffusion_loss(obs_batch(spec, 8), torch.rand(8, 4, 7) * 2 - 1, DispersiveConfig(weight=0.5, layer=layer))
    h.remove()
    assert len(calls) == 1  # no second pass for the dispersive term
    assert "loss/dispersive" in logs and "dispersion/effective_rank" in logs
    # The total differs from the diffusion loss by exactly λ·dispersive.
    assert logs["loss/total"] == pytest.approx(logs["loss/diffusion"] + 0.5 * logs["loss/dispersive"], rel=1e-5, abs=1e-6)
    loss.backward()
    # For a hidden layer the dispersive gradient flows into the layers up to it, not past it.
    if layer == "early":
        assert p.denoiser.inp.weight.grad is not None


def test_lambda_zero_is_plain_diffusion():
    spec = ObsSpec(camera_names=())
    p = DiffusionPolicy(spec, SMALL)
    torch.manual_seed(1)
    l0, logs0 = p.diffusion_loss(obs_batch(spec), torch.zeros(4, 4, 7), DispersiveConfig(weight=0.0))
    assert "loss/dispersive" not in logs0
    assert l0.item() == pytest.approx(logs0["loss/diffusion"])


def test_encode_once_sampler_equals_naive_sampler_for_same_noise():
    spec = ObsSpec(camera_names=("robot0_eye_in_hand",), image_size=32)
    p = DiffusionPolicy(spec, SMALL).eval()
    o = obs_batch(spec, 2)
    noise = torch.randn(2, 11, 4, 7)
    for std in (0.0, 0.3):
        assert torch.equal(p.sample(o, noise, std), p.sample_naive(o, noise, std))


def test_random_shift_only_in_training_mode():
    spec = ObsSpec(camera_names=("robot0_eye_in_hand",), image_size=32)
    p = DiffusionPolicy(spec, SMALL)
    o = obs_batch(spec, 2)
    p.eval()
    assert torch.equal(p.encoder(o), p.encoder(o))
    p.train()
    torch.manual_seed(0)
    a = p.encoder(o)
    torch.manual_seed(1)
    assert not torch.equal(a, p.encoder(o))

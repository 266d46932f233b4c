# ruff: noqa: F811  (the fixtures imported from test_samplers are parameters of the tests)
"""LCM and PLMS against diffusers' LCMScheduler and PNDMScheduler(skip_prk_steps=True) on a tiny real UNet."""

from __future__ import annotations

import pytest
import torch

from tests.test_samplers import (  # noqa: F401  (fixtures)
    alphas_cumprod,
    noise,
    ours,
    reference,
    registry,
    rel_err,
    scheduler,
    tiny_unet_eps,
    toy_eps,
)
from webui.sampling import build_schedule

diffusers = pytest.importorskip("diffusers")


@pytest.mark.parametrize("steps", [1, 4, 8, 50])
def test_lcm_automatic_is_lcm_schedulers_timesteps(alphas_cumprod, steps):
    ref = scheduler("LCMScheduler")
    ref.set_timesteps(steps)
    ours_ = build_schedule("Automatic", steps, alphas_cumprod, automatic="lcm")
    assert ours_.timesteps.tolist() == ref.timesteps.float().tolist()
    assert ours_.sigmas[-1].item() == 0.0


def test_lcm_four_steps_are_999_759_499_259(alphas_cumprod):
    assert build_schedule("Automatic", 4, alphas_cumprod, automatic="lcm").timesteps.tolist() == [999, 759, 499, 259]


@pytest.mark.parametrize("steps", [4, 8])
def test_lcm_equals_diffusers_lcm_scheduler(registry, alphas_cumprod, tiny_unet_eps, steps):
    x = noise(12)
    expected = reference(scheduler("LCMScheduler"), tiny_unet_eps, x, steps=steps, seed=21)
    got = ours(registry, alphas_cumprod, "LCM", tiny_unet_eps, x, steps=steps, seed=21)
    assert rel_err(got, expected) < 1e-4


def test_lcm_runs_only_its_own_schedule(registry):
    lcm = registry.get("k_lcm")
    assert lcm.schedules == ("Automatic",) and not lcm.supports("Karras")


@pytest.mark.parametrize("steps", [1, 2, 5, 10])
def test_plms_equals_diffusers_pndm_without_prk_steps(registry, alphas_cumprod, tiny_unet_eps, steps):
    x = noise(13)
    ref = scheduler("PNDMScheduler", skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    expected = reference(ref, tiny_unet_eps, x, steps=steps)
    got = ours(registry, alphas_cumprod, "PLMS", tiny_unet_eps, x, steps=steps)
    assert rel_err(got, expected) < 1e-4


@pytest.mark.parametrize(
    ("steps", "schedule", "config"),
    [
        (10, "Automatic", {}),
        (1, "Automatic", {}),
        (8, "Karras", {"use_karras_sigmas": True}),
        pytest.param(12, "Automatic", {"solver_order": 3}, marks=pytest.mark.slow),
    ],
)
def test_unipc_equals_diffusers_unipc_multistep(registry, alphas_cumprod, tiny_unet_eps, steps, schedule, config):
    x = noise(14)
    expected = reference(scheduler("UniPCMultistepScheduler", **config), tiny_unet_eps, x, steps=steps)
    options = {"order": config.get("solver_order", 2)}
    got = ours(registry, alphas_cumprod, "UniPC", tiny_unet_eps, x, steps=steps, schedule=schedule, options=options)
    assert rel_err(got, expected) < 1e-4


def test_unipc_bh1_is_finite_where_diffusers_gives_nan_at_sigma_zero(registry, alphas_cumprod):
    """diffusers' bh1 multiplies by B(h) = -h = -inf on the step into sigma 0 (NaN); that step is first order and
    lands on the denoised estimate, so B(h) is not needed there."""
    x = noise(15)
    diffusers_bh1 = reference(scheduler("UniPCMultistepScheduler", solver_type="bh1"), toy_eps, x, steps=10)
    assert torch.isnan(diffusers_bh1).all()
    bh1 = ours(registry, alphas_cumprod, "UniPC", toy_eps, x, steps=10, options={"variant": "bh1"})
    bh2 = ours(registry, alphas_cumprod, "UniPC", toy_eps, x, steps=10)
    assert torch.isfinite(bh1).all() and 1e-5 < rel_err(bh1, bh2) < 5e-2


@pytest.mark.parametrize(
    ("steps", "order"), [(10, 2), (1, 2), (16, 2), pytest.param(12, 3, marks=pytest.mark.slow), (16, 3)]
)
def test_deis_equals_diffusers_deis_multistep(registry, alphas_cumprod, tiny_unet_eps, steps, order):
    x = noise(16)
    eps_fn = toy_eps if steps >= 15 else tiny_unet_eps
    expected = reference(scheduler("DEISMultistepScheduler", solver_order=order), eps_fn, x, steps=steps)
    got = ours(registry, alphas_cumprod, "DEIS", eps_fn, x, steps=steps, options={"order": order})
    assert rel_err(got, expected) < 1e-4


def test_deis_automatic_ends_at_sigma_of_t_zero_like_diffusers(alphas_cumprod):
    ref = scheduler("DEISMultistepScheduler")
    ref.set_timesteps(10)
    ours_ = build_schedule("Automatic", 10, alphas_cumprod, automatic="linspace-integer-to-sigma-min")
    assert ours_.timesteps.tolist() == ref.timesteps.float().tolist()
    torch.testing.assert_close(ours_.sigmas, ref.sigmas.float())

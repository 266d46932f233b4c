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


def a1111_restart(model, x, sigmas, generator):
    """AUTOMATIC1111 1.10's ``restart_sampler`` (modules/sd_samplers_extra.py) step for step, with k-diffusion's
    float32 ``get_sigmas_karras`` and its randn_like drawing from the image's generator."""

    def karras(n, sigma_min, sigma_max, rho=7.0):
        ramp = torch.linspace(0, 1, n)
        min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
        return torch.cat([(max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho, torch.zeros(1)])

    def heun_step(x, old_sigma, new_sigma):
        denoised = model(x, old_sigma)
        d = (x - denoised) / old_sigma
        dt = new_sigma - old_sigma
        if new_sigma == 0:
            return x + d * dt
        x_2 = x + d * dt
        d_2 = (x_2 - model(x_2, new_sigma)) / new_sigma
        return x + (d + d_2) / 2 * dt

    steps = sigmas.shape[0] - 1
    if steps >= 20:
        restart_steps, restart_times = 9, 1
        if steps >= 36:
            restart_steps, restart_times = steps // 4, 2
        sigmas = karras(steps - restart_steps * restart_times, sigmas[-2].item(), sigmas[0].item())
        restart_list = {0.1: [restart_steps + 1, restart_times, 2]}
    else:
        restart_list = {}
    restart_list = {int(torch.argmin(abs(sigmas - key), dim=0)): value for key, value in restart_list.items()}
    step_list = []
    for i in range(len(sigmas) - 1):
        step_list.append((sigmas[i], sigmas[i + 1]))
        if i + 1 in restart_list:
            restart_steps, restart_times, restart_max = restart_list[i + 1]
            min_idx, max_idx = i + 1, int(torch.argmin(abs(sigmas - restart_max), dim=0))
            if max_idx < min_idx:
                sigma_restart = karras(restart_steps, sigmas[min_idx].item(), sigmas[max_idx].item())[:-1]
                while restart_times > 0:
                    restart_times -= 1
                    step_list.extend(zip(sigma_restart[:-1], sigma_restart[1:], strict=True))
    last_sigma = None
    for old_sigma, new_sigma in step_list:
        if last_sigma is None:
            last_sigma = old_sigma
        elif last_sigma < old_sigma:
            x = x + torch.randn(x.shape, generator=generator) * (old_sigma**2 - last_sigma**2) ** 0.5
        x = heun_step(x, old_sigma, new_sigma)
        last_sigma = new_sigma
    return x


@pytest.mark.parametrize(("steps", "schedule"), [(20, "Karras"), pytest.param(36, "Automatic", marks=pytest.mark.slow)])
def test_restart_equals_a1111s_restart_sampler(registry, alphas_cumprod, steps, schedule):
    from webui.sampling import DiscreteEpsDenoiser

    x = noise(17)
    sigmas = build_schedule(schedule, steps, alphas_cumprod).sigmas
    denoiser = DiscreteEpsDenoiser(toy_eps, alphas_cumprod)
    g = torch.Generator().manual_seed(8)
    expected = a1111_restart(lambda x_, s: denoiser(x_, s), x * sigmas[0], sigmas, g)
    got = ours(registry, alphas_cumprod, "Restart", toy_eps, x, steps=steps, seed=8, schedule=schedule)
    assert rel_err(got, expected) < 1e-4


def test_restart_below_20_steps_is_heun(registry, alphas_cumprod):
    x = noise(18)
    heun = ours(registry, alphas_cumprod, "Heun", toy_eps, x, steps=10, schedule="Karras")
    assert rel_err(ours(registry, alphas_cumprod, "Restart", toy_eps, x, steps=10, schedule="Karras"), heun) < 1e-6

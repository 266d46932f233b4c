# ruff: noqa: F811  (the fixtures imported from test_samplers are parameters of the tests)
"""DPM2, DPM2 a, DPM++ 2S a and the SDE samplers against diffusers' schedulers and k-diffusion's formulas.

The Brownian-tree samplers are driven with the very noise that torchsde's ``BrownianTree`` gives for the
same seeds, built as k-diffusion builds it (diffusers' own copy, ``BrownianTreeNoiseSampler``), so that
the reference is not our noise code.
"""

from __future__ import annotations

import math

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
from webui.sampling import DiscreteEpsDenoiser, sample
from webui.sampling.noise import BrownianTreeNoise

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("torchsde")


def tree_noise(x: torch.Tensor, sigmas: torch.Tensor, seed: int):
    from diffusers.schedulers.scheduling_dpmsolver_sde import BrownianTreeNoiseSampler

    positive = sigmas[sigmas > 0]
    return BrownianTreeNoiseSampler(x, positive.min().item(), sigmas.max().item(), seed)


def dpm_multistep_reference(eps_fn, x, steps: int, seed: int | None, **config):
    """diffusers' DPMSolverMultistepScheduler loop; with ``seed`` its SDE noise is the Brownian tree of ``seed``."""
    ref = scheduler("DPMSolverMultistepScheduler", **config)
    ref.set_timesteps(steps)
    sigmas = ref.sigmas
    bt = tree_noise(x, sigmas, seed) if seed is not None else None
    x = x * ref.init_noise_sigma
    for i, t in enumerate(ref.timesteps):
        eps = eps_fn(ref.scale_model_input(x, t), t.reshape(1).expand(x.shape[0]))
        kwargs = {}
        if bt is not None:
            kwargs["variance_noise"] = bt(sigmas[i], sigmas[i + 1]) if sigmas[i + 1] > 0 else torch.zeros_like(x)
        x = ref.step(eps, t, x, **kwargs).prev_sample
    return x


@pytest.mark.parametrize(
    ("name", "schedule", "ref_name", "config"),
    [
        ("DPM2", "Automatic", "KDPM2DiscreteScheduler", {}),
        pytest.param("DPM2", "Karras", "KDPM2DiscreteScheduler", {"use_karras_sigmas": True}, marks=pytest.mark.slow),
        ("DPM2 a", "Automatic", "KDPM2AncestralDiscreteScheduler", {}),
    ],
)
def test_dpm2_samplers_equal_diffusers_kdpm2(registry, alphas_cumprod, tiny_unet_eps, name, schedule, ref_name, config):
    x = noise(4)
    seed = 11 if name == "DPM2 a" else None
    expected = reference(scheduler(ref_name, **config), tiny_unet_eps, x, steps=10, seed=seed)
    got = ours(registry, alphas_cumprod, name, tiny_unet_eps, x, steps=10, seed=seed or 0, schedule=schedule)
    assert rel_err(got, expected) < 1e-4


@pytest.mark.parametrize("schedule", [pytest.param("Automatic", marks=pytest.mark.slow), "Karras"])
def test_dpmpp_sde_equals_diffusers_dpmsolver_sde_with_its_brownian_tree(
    registry, alphas_cumprod, tiny_unet_eps, schedule
):
    x = noise(5)
    ref = scheduler("DPMSolverSDEScheduler", noise_sampler_seed=42, use_karras_sigmas=schedule == "Karras")
    expected = reference(ref, tiny_unet_eps, x, steps=8)
    got = ours(registry, alphas_cumprod, "DPM++ SDE", tiny_unet_eps, x, steps=8, seed=42, schedule=schedule)
    assert rel_err(got, expected) < 1e-4
    other_seed = ours(registry, alphas_cumprod, "DPM++ SDE", tiny_unet_eps, x, steps=8, seed=43, schedule=schedule)
    assert rel_err(other_seed, got) > 1e-3  # the tree's seed is the image seed


@pytest.mark.slow
def test_dpm2_ancestral_karras_differs_from_diffusers_only_by_its_timestep_quirk(
    registry, alphas_cumprod, tiny_unet_eps
):
    """With eta 1 the DPM2 midpoint sqrt(sigma * sigma_down) *is* sigma_next. diffusers feeds the UNet that sigma's
    unrounded timestep (427.49) at the midpoint and its rounded Karras timestep (427) at the next step; we feed the
    schedule's 427 both times. Same sigmas and noise, so the results differ only by that timestep's effect."""
    x = noise(4)
    ref = scheduler("KDPM2AncestralDiscreteScheduler", use_karras_sigmas=True)
    expected = reference(ref, tiny_unet_eps, x, steps=10, seed=11)
    got = ours(registry, alphas_cumprod, "DPM2 a", tiny_unet_eps, x, steps=10, seed=11, schedule="Karras")
    assert rel_err(got, expected) < 3e-3


@pytest.mark.parametrize(
    ("name", "solver_type", "schedule"),
    [
        ("DPM++ 2M SDE", "midpoint", "Karras"),
        pytest.param("DPM++ 2M SDE", "midpoint", "Automatic", marks=pytest.mark.slow),
        ("DPM++ 2M SDE Heun", "heun", "Automatic"),
        pytest.param("DPM++ 2M SDE Heun", "heun", "Karras", marks=pytest.mark.slow),
    ],
)
def test_dpmpp_2m_sde_equals_diffusers_sde_dpmsolver_pp_fed_the_brownian_tree(
    registry, alphas_cumprod, tiny_unet_eps, name, solver_type, schedule
):
    x = noise(6)
    config = {
        "algorithm_type": "sde-dpmsolver++",
        "solver_type": solver_type,
        "use_karras_sigmas": schedule == "Karras",
    }
    expected = dpm_multistep_reference(tiny_unet_eps, x, 10, seed=7, **config)
    got = ours(registry, alphas_cumprod, name, tiny_unet_eps, x, steps=10, seed=7, schedule=schedule)
    assert rel_err(got, expected) < 1e-4


def test_dpmpp_2m_sde_white_noise_equals_diffusers_drawing_from_the_generator(registry, alphas_cumprod, tiny_unet_eps):
    x = noise(7)
    ref = scheduler("DPMSolverMultistepScheduler", algorithm_type="sde-dpmsolver++")
    expected = reference(ref, tiny_unet_eps, x, steps=10, seed=9)
    got = ours(registry, alphas_cumprod, "DPM++ 2M SDE", tiny_unet_eps, x, steps=10, seed=9, options={"noise": "white"})
    assert rel_err(got, expected) < 1e-4
    brownian = ours(registry, alphas_cumprod, "DPM++ 2M SDE", tiny_unet_eps, x, steps=10, seed=9)
    assert rel_err(brownian, got) > 1e-3


def test_dpmpp_3m_sde_without_noise_is_diffusers_third_order_dpm_solver_pp(registry, alphas_cumprod):
    """eta = 0 leaves DPM-Solver++(3M) with the "heun" form of its lower-order terms; 16 steps: no lower-order tail."""
    x = noise(8)
    config = {"solver_order": 3, "solver_type": "heun", "use_exponential_sigmas": True}

    def eps_fn(x_in: torch.Tensor, t: torch.Tensor, step: int = 0) -> torch.Tensor:
        return toy_eps(x_in, torch.full_like(t, 500.0))  # diffusers truncates these timesteps to integers; we do not

    expected = dpm_multistep_reference(eps_fn, x, 16, seed=None, **config)
    # k-diffusion starts from sigma_max * noise, diffusers' variance-preserving solver from sqrt(sigma_max^2 + 1)
    start = x * (1 + 1 / 14.614647**2) ** 0.5
    got = ours(
        registry, alphas_cumprod, "DPM++ 3M SDE", eps_fn, start, steps=16, schedule="Exponential", options={"eta": 0.0}
    )
    assert rel_err(got, expected) < 1e-4


def kdiff_3m_sde(model, x, sigmas, noise_sampler, eta=1.0):
    """k-diffusion's ``sample_dpmpp_3m_sde`` (k_diffusion/sampling.py, v0.1.1), step for step."""
    denoised_1 = denoised_2 = h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0, d1_1 = (denoised - denoised_1) / r0, (denoised_1 - denoised_2) / r1
                d1, d2 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1), (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + phi_2 * d1 - (phi_2 / h_eta - 0.5) * d2
            elif h_1 is not None:
                x = x + (h_eta.neg().expm1() / h_eta + 1) * (denoised - denoised_1) / (h_1 / h)
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt()
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


def kdiff_2s_ancestral(model, x, sigmas, generator):
    """k-diffusion's ``sample_dpmpp_2s_ancestral`` with eta 1, noise from ``generator`` as AUTOMATIC1111 draws it."""
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        sigma_up = min(
            sigmas[i + 1], (sigmas[i + 1] ** 2 * (sigmas[i] ** 2 - sigmas[i + 1] ** 2) / sigmas[i] ** 2) ** 0.5
        )
        sigma_down = (sigmas[i + 1] ** 2 - sigma_up**2) ** 0.5
        if sigma_down == 0:
            x = x + (x - denoised) / sigmas[i] * (sigma_down - sigmas[i])
        else:
            t, t_next = -sigmas[i].log(), -sigma_down.log()
            h = t_next - t
            s = t + 0.5 * h
            x_2 = ((-s).exp() / (-t).exp()) * x - (-h * 0.5).expm1() * denoised
            denoised_2 = model(x_2, (-s).exp())
            x = ((-t_next).exp() / (-t).exp()) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + torch.randn(x.shape, generator=generator) * sigma_up
    return x


def kdiff_model(alphas_cumprod, eps_fn):
    """The denoiser as k-diffusion's ``DiscreteEpsDDPMDenoiser`` (fractional timesteps from sigma)."""
    denoiser = DiscreteEpsDenoiser(eps_fn, alphas_cumprod)
    return lambda x, sigma: denoiser(x, sigma)


@pytest.mark.parametrize("schedule", ["Karras", "Exponential"])
def test_dpmpp_3m_sde_equals_k_diffusion_with_the_same_tree(registry, alphas_cumprod, schedule):
    from webui.sampling import build_schedule

    x = noise(9)
    sigmas = build_schedule(schedule, 12, alphas_cumprod).sigmas
    expected = kdiff_3m_sde(kdiff_model(alphas_cumprod, toy_eps), x * sigmas[0], sigmas, tree_noise(x, sigmas, 5))
    got = ours(registry, alphas_cumprod, "DPM++ 3M SDE", toy_eps, x, steps=12, seed=5, schedule=schedule)
    assert rel_err(got, expected) < 1e-4


def test_dpmpp_2s_ancestral_equals_k_diffusion(registry, alphas_cumprod, tiny_unet_eps):
    from webui.sampling import build_schedule

    x = noise(10)
    sigmas = build_schedule("Karras", 10, alphas_cumprod).sigmas
    g = torch.Generator().manual_seed(3)
    expected = kdiff_2s_ancestral(kdiff_model(alphas_cumprod, tiny_unet_eps), x * sigmas[0], sigmas, g)
    got = ours(registry, alphas_cumprod, "DPM++ 2S a", tiny_unet_eps, x, steps=10, seed=3, schedule="Karras")
    assert rel_err(got, expected) < 1e-4


@pytest.mark.parametrize("name", ["DPM++ SDE", "DPM++ 2M SDE", "DPM++ 3M SDE"])
def test_one_brownian_tree_per_image_seed(registry, alphas_cumprod, name):
    """Batch item i equals a single run of its own seed (AUTOMATIC1111's batch determinism)."""
    denoiser = DiscreteEpsDenoiser(toy_eps, alphas_cumprod)
    sampler = registry.get(name)
    batch = sample(
        sampler,
        denoiser,
        torch.cat([noise(10), noise(11)]),
        steps=6,
        alphas_cumprod=alphas_cumprod,
        generator=[torch.Generator().manual_seed(100), torch.Generator().manual_seed(101)],
    )
    single = sample(
        sampler,
        denoiser,
        noise(11),
        steps=6,
        alphas_cumprod=alphas_cumprod,
        generator=torch.Generator().manual_seed(101),
    )
    assert rel_err(batch[1:], single) < 1e-5


def test_brownian_noise_does_not_jump_with_the_step_count(alphas_cumprod):
    """The increments over [2, 1] sum to the same draw however the interval is cut (white noise would not)."""
    x = torch.zeros(1, 4, 8, 8)
    sigmas = torch.tensor([14.6, 2.0, 1.5, 1.0, 0.0])
    bt = BrownianTreeNoise(x, sigmas, [123])
    whole = bt(torch.tensor(2.0), torch.tensor(1.0))
    parts = bt(torch.tensor(2.0), torch.tensor(1.5)) * 0.5**0.5 + bt(torch.tensor(1.5), torch.tensor(1.0)) * 0.5**0.5
    torch.testing.assert_close(parts, whole, atol=1e-5, rtol=1e-5)
    assert abs(whole.std().item() - 1) < 0.2 and math.isfinite(whole.sum().item())

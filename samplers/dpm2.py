"""DPM2 and DPM2 ancestral (Karras et al. 2022 Alg. 2 + DPM-Solver-2's midpoint; k-diffusion's ``sample_dpm_2*``).

Each step evaluates the model at ``sigma`` and at the geometric midpoint of the step, and takes the
full step with the midpoint's derivative (Lu et al. 2022, arXiv 2206.00927, DPM-Solver-2 in sigma space);
the step into sigma = 0 is a plain Euler step. diffusers' ``KDPM2DiscreteScheduler`` and
``KDPM2AncestralDiscreteScheduler`` run the same steps.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from webui.sampling import Generator, Model, Sampler, StepCallback, ancestral_step, hookimpl, randn_like, to_d


def dpm2_step(
    model: Model, x: torch.Tensor, sigma: torch.Tensor, sigma_to: torch.Tensor, d: torch.Tensor
) -> torch.Tensor:
    """To ``sigma_to`` (> 0) with the derivative at ``sqrt(sigma * sigma_to)``; ``d`` is the one at ``sigma``."""
    sigma_mid = sigma.log().lerp(sigma_to.log(), 0.5).exp()
    x_2 = x + d * (sigma_mid - sigma)
    d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid))
    return x + d_2 * (sigma_to - sigma)


def sample_dpm_2(
    model: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: Generator,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """DPM2: second order, two model calls per step (one on the last step)."""
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        if callback is not None:
            callback({"i": i, "x": x, "denoised": denoised, "sigma": float(sigmas[i])})
        d = to_d(x, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigmas[i])
        else:
            x = dpm2_step(model, x, sigmas[i], sigmas[i + 1], d)
    return x


def sample_dpm_2_ancestral(
    model: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: Generator,
    callback: StepCallback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """DPM2 down to ``sigma_down``, then fresh noise of std ``sigma_up`` (see ``ancestral_step``).

    Args:
        eta: 1 = DDPM's posterior noise, 0 = plain DPM2.
        s_noise: scale of the added noise.
    """
    sig = sigmas.tolist()
    for i in range(len(sig) - 1):
        denoised = model(x, sigmas[i])
        if callback is not None:
            callback({"i": i, "x": x, "denoised": denoised, "sigma": sig[i]})
        sigma_down, sigma_up = ancestral_step(sig[i], sig[i + 1], eta)
        d = to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])
        else:
            x = dpm2_step(model, x, sigmas[i], sigmas.new_tensor(sigma_down), d)
            x = x + randn_like(x, generator) * (s_noise * sigma_up)
    return x


@hookimpl
def register_samplers(register: Callable[[Sampler], None]) -> None:
    register(
        Sampler(
            name="DPM2",
            function=sample_dpm_2,
            aliases=("k_dpm_2", "KDPM2DiscreteScheduler"),
            round_karras_timesteps=True,
            description="Second order, two model calls per step; sharper than Euler at the same steps.",
        )
    )
    register(
        Sampler(
            name="DPM2 a",
            function=sample_dpm_2_ancestral,
            aliases=("k_dpm_2_a", "KDPM2AncestralDiscreteScheduler"),
            stochastic=True,
            round_karras_timesteps=True,
            description="DPM2 with fresh noise at every step; varied, does not converge.",
        )
    )

"""LCM: latent consistency model sampling (Luo et al. 2023, arXiv 2310.04378, Algorithm 1; diffusers' LCMScheduler).

A consistency model maps any noisy latent straight to its clean estimate; sampling alternates that
estimate with re-noising to the next (lower) noise level. Use it with an LCM-distilled model or an LCM
LoRA, 4-8 steps and CFG 1-2. The consistency boundary scalings ``c_skip`` / ``c_out`` are left out:
at LCM's timesteps (t >= 19, scaled by 10) they differ from 0 and 1 by less than 1e-5.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from webui.sampling import Generator, Model, Sampler, StepCallback, hookimpl, randn_like


def sample_lcm(
    model: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: Generator,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Denoise, then add fresh noise of std ``sigma_next`` (none after the last step)."""
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        if callback is not None:
            callback({"i": i, "x": x, "denoised": denoised, "sigma": float(sigmas[i])})
        x = denoised
        if sigmas[i + 1] > 0:
            x = x + randn_like(x, generator) * sigmas[i + 1]
    return x


@hookimpl
def register_samplers(register: Callable[[Sampler], None]) -> None:
    register(
        Sampler(
            name="LCM",
            function=sample_lcm,
            aliases=("k_lcm", "LCMScheduler"),
            stochastic=True,
            schedules=("Automatic",),
            automatic="lcm",
            variance_preserving=True,
            description="For LCM models and LCM LoRAs only: usable images in 4-8 steps at CFG 1-2.",
        )
    )

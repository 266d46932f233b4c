"""DDIM (Song et al. 2021, arXiv 2010.02502) as a sigma-space sampler.

With ``x~ = x / sqrt(abar)`` and ``sigma = sqrt((1 - abar) / abar)``, DDIM's update (eq. 12)
``x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - s^2) eps + s z`` becomes
``x~_prev = x0 + sigma_down eps + sigma_up z``, with ``(sigma_down, sigma_up) = ancestral_step(sigma,
sigma_prev, eta)``: with eta = 0 an Euler step, with eta > 0 Euler ancestral. "Automatic" is
diffusers' DDIMScheduler with SD 1.5's settings (leading spacing, ``steps_offset=1``,
``set_alpha_to_one=False``: 951, 901, ..., 1 for 20 steps, ending at ``sigma(t=0)``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from samplers.euler import sample_euler_ancestral
from webui.sampling import Generator, Model, Sampler, StepCallback, hookimpl


def sample_ddim(
    model: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: Generator,
    callback: StepCallback | None = None,
    eta: float = 0.0,
) -> torch.Tensor:
    """DDIM with stochasticity ``eta`` (0 = deterministic, 1 = DDPM's posterior variance)."""
    return sample_euler_ancestral(model, x, sigmas, generator=generator, callback=callback, eta=eta)


@hookimpl
def register_samplers(register: Callable[[Sampler], None]) -> None:
    register(
        Sampler(
            name="DDIM",
            function=sample_ddim,
            automatic="leading-offset",
            variance_preserving=True,
            description="Denoising diffusion implicit models; deterministic with eta = 0.",
        )
    )

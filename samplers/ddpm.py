"""DDPM ancestral sampling (Ho et al. 2020, arXiv 2006.11239, Algorithm 2) with fewer steps.

With diffusers' ``fixed_small`` variance the posterior step from t to the previous timestep is DDIM
with eta = 1, i.e. Euler ancestral with eta = 1 in sigma space (see :mod:`samplers.ddim`).
"Automatic" is diffusers' DDPMScheduler: leading spacing, no offset (950, 900, ..., 0 for 20
steps), and the step after t = 0 goes to alpha 1 (sigma 0).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from samplers.euler import sample_euler_ancestral
from webui.sampling import Generator, Model, Sampler, StepCallback, hookimpl


def sample_ddpm(
    model: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: Generator,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Ancestral sampling with the posterior variance ``beta~_t`` (eq. 7)."""
    return sample_euler_ancestral(model, x, sigmas, generator=generator, callback=callback, eta=1.0)


@hookimpl
def register_samplers(register: Callable[[Sampler], None]) -> None:
    register(
        Sampler(
            name="DDPM",
            function=sample_ddpm,
            stochastic=True,
            automatic="leading",
            variance_preserving=True,
            description="The original ancestral sampler; needs many steps.",
        )
    )

"""Heun's second-order method (Karras et al. 2022, arXiv 2206.00364, Algorithm 2; k-diffusion's ``sample_heun``)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from samplers.euler import churn
from webui.sampling import Generator, Model, Sampler, StepCallback, hookimpl, to_d


def sample_heun(
    model: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: Generator,
    callback: StepCallback | None = None,
    s_churn: float = 0.0,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """Euler predictor, then the trapezoidal corrector (two model calls per step, one for the last step).

    Args:
        s_churn: Karras' S_churn (0 = deterministic).
        s_noise: Karras' S_noise.
    """
    steps = len(sigmas) - 1
    for i in range(steps):
        x, sigma_hat = churn(x, sigmas[i], steps, s_churn, s_noise, generator)
        denoised = model(x, sigma_hat)
        if callback is not None:
            callback({"i": i, "x": x, "denoised": denoised, "sigma": float(sigmas[i])})
        d = to_d(x, sigma_hat, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if float(sigmas[i + 1]) == 0:  # Algorithm 2, line 8: plain Euler into sigma = 0
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1]))
            x = x + (d + d_2) / 2 * dt
    return x


@hookimpl
def register_samplers(register: Callable[[Sampler], None]) -> None:
    register(
        Sampler(
            name="Heun",
            function=sample_heun,
            aliases=("k_heun",),
            description="Second order, two model calls per step.",
        )
    )

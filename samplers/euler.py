"""Euler and Euler ancestral (Karras et al. 2022, arXiv 2206.00364, Algorithm 2; k-diffusion's ``sample_euler*``)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from webui.sampling import Generator, Model, Sampler, StepCallback, ancestral_step, hookimpl, randn_like, to_d


def churn(
    x: torch.Tensor, sigma: torch.Tensor, steps: int, s_churn: float, s_noise: float, generator: Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 2, lines 4-6: raise the noise level to ``sigma_hat = sigma (1 + gamma)`` with fresh noise."""
    gamma = min(s_churn / steps, 2**0.5 - 1) if s_churn > 0 else 0.0
    if gamma == 0:
        return x, sigma
    sigma_hat = sigma * (gamma + 1)
    return x + randn_like(x, generator) * s_noise * (sigma_hat**2 - sigma**2) ** 0.5, sigma_hat


def sample_euler(
    model: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: Generator,
    callback: StepCallback | None = None,
    s_churn: float = 0.0,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """First-order solver of the probability-flow ODE ``dx/dsigma = (x - D(x; sigma)) / sigma``.

    Args:
        s_churn: Karras' S_churn (0 = deterministic): noise added before each step.
        s_noise: Karras' S_noise, the std of that noise.
    """
    steps = len(sigmas) - 1
    for i in range(steps):
        x, sigma_hat = churn(x, sigmas[i], steps, s_churn, s_noise, generator)
        denoised = model(x, sigma_hat)
        if callback is not None:
            callback({"i": i, "x": x, "denoised": denoised, "sigma": float(sigmas[i])})
        x = x + to_d(x, sigma_hat, denoised) * (sigmas[i + 1] - sigma_hat)
    return x


def sample_euler_ancestral(
    model: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: Generator,
    callback: StepCallback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """Euler step down to ``sigma_down``, then fresh noise of std ``sigma_up`` (see ``ancestral_step``).

    Args:
        eta: 1 = DDPM's posterior noise (Ho et al. 2020), 0 = deterministic (DDIM / Euler).
        s_noise: scale of the added noise.
    """
    sig = sigmas.tolist()
    for i in range(len(sig) - 1):
        denoised = model(x, sigmas[i])
        if callback is not None:
            callback({"i": i, "x": x, "denoised": denoised, "sigma": sig[i]})
        sigma_down, sigma_up = ancestral_step(sig[i], sig[i + 1], eta)
        x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sig[i])
        if sigma_up > 0:
            x = x + randn_like(x, generator) * (s_noise * sigma_up)
    return x


@hookimpl
def register_samplers(register: Callable[[Sampler], None]) -> None:
    register(
        Sampler(
            name="Euler",
            function=sample_euler,
            aliases=("k_euler",),
            description="First-order ODE solver; fast and predictable.",
        )
    )
    register(
        Sampler(
            name="Euler a",
            function=sample_euler_ancestral,
            aliases=("k_euler_a", "k_euler_ancestral", "Euler ancestral"),
            stochastic=True,
            description="Euler with fresh noise at every step; does not converge as steps grow.",
        )
    )

"""One-line building blocks of samplers, shared by the built-ins and open to plugins."""

from __future__ import annotations

import torch

from webui.sampling.types import Generator


def randn_like(x: torch.Tensor, generator: Generator) -> torch.Tensor:
    """Standard normal noise shaped like ``x``, drawn only from ``generator``.

    With a CPU generator (or a list of them, one per batch item) the noise is drawn on the CPU
    and then moved to ``x.device``, so that a seed gives the same image on every device and
    batch item ``i`` equals a single run seeded with that item's generator.
    """
    if isinstance(generator, torch.Generator):
        noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=torch.float32)
    else:
        if len(generator) != x.shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {x.shape[0]}")
        noise = torch.stack(
            [torch.randn(x.shape[1:], generator=g, device=g.device, dtype=torch.float32) for g in generator]
        )
    return noise.to(device=x.device, dtype=x.dtype)


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE derivative ``dx/dsigma = (x - D(x; sigma)) / sigma`` (Karras et al. 2022, eq. 3)."""
    return (x - denoised) / sigma


def ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """``(sigma_down, sigma_up)`` of an ancestral step from ``sigma_from`` to ``sigma_to``.

    Deterministically step to ``sigma_down``, then add noise of std ``sigma_up``, so that the
    marginal at ``sigma_to`` is right. ``eta=1`` is the DDPM posterior (Ho et al. 2020), ``eta=0``
    DDIM (Song et al. 2021, arXiv 2010.02502, eq. 16, rewritten in sigma space).
    """
    if not eta or sigma_to == 0:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def linear_multistep_coeff(order: int, sigmas: list[float], i: int, j: int) -> float:
    """Adams-Bashforth weight of the derivative at ``sigmas[i - j]`` for the step ``sigmas[i] -> sigmas[i + 1]``.

    The integral over [sigma_i, sigma_{i+1}] of the Lagrange basis polynomial through
    ``sigmas[i], ..., sigmas[i - order + 1]`` that is 1 at ``sigmas[i - j]``; computed exactly
    (k-diffusion and diffusers integrate the same polynomial numerically).
    """
    poly = [1.0]  # coefficients, lowest degree first
    for k in range(order):
        if k == j:
            continue
        denom = sigmas[i - j] - sigmas[i - k]
        root = sigmas[i - k]
        shifted = [0.0, *poly]  # tau * poly
        poly = [(shifted[d] - root * (poly[d] if d < len(poly) else 0.0)) / denom for d in range(len(shifted))]

    def antiderivative(tau: float) -> float:
        return sum(c * tau ** (d + 1) / (d + 1) for d, c in enumerate(poly))

    return antiderivative(sigmas[i + 1]) - antiderivative(sigmas[i])

"""DEIS: diffusion exponential integrator sampler (Zhang & Chen 2023, arXiv 2204.13902), the multistep "log-rho"
variant of diffusers' ``DEISMultistepScheduler``.

With ``rho = sigma`` (k-diffusion's variance-exploding noise level) the probability-flow ODE is
``dx/drho = eps(x, rho)``; DEIS integrates the polynomial that interpolates the last ``order`` eps
estimates in ``log(rho)`` exactly over the step. Order 1 is an Euler step.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from webui.sampling import Generator, Model, Sampler, StepCallback, hookimpl, to_d


def _integral_2(t: float, b: float, c: float) -> float:
    """Antiderivative in rho of the Lagrange basis ``(log rho - log c) / (log b - log c)``."""
    return t * (-math.log(c) + math.log(t) - 1) / (math.log(b) - math.log(c))


def _integral_3(t: float, b: float, c: float, d: float) -> float:
    """Antiderivative in rho of ``(log rho - log c)(log rho - log d) / ((log b - log c)(log b - log d))``."""
    lt, lc, ld = math.log(t), math.log(c), math.log(d)
    numerator = t * (lc * (ld - lt + 1) - ld * lt + ld + lt**2 - 2 * lt + 2)
    return numerator / ((math.log(b) - lc) * (math.log(b) - ld))


def deis_coefficients(rho_t: float, rhos: list[float]) -> list[float]:
    """Weights of the eps estimates at ``rhos`` (newest first) for the step from ``rhos[0]`` to ``rho_t``."""
    s0 = rhos[0]
    if len(rhos) == 1:
        return [rho_t - s0]
    if len(rhos) == 2:
        _, s1 = rhos
        return [
            _integral_2(rho_t, s0, s1) - _integral_2(s0, s0, s1),
            _integral_2(rho_t, s1, s0) - _integral_2(s0, s1, s0),
        ]
    _, s1, s2 = rhos
    return [
        _integral_3(rho_t, s0, s1, s2) - _integral_3(s0, s0, s1, s2),
        _integral_3(rho_t, s1, s2, s0) - _integral_3(s0, s1, s2, s0),
        _integral_3(rho_t, s2, s0, s1) - _integral_3(s0, s2, s0, s1),
    ]


def sample_deis(
    model: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: Generator,
    callback: StepCallback | None = None,
    order: int = 2,
) -> torch.Tensor:
    """Multistep DEIS of order ``order`` (lower while the history fills, and on the last two steps of runs
    under 15 steps, as diffusers' ``lower_order_final``).

    Args:
        order: 1-3; 2 for guided sampling (diffusers' default), 3 for unguided.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"DEIS: order must be 1, 2 or 3, got {order!r}")
    sig = sigmas.tolist()
    steps = len(sig) - 1
    history: list[tuple[float, torch.Tensor]] = []  # (rho, eps), newest first
    for i in range(steps):
        denoised = model(x, sigmas[i])
        if callback is not None:
            callback({"i": i, "x": x, "denoised": denoised, "sigma": sig[i]})
        history = [(sig[i], to_d(x, sigmas[i], denoised)), *history][:order]
        this_order = len(history)
        if steps < 15 and i == steps - 1:
            this_order = 1
        elif steps < 15 and i == steps - 2:
            this_order = min(this_order, 2)
        if sig[i + 1] == 0:
            this_order = 1  # log(0): the interpolating polynomial has no integral to 0; Euler lands on D
        weights = deis_coefficients(sig[i + 1], [rho for rho, _ in history[:this_order]])
        x = x + sum((w * eps for w, (_, eps) in zip(weights, history, strict=False)), torch.zeros_like(x))
    return x


@hookimpl
def register_samplers(register: Callable[[Sampler], None]) -> None:
    register(
        Sampler(
            name="DEIS",
            function=sample_deis,
            aliases=("DEISMultistepScheduler", "deis"),
            automatic="linspace-integer-to-sigma-min",
            variance_preserving=True,
            round_karras_timesteps=True,
            description="Exponential-integrator multistep, one model call per step; good at 10-20 steps.",
        )
    )

"""PLMS: pseudo linear multistep (Liu et al. 2022, arXiv 2202.09778, eq. 12; diffusers' PNDMScheduler with
``skip_prk_steps=True``, the PLMS of the original Stable Diffusion release).

In sigma space a DDIM step is an Euler step along ``eps = (x - D) / sigma``; PLMS replaces that ``eps`` by
the fourth-order Adams-Bashforth combination of the last four, with the constant weights of equal steps
(55, -59, 37, -9) / 24 and lower orders while the history fills. The first step is an improved Euler step
(two model calls). "Automatic" is the PNDM scheduler's: 901, 801, ..., 1 for 10 steps, ending at sigma(t=0).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from webui.sampling import Generator, Model, Sampler, StepCallback, hookimpl, to_d

ADAMS_BASHFORTH = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}
"""Weights of the newest to the oldest derivative, for equal steps."""


def sample_plms(
    model: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: Generator,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Adams-Bashforth up to order 4 on ``eps``, after an improved Euler first step."""
    history: list[torch.Tensor] = []  # oldest first, at most 4
    steps = len(sigmas) - 1
    for i in range(steps):
        denoised = model(x, sigmas[i])
        if callback is not None:
            callback({"i": i, "x": x, "denoised": denoised, "sigma": float(sigmas[i])})
        eps = to_d(x, sigmas[i], denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if i == 0 and steps > 1:
            x_euler = x + eps * dt
            eps_prime = (eps + to_d(x_euler, sigmas[i + 1], model(x_euler, sigmas[i + 1]))) / 2
            history = [eps]
        else:
            history = [*history, eps][-4:]
            weights = ADAMS_BASHFORTH[len(history)]
            eps_prime = sum((w * e for w, e in zip(weights, reversed(history), strict=True)), torch.zeros_like(x))
        x = x + eps_prime * dt
    return x


@hookimpl
def register_samplers(register: Callable[[Sampler], None]) -> None:
    register(
        Sampler(
            name="PLMS",
            function=sample_plms,
            aliases=("PNDMScheduler", "plms"),
            automatic="leading-offset",
            variance_preserving=True,
            description="The original Stable Diffusion release's multistep sampler; like DDIM in quality at 50 steps.",
        )
    )

"""Restart sampling (Xu et al. 2023, arXiv 2306.14878) as AUTOMATIC1111 1.10 runs it (``sd_samplers_extra.py``).

Heun steps down the schedule; at 20 steps or more, the schedule is rebuilt as Karras with some steps kept back,
and on reaching sigma ~0.1 the sampler jumps back up to sigma ~2 with fresh noise (``restart_times`` times)
and descends again: the added noise contracts the errors accumulated so far.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from webui.sampling import Generator, Model, Sampler, StepCallback, hookimpl, randn_like, to_d
from webui.sampling.schedules import karras_sigmas

RESTART_AT, RESTART_TO = 0.1, 2.0
"""The sigma where a restart happens and the sigma it restarts from (AUTOMATIC1111's automatic restart list)."""


def _karras(steps: int, sigma_min: float, sigma_max: float, like: torch.Tensor) -> torch.Tensor:
    return torch.cat([karras_sigmas(sigma_min, sigma_max, steps).to(like), like.new_zeros(1)])


def restart_plan(sigmas: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The ``(sigma, sigma_next)`` Heun steps: the schedule's, with the restart segments spliced in."""
    steps = sigmas.shape[0] - 1
    restarts: dict[int, tuple[int, int, float]] = {}
    if steps >= 20:
        restart_steps, restart_times = (steps // 4, 2) if steps >= 36 else (9, 1)
        sigmas = _karras(steps - restart_steps * restart_times, float(sigmas[-2]), float(sigmas[0]), sigmas)
        restarts = {int(torch.argmin((sigmas - RESTART_AT).abs())): (restart_steps + 1, restart_times, RESTART_TO)}
    plan = []
    for i in range(len(sigmas) - 1):
        plan.append((sigmas[i], sigmas[i + 1]))
        if i + 1 in restarts:
            restart_steps, restart_times, restart_max = restarts[i + 1]
            max_idx = int(torch.argmin((sigmas - restart_max).abs()))
            if max_idx < i + 1:
                up = _karras(restart_steps, float(sigmas[i + 1]), float(sigmas[max_idx]), sigmas)[:-1]
                plan.extend(list(zip(up[:-1], up[1:], strict=True)) * restart_times)
    return plan


def sample_restart(
    model: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: Generator,
    callback: StepCallback | None = None,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """Heun steps along :func:`restart_plan`; before each jump back up, noise lifts ``x`` to the higher sigma.

    Args:
        s_noise: scale of the restart noise.
    """
    total = len(sigmas) - 1
    last_sigma = None
    for step, (sigma, sigma_next) in enumerate(restart_plan(sigmas)):
        if last_sigma is not None and last_sigma < sigma:
            x = x + randn_like(x, generator) * s_noise * (sigma**2 - last_sigma**2) ** 0.5
        denoised = model(x, sigma)
        d = to_d(x, sigma, denoised)
        if callback is not None:  # the restart segments add steps; progress stays within the requested count
            callback({"i": min(step, total - 1), "x": x, "denoised": denoised, "sigma": float(sigma)})
        dt = sigma_next - sigma
        if sigma_next == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            x = x + (d + to_d(x_2, sigma_next, model(x_2, sigma_next))) / 2 * dt
        last_sigma = sigma_next
    return x


@hookimpl
def register_samplers(register: Callable[[Sampler], None]) -> None:
    register(
        Sampler(
            name="Restart",
            function=sample_restart,
            aliases=("k_restart",),
            stochastic=True,
            description="Heun with restarts (20+ steps): sharp detail at 20-30 steps; about twice Euler's time.",
        )
    )

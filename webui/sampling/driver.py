"""``sample()``: everything around a sampler function (schedule, noise scaling, img2img, cancel, callback)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from webui.sampling.schedules import Schedule, build_schedule, normalize_schedule
from webui.sampling.types import Denoiser, Generator, Sampler, SamplingCancelled, StepCallback


class ScheduledModel:
    """The ``model(x, sigma) -> x0`` that sampler functions see.

    Before every model call it asks ``cancel()`` and raises :class:`SamplingCancelled`, so any
    sampler (built-in or plugin) stops within one step. For a sigma that belongs to the schedule it
    passes the schedule's own UNet timestep to the denoiser, so that the UNet sees exactly what
    diffusers' scheduler feeds it (fractional timesteps for "linspace", interpolated ones for
    Karras, integers for DPM-Solver); other sigmas (e.g. Euler's churn) fall back to the
    denoiser's ``sigma_to_t``.
    """

    def __init__(self, denoiser: Denoiser, schedule: Schedule, cancel: Callable[[], bool] | None = None):
        self.denoiser = denoiser
        self.cancel = cancel
        self.calls = 0
        self._timesteps = dict(zip(schedule.sigmas[:-1].tolist(), schedule.timesteps.tolist(), strict=True))

    def timestep_for(self, sigma: torch.Tensor | float) -> torch.Tensor | None:
        values = torch.as_tensor(sigma, dtype=torch.float32).reshape(-1).tolist()
        timesteps = [self._timesteps.get(v) for v in values]
        if any(t is None for t in timesteps):
            return None
        return torch.tensor(timesteps, dtype=torch.float32)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        if self.cancel is not None and self.cancel():
            raise SamplingCancelled("sampling cancelled")
        self.calls += 1
        timestep = self.timestep_for(sigma)
        if timestep is not None:
            timestep = timestep.to(x.device)
        return self.denoiser(x, torch.as_tensor(sigma, dtype=torch.float32, device=x.device), timestep=timestep)


def sampler_options(sampler: Sampler, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The sampler's option defaults updated with ``options``.

    Options that the sampler does not declare, and None values, are ignored: API clients send e.g.
    ``eta`` with every request, whatever the sampler (as AUTOMATIC1111 accepts).
    """
    merged = dict(sampler.options)
    for key, value in (options or {}).items():
        if key in merged and value is not None:
            merged[key] = _coerce(sampler.name, key, value, merged[key])
    return merged


def _coerce(sampler_name: str, key: str, value: Any, default: Any) -> Any:
    """``value`` as the type of the option's default (JSON clients send 4.0 for an int option)."""
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.strip().lower() in ("true", "1", "yes", "false", "0", "no"):
                    return value.strip().lower() in ("true", "1", "yes")
                raise ValueError
            return bool(value)
        if isinstance(default, int):
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise ValueError
            return int(float(value))
        if isinstance(default, float):
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"Sampler {sampler_name!r}: option {key!r} must be of type {type(default).__name__}, got {value!r}"
        ) from None


def img2img_start(steps: int, denoising_strength: float) -> int:
    """Index of the first step run for img2img: diffusers runs the last ``min(int(steps * strength), steps)``."""
    if not 0.0 <= denoising_strength <= 1.0:
        raise ValueError(f"denoising_strength must be in [0, 1], got {denoising_strength!r}")
    init_steps = min(int(steps * denoising_strength), steps)
    return steps - init_steps


def sample(
    sampler: Sampler,
    denoiser: Denoiser,
    noise: torch.Tensor,
    *,
    steps: int,
    schedule: str = "Automatic",
    alphas_cumprod: torch.Tensor,
    generator: Generator,
    init_latent: torch.Tensor | None = None,
    denoising_strength: float = 1.0,
    callback: StepCallback | None = None,
    cancel: Callable[[], bool] | None = None,
    options: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """Run ``sampler`` from ``noise`` (txt2img) or from ``init_latent`` noised (img2img).

    Args:
        sampler: from the registry.
        denoiser: ``denoiser(x, sigma, timestep=None) -> x0``, e.g. :class:`DiscreteEpsDenoiser`.
        noise: (B, C, H, W) standard normal noise (the pipeline draws it from the seed).
        steps: number of steps of the full schedule.
        schedule: one of ``SCHEDULES``; must be in ``sampler.schedules``.
        alphas_cumprod: (T,) the model's training schedule.
        generator: the per-step noise source of stochastic samplers (a generator or one per image).
        init_latent: (B, C, H, W) img2img start latent (already multiplied by the VAE scale factor).
        denoising_strength: img2img only: the last ``min(int(steps * strength), steps)`` steps run,
            starting from ``init_latent + sigma_start * noise``.
        callback: per step, ``{"i", "total", "x", "denoised", "sigma"}``.
        cancel: polled before every model call; True raises :class:`SamplingCancelled`.
        options: sampler options (see :func:`sampler_options`).

    Returns:
        the final latent in the variance-preserving scale the VAE expects (``x / sqrt(1 + sigma_last^2)``,
        which equals diffusers' output also for DDIM, whose schedule ends at ``sigma(t=0)``), to be
        divided by the VAE scale factor and decoded.
    """
    schedule = normalize_schedule(schedule)
    if schedule not in sampler.schedules:
        raise ValueError(
            f"Sampler {sampler.name!r} does not support the {schedule!r} schedule; "
            f"it supports {', '.join(sampler.schedules)}"
        )
    plan = build_schedule(
        schedule,
        steps,
        alphas_cumprod,
        automatic=sampler.automatic,
        round_karras_timesteps=sampler.round_karras_timesteps,
    )
    sigmas = plan.sigmas
    if init_latent is None:
        sigma_max = sigmas[0]
        scale = (sigma_max**2 + 1) ** 0.5 if sampler.variance_preserving else sigma_max
        x = noise * scale.to(noise.device)
    else:
        start = img2img_start(steps, denoising_strength)
        sigmas = sigmas[start:]
        plan = Schedule(sigmas, plan.timesteps[start:])
        if sigmas.shape[0] < 2:
            return init_latent.clone()
        x = init_latent + noise * sigmas[0].to(noise.device)

    total = sigmas.shape[0] - 1
    step_callback = None
    if callback is not None:

        def step_callback(info: dict[str, Any]) -> None:
            callback({**info, "total": total})

    model = ScheduledModel(denoiser, plan, cancel)
    x = sampler.function(
        model,
        x,
        sigmas.to(x.device),
        generator=generator,
        callback=step_callback,
        **sampler_options(sampler, options),
    )
    sigma_last = float(sigmas[-1])
    if sigma_last != 0.0:
        x = x / (sigma_last**2 + 1) ** 0.5
    return x

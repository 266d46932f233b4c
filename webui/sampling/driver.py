"""``sample()``: everything around a sampler function (schedule, noise scaling, img2img, cancel, callback)."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping
from typing import Any

import torch

from webui.sampling.schedules import Schedule, ScheduleType, build_schedule, normalize_schedule
from webui.sampling.types import Denoiser, Generator, Sampler, SamplingCancelled, StepCallback


class ScheduledModel:
    """The ``model(x, sigma) -> x0`` that sampler functions see.

    Before every model call it asks ``cancel()`` and raises :class:`SamplingCancelled`, so any
    sampler (built-in or plugin) stops within one step. It tells the denoiser which sampling step
    a call belongs to (:meth:`step_for`), so that prompt editing follows the schedule whether or
    not the sampler calls its progress callback. For a sigma that belongs to the schedule it also
    passes the schedule's own UNet timestep, so that the UNet sees exactly what diffusers'
    scheduler feeds it (fractional timesteps for "linspace", interpolated ones for Karras,
    integers for DPM-Solver); other sigmas (e.g. Euler's churn) fall back to the denoiser's
    ``sigma_to_t``.
    """

    def __init__(self, denoiser: Denoiser, schedule: Schedule, cancel: Callable[[], bool] | None = None):
        self.denoiser = denoiser
        self.cancel = cancel
        sigmas = schedule.sigmas.tolist()
        self._timesteps = dict(zip(sigmas[:-1], schedule.timesteps.tolist(), strict=True))
        self._negated_sigmas = [-s for s in sigmas]  # ascending, for bisect

    def timestep_for(self, sigma: torch.Tensor | float) -> torch.Tensor | None:
        """The schedule's UNet timestep of each sigma, or None when one of them is not on the schedule."""
        return self._timestep(_values(sigma))

    def step_for(self, sigma: torch.Tensor | float) -> int:
        """The 0-based step of ``sigma``: how many schedule sigmas lie above it.

        ``sigmas[i]`` is step ``i``; a sigma between two schedule entries counts as the step of the lower
        one (Euler's churned ``sigma_hat`` above ``sigmas[i]`` is step ``i``, a midpoint below it step
        ``i + 1``). With one sigma per batch item, the first one decides.
        """
        return self._step(_values(sigma))

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        if self.cancel is not None and self.cancel():
            raise SamplingCancelled("sampling cancelled")
        values = _values(sigma)
        timestep = self._timestep(values)
        if timestep is not None:
            timestep = timestep.to(x.device)
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
        return self.denoiser(x, sigma, timestep=timestep, step=self._step(values))

    def _timestep(self, values: list[float]) -> torch.Tensor | None:
        timesteps = [self._timesteps.get(v) for v in values]
        if any(t is None for t in timesteps):
            return None
        return torch.tensor(timesteps, dtype=torch.float32)

    def _step(self, values: list[float]) -> int:
        return bisect.bisect_left(self._negated_sigmas, -values[0])


def _values(sigma: torch.Tensor | float) -> list[float]:
    """One float32 sigma or one per batch item, as Python floats (the keys of the schedule's lookups)."""
    return torch.as_tensor(sigma, dtype=torch.float32).reshape(-1).tolist()


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
    """Index of the first step run for img2img: diffusers runs the last ``min(int(steps * strength), steps)``.

    ``steps`` itself when no step is left (too small a strength): the init latent is the result.
    """
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
    schedule: str | ScheduleType = "Automatic",
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
        denoiser: ``denoiser(x, sigma, timestep=None, step=0) -> x0``, e.g. :class:`DiscreteEpsDenoiser`.
        noise: (B, C, H, W) standard normal noise (the pipeline draws it from the seed).
        steps: number of steps of the full schedule.
        schedule: one of ``SCHEDULES`` or a plugin's :class:`ScheduleType` (``SamplerRegistry.schedule``
            looks names up); ``sampler`` must support it.
        alphas_cumprod: (T,) the model's training schedule.
        generator: the per-step noise source of stochastic samplers (a generator or one per image).
        init_latent: (B, C, H, W) img2img start latent (already multiplied by the VAE scale factor).
        denoising_strength: img2img only: the steps from :func:`img2img_start` on run, starting from
            ``init_latent + sigma_start * noise``; with none left, ``init_latent`` is returned as it is.
        callback: per step, ``{"i", "total", "x", "denoised", "sigma"}``.
        cancel: polled before every model call; True raises :class:`SamplingCancelled`.
        options: sampler options (see :func:`sampler_options`).

    Returns:
        the final latent in the variance-preserving scale the VAE expects (``x / sqrt(1 + sigma_last^2)``,
        which equals diffusers' output also for DDIM, whose schedule ends at ``sigma(t=0)``), to be
        divided by the VAE scale factor and decoded.
    """
    if not isinstance(schedule, ScheduleType):
        schedule = normalize_schedule(schedule)
    schedule_name = schedule.name if isinstance(schedule, ScheduleType) else schedule
    if not sampler.supports(schedule_name):
        raise ValueError(
            f"Sampler {sampler.name!r} does not support the {schedule_name!r} schedule; "
            f"it supports {', '.join(sampler.schedules or ())}"
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
        if start == steps:
            return init_latent.clone()
        sigmas = sigmas[start:]
        plan = Schedule(sigmas, plan.timesteps[start:])
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

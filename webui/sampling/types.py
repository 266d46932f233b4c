"""The types shared by the sampler driver, the built-in samplers and third-party plugins."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

import torch

from webui.sampling.schedules import AUTOMATIC_SPACINGS, SCHEDULES, normalize_schedule

StepCallback = Callable[[dict[str, Any]], None]
"""Called once per step with a plain dict: ``i``, ``total``, ``x``, ``denoised``, ``sigma``."""

Generator = torch.Generator | list[torch.Generator]


class SamplingCancelled(Exception):
    """Raised from inside the model call when the ``cancel()`` passed to ``sample()`` returns True."""


class UnknownSamplerError(ValueError):
    """A sampler name that no registered sampler (or alias) matches."""


class Denoiser(Protocol):
    """A model in k-diffusion's form: ``denoiser(x, sigma) -> x0`` (Karras et al. 2022, arXiv 2206.00364).

    ``x`` is the noisy latent in variance-exploding space (``x = x0 + sigma * eps``), ``sigma`` a
    scalar tensor or one value per batch item. ``timestep`` is the UNet timestep that the
    schedule pairs with ``sigma`` (``sample()`` passes it when it knows it, so that the UNet sees
    exactly what diffusers feeds it); when None the denoiser derives it from ``sigma``.
    """

    def __call__(
        self, x: torch.Tensor, sigma: torch.Tensor, *, timestep: torch.Tensor | None = None
    ) -> torch.Tensor: ...


class SamplerFunction(Protocol):
    """``function(model, x, sigmas, *, generator, callback, **options) -> x`` (k-diffusion style).

    Args:
        model: ``model(x, sigma) -> x0``; raises :class:`SamplingCancelled` when cancelled.
        x: the starting latent, already scaled to ``sigmas[0]``.
        sigmas: descending float32 tensor of noise levels on ``x.device``; ``sigmas[-1]`` is usually 0.
        generator: the only source of randomness: draw noise with
            :func:`webui.sampling.randn_like` ``(x, generator)``.
        callback: if not None, call it once per step with a dict ``{"i", "x", "denoised", "sigma"}``
            (``sample()`` adds ``total``).
        options: the sampler's declared options (``Sampler.options``), defaults filled in.
    """

    def __call__(
        self,
        model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        x: torch.Tensor,
        sigmas: torch.Tensor,
        *,
        generator: Generator,
        callback: StepCallback | None,
        **options: Any,
    ) -> torch.Tensor: ...


@dataclass(frozen=True, eq=False)
class Sampler:
    """A sampler as the registry, the UI and the API see it.

    Args:
        name: display name, e.g. ``"Euler a"``; unique case-insensitively across all plugins.
        function: the sampling loop, see :class:`SamplerFunction`.
        aliases: other accepted names (e.g. AUTOMATIC1111's ``"k_euler_a"``).
        stochastic: True when the sampler adds fresh noise at each step (results depend on
            the generator beyond the initial noise).
        options: sampler-specific keyword arguments of ``function`` with their defaults
            (``{"eta": 0.0}``); values must be bool, int, float or str.
        schedules: the schedules it supports, a subset of ``SCHEDULES``.
        automatic: what the "Automatic" schedule means for it, one of ``AUTOMATIC_SPACINGS``:
            ``"linspace"`` (diffusers' Euler/Heun/LMS default: fractional timesteps 999..0),
            ``"linspace-integer"`` (DPMSolverMultistep: integer timesteps 999..~999/n),
            ``"leading"`` (DDPM: 950, 900, ..., 0 for 20 steps), ``"leading-offset"`` (DDIM,
            ``steps_offset=1``: 951, ..., 1, ending at ``sigma(t=0)``).
        variance_preserving: start from noise of std ``sqrt(sigma_max^2 + 1)`` like diffusers'
            variance-preserving schedulers (DDIM, DDPM, DPM-Solver) instead of ``sigma_max``.
        round_karras_timesteps: feed the UNet integer timesteps with the Karras schedule, as
            diffusers' DPMSolverMultistepScheduler does.
        description: one line for the UI.

    Instances compare and hash by identity (the registry holds one per name).
    """

    name: str
    function: SamplerFunction
    aliases: tuple[str, ...] = ()
    stochastic: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)
    schedules: tuple[str, ...] = SCHEDULES
    automatic: str = "linspace"
    variance_preserving: bool = False
    round_karras_timesteps: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"Sampler name must be a non-empty string, got {self.name!r}")
        if not callable(self.function):
            raise ValueError(f"Sampler {self.name!r}: function must be callable, got {self.function!r}")
        aliases = (self.aliases,) if isinstance(self.aliases, str) else tuple(self.aliases)
        if not all(isinstance(a, str) and a.strip() for a in aliases):
            raise ValueError(f"Sampler {self.name!r}: aliases must be non-empty strings, got {self.aliases!r}")
        if not isinstance(self.options, Mapping):
            raise ValueError(f"Sampler {self.name!r}: options must be a mapping, got {type(self.options).__name__}")
        for key, default in self.options.items():
            if not isinstance(key, str) or not key.isidentifier():
                raise ValueError(f"Sampler {self.name!r}: option name {key!r} is not a Python identifier")
            if not isinstance(default, bool | int | float | str) or (
                isinstance(default, float) and not math.isfinite(default)
            ):
                raise ValueError(
                    f"Sampler {self.name!r}: option {key!r} default must be a finite bool, int, float or str, "
                    f"got {default!r}"
                )
        schedules = (self.schedules,) if isinstance(self.schedules, str) else tuple(self.schedules)
        if not schedules:
            raise ValueError(f"Sampler {self.name!r}: schedules must name at least one of {', '.join(SCHEDULES)}")
        try:
            schedules = tuple(normalize_schedule(s) for s in schedules)
        except ValueError as err:
            raise ValueError(f"Sampler {self.name!r}: {err}") from None
        if self.automatic not in AUTOMATIC_SPACINGS:
            raise ValueError(
                f"Sampler {self.name!r}: automatic={self.automatic!r} is not one of {', '.join(AUTOMATIC_SPACINGS)}"
            )
        name = self.name.strip()
        unique: dict[str, str] = {name.casefold(): name}
        for alias in aliases:  # aliases repeating the name (in any case) or each other are dropped
            unique.setdefault(alias.strip().casefold(), alias.strip())
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "aliases", tuple(unique.values())[1:])
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
        object.__setattr__(self, "schedules", schedules)

    @property
    def names(self) -> tuple[str, ...]:
        """The display name followed by the aliases."""
        return (self.name, *self.aliases)

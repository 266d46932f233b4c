"""The types shared by the sampler driver, the built-in samplers and third-party plugins."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

import torch

from webui.sampling.schedules import AUTOMATIC_SPACINGS

StepCallback = Callable[[dict[str, Any]], None]
"""Called once per step with a plain dict: ``i``, ``total``, ``x``, ``denoised``, ``sigma``."""

Generator = torch.Generator | list[torch.Generator]
"""The noise source of a sampler: one CPU generator, or one per batch item (see ``randn_like``)."""

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""What a sampler function calls: ``model(x, sigma) -> x0``, the denoised estimate at noise level ``sigma``."""

# Keyword-only parameters of a sampler function that ``sample()`` passes itself; the others are its options.
_DRIVER_ARGUMENTS = ("generator", "callback")


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
    ``step`` is the 0-based sampling step that ``sigma`` belongs to (see
    :meth:`webui.sampling.driver.ScheduledModel.step_for`); the pipeline picks the prompt-edited
    contexts with it.
    """

    def __call__(
        self, x: torch.Tensor, sigma: torch.Tensor, *, timestep: torch.Tensor | None = None, step: int = 0
    ) -> torch.Tensor: ...


SamplerFunction = Callable[..., torch.Tensor]
"""``function(model, x, sigmas, *, generator, callback=None, **options) -> x`` (k-diffusion style).

Args:
    model: a :data:`Model`, ``model(x, sigma) -> x0``; raises :class:`SamplingCancelled` when cancelled.
    x: the starting latent, already scaled to ``sigmas[0]``.
    sigmas: descending float32 tensor of noise levels on ``x.device``; ``sigmas[-1]`` is usually 0.
    generator: the only source of randomness: draw noise with
        :func:`webui.sampling.randn_like` ``(x, generator)``.
    callback: if not None, call it once per step with a dict ``{"i", "x", "denoised", "sigma"}``
        (``sample()`` adds ``total``).
    options: the sampler's options: its other keyword-only parameters, each with a default
        (``Sampler.options`` reads them from the signature).

A plain ``Callable`` rather than a ``Protocol``: each sampler declares its own options as keyword
parameters, which no single signature can describe.
"""


@dataclass(frozen=True, eq=False)
class Sampler:
    """A sampler as the registry, the UI and the API see it.

    Args:
        name: display name, e.g. ``"Euler a"``; unique case-insensitively across all plugins.
        function: the sampling loop, see :class:`SamplerFunction`.
        aliases: other accepted names (e.g. AUTOMATIC1111's ``"k_euler_a"``).
        stochastic: True when the sampler adds fresh noise at each step (results depend on
            the generator beyond the initial noise).
        schedules: the names of the schedules it supports (core or registered by a plugin), or None
            (the default) for every registered schedule. The registry checks the names; the UI and
            the API refuse the others with a message listing these.
        automatic: what the "Automatic" schedule means for it, one of ``AUTOMATIC_SPACINGS``:
            ``"linspace"`` (diffusers' Euler/Heun/LMS default: fractional timesteps 999..0),
            ``"linspace-integer"`` (DPMSolverMultistep: integer timesteps 999..~999/n),
            ``"leading"`` (DDPM: 950, 900, ..., 0 for 20 steps), ``"leading-offset"`` (DDIM,
            ``steps_offset=1``: 951, ..., 1, ending at ``sigma(t=0)``), ``"lcm"`` (LCMScheduler's
            subset of its 50-step distillation grid: 999, 759, 499, 259 for 4 steps),
            ``"linspace-integer-to-sigma-min"`` (DEISMultistep: "linspace-integer" ending at ``sigma(t=0)``).
        variance_preserving: start from noise of std ``sqrt(sigma_max^2 + 1)`` like diffusers'
            variance-preserving schedulers (DDIM, DDPM, DPM-Solver) instead of ``sigma_max``.
        round_karras_timesteps: feed the UNet integer timesteps with the Karras schedule, as
            diffusers' DPMSolverMultistepScheduler does.
        description: one line for the UI.

    ``options`` is not an argument: it is read from ``function``'s signature, whose keyword-only
    parameters other than ``generator`` and ``callback`` are the sampler's options, each with a
    bool, int, float or str default (``*, generator, callback=None, eta: float = 0.0`` gives
    ``{"eta": 0.0}``). Users set them per request; values are converted to the default's type.

    Instances compare and hash by identity (the registry holds one per name).
    """

    name: str
    function: SamplerFunction
    aliases: tuple[str, ...] = ()
    stochastic: bool = False
    schedules: tuple[str, ...] | None = None
    automatic: str = "linspace"
    variance_preserving: bool = False
    round_karras_timesteps: bool = False
    description: str = ""
    options: Mapping[str, Any] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"Sampler name must be a non-empty string, got {self.name!r}")
        if not callable(self.function):
            raise ValueError(f"Sampler {self.name!r}: function must be callable, got {self.function!r}")
        aliases = (self.aliases,) if isinstance(self.aliases, str) else tuple(self.aliases)
        if not all(isinstance(a, str) and a.strip() for a in aliases):
            raise ValueError(f"Sampler {self.name!r}: aliases must be non-empty strings, got {self.aliases!r}")
        options = _option_defaults(self.name, self.function)
        for key, default in options.items():
            if not isinstance(default, bool | int | float | str) or (
                isinstance(default, float) and not math.isfinite(default)
            ):
                raise ValueError(
                    f"Sampler {self.name!r}: option {key!r} default must be a finite bool, int, float or str, "
                    f"got {default!r}"
                )
        schedules = None
        if self.schedules is not None:
            schedules = (self.schedules,) if isinstance(self.schedules, str) else tuple(self.schedules)
            if not schedules or not all(isinstance(s, str) and s.strip() for s in schedules):
                raise ValueError(
                    f"Sampler {self.name!r}: schedules must be None (all) or schedule names, got {self.schedules!r}"
                )
            schedules = tuple(s.strip() for s in schedules)
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
        object.__setattr__(self, "options", MappingProxyType(options))
        object.__setattr__(self, "schedules", schedules)

    @property
    def names(self) -> tuple[str, ...]:
        """The display name followed by the aliases."""
        return (self.name, *self.aliases)

    def supports(self, schedule: str) -> bool:
        """Whether ``schedule`` (a canonical schedule name) is one this sampler runs with."""
        return self.schedules is None or schedule.casefold() in (s.casefold() for s in self.schedules)


def _option_defaults(sampler_name: str, function: Callable[..., Any]) -> dict[str, Any]:
    """The keyword-only parameters of ``function`` other than ``generator``/``callback``, with their defaults."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # a callable without a readable signature (some builtins) declares none
        return {}
    options = {}
    for parameter in parameters:
        if parameter.kind is not inspect.Parameter.KEYWORD_ONLY or parameter.name in _DRIVER_ARGUMENTS:
            continue
        if parameter.default is inspect.Parameter.empty:
            raise ValueError(
                f"Sampler {sampler_name!r}: option {parameter.name!r} has no default; every keyword-only parameter "
                f"of {getattr(function, '__name__', function)!r} besides generator and callback is an option and "
                "needs one (e.g. eta: float = 1.0)"
            )
        options[parameter.name] = parameter.default
    return options

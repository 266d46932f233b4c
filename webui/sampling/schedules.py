"""Noise schedules: which noise levels (sigmas) a sampler visits, and the UNet timestep of each.

Everything here is a pure function of ``alphas_cumprod`` (the model's training schedule) and the
step count. Sigmas live in k-diffusion's variance-exploding space (Karras et al. 2022,
arXiv 2206.00364): ``sigma(t) = sqrt((1 - alphas_cumprod[t]) / alphas_cumprod[t])``.

"Automatic" means what diffusers' matching scheduler does with Stable Diffusion 1.5's
scheduler config; the spacing names come from Lin et al. 2023 (arXiv 2305.08891, Table 2).
Arithmetic follows diffusers' order of operations (float32 table, float64 interpolation,
float32 result) so that the numbers agree with it to the last bit or two.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

SCHEDULES: tuple[str, ...] = ("Automatic", "Karras", "Exponential")
"""The core schedules, matched case-insensitively; plugins add more (:class:`ScheduleType`)."""

AUTOMATIC_SPACINGS: tuple[str, ...] = (
    "linspace",
    "linspace-integer",
    "leading",
    "leading-offset",
    "lcm",
    "linspace-integer-to-sigma-min",
)
"""What "Automatic" can mean for a sampler (``Sampler.automatic``)."""

KARRAS_RHO = 7.0


@dataclass(frozen=True)
class Schedule:
    """The noise levels of one sampling run.

    Args:
        sigmas: (steps + 1,) float32, descending; the last is 0, or ``sigma(t=0)`` for DDIM.
        timesteps: (steps,) float32 UNet timesteps paired with ``sigmas[:-1]``.
    """

    sigmas: torch.Tensor
    timesteps: torch.Tensor

    @property
    def steps(self) -> int:
        return self.sigmas.shape[0] - 1


def schedule_key(name: str) -> str:
    """How schedule names compare: case-insensitively, ``_`` standing for a space (A1111's API names)."""
    return name.strip().replace("_", " ").casefold()


ScheduleFunction = Callable[[int, torch.Tensor], "torch.Tensor | Schedule"]
"""``function(steps, table) -> sigmas`` of a plugin schedule.

``table`` is the model's (T,) float32 ascending ``sigma(t)`` (:func:`discrete_sigmas`); the result is
``steps + 1`` descending sigmas (a few more for AUTOMATIC1111's "DDIM"), usually ending in 0. The UNet
timestep of each sigma is then
``sigma_to_t`` (log-sigma interpolation, as k-diffusion's wrapper in AUTOMATIC1111). A function that knows
its timesteps exactly returns a :class:`Schedule` instead.
"""


@dataclass(frozen=True, eq=False)
class ScheduleType:
    """A schedule users pick by name ("Schedule type" in AUTOMATIC1111), registered by a plugin.

    Args:
        name: display name, e.g. ``"SGM Uniform"``; unique case-insensitively.
        function: see :data:`ScheduleFunction`.
        aliases: other accepted names (AUTOMATIC1111's API names such as ``"sgm_uniform"``).
        description: one line for the UI and the README.
    """

    name: str
    function: ScheduleFunction
    aliases: tuple[str, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"Schedule name must be a non-empty string, got {self.name!r}")
        if not callable(self.function):
            raise ValueError(f"Schedule {self.name!r}: function must be callable, got {self.function!r}")
        aliases = (self.aliases,) if isinstance(self.aliases, str) else tuple(self.aliases)
        if not all(isinstance(a, str) and a.strip() for a in aliases):
            raise ValueError(f"Schedule {self.name!r}: aliases must be non-empty strings, got {self.aliases!r}")
        unique: dict[str, str] = {schedule_key(self.name): self.name.strip()}
        for alias in aliases:  # aliases repeating the name (in any case, "_" for " ") or each other are dropped
            unique.setdefault(schedule_key(alias), alias.strip())
        object.__setattr__(self, "name", self.name.strip())
        object.__setattr__(self, "aliases", tuple(unique.values())[1:])

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


def normalize_schedule(name: str) -> str:
    """The canonical spelling of a schedule name ("karras" -> "Karras"); ValueError if unknown."""
    if isinstance(name, str):
        for known in SCHEDULES:
            if name.strip().casefold() == known.casefold():
                return known
    raise ValueError(f"Unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")


def discrete_sigmas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """``sigma(t) = sqrt((1 - abar_t) / abar_t)`` for every training timestep, float32, ascending in t."""
    alphas_cumprod = alphas_cumprod.detach().to("cpu", torch.float32)
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


def sigma_to_t(sigma: torch.Tensor, log_sigmas: torch.Tensor) -> torch.Tensor:
    """Fractional timestep of ``sigma`` by linear interpolation in log-sigma (k-diffusion, diffusers).

    Args:
        sigma: any shape.
        log_sigmas: (T,) ascending ``log(sigma(t))``.

    Returns:
        float64 timesteps of ``sigma``'s shape, clamped to [0, T - 1].
    """
    log_sigmas = log_sigmas.to(sigma.device, torch.float64)
    log_sigma = sigma.to(torch.float64).clamp(min=1e-10).log()
    low_idx = (torch.searchsorted(log_sigmas, log_sigma.reshape(-1), right=True) - 1).clamp(0, log_sigmas.shape[0] - 2)
    low, high = log_sigmas[low_idx], log_sigmas[low_idx + 1]
    w = ((low - log_sigma.reshape(-1)) / (low - high)).clamp(0, 1)
    return ((1 - w) * low_idx + w * (low_idx + 1)).reshape(sigma.shape)


def t_to_sigma(t: torch.Tensor, log_sigmas: torch.Tensor) -> torch.Tensor:
    """``sigma`` of fractional timesteps ``t``: linear interpolation in log-sigma (k-diffusion's ``t_to_sigma``).

    Args:
        t: any shape, in [0, T - 1].
        log_sigmas: (T,) ascending ``log(sigma(t))``, float32.

    Returns:
        float32 sigmas of ``t``'s shape.
    """
    t = t.to(torch.float32)
    low, high, w = t.floor().long(), t.ceil().long(), t.frac()
    return ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp()


def karras_sigmas(sigma_min: float, sigma_max: float, steps: int, rho: float = KARRAS_RHO) -> torch.Tensor:
    """Karras et al. 2022 (arXiv 2206.00364, eq. 5): ``(smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho``.

    Returns ``steps`` float64 values without the final zero.
    """
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def exponential_sigmas(sigma_min: float, sigma_max: float, steps: int) -> torch.Tensor:
    """Sigmas evenly spaced in log-sigma from ``sigma_max`` to ``sigma_min`` (k-diffusion); float64, no final zero."""
    return torch.linspace(math.log(sigma_max), math.log(sigma_min), steps, dtype=torch.float64).exp()


def _append(sigmas: torch.Tensor, last: float) -> torch.Tensor:
    return torch.cat([sigmas.to(torch.float64), torch.tensor([last], dtype=torch.float64)]).to(torch.float32)


def _linspace(table: torch.Tensor, steps: int) -> Schedule:
    """diffusers' Euler/Heun/LMS "linspace": t = 999 .. 0 in ``steps`` fractional points, sigma linear in t."""
    n = table.shape[0]
    t = torch.linspace(0, n - 1, steps, dtype=torch.float64).to(torch.float32).flip(0)
    t64 = t.to(torch.float64)
    low = t64.floor().long().clamp(max=n - 2)
    frac = t64 - low
    table64 = table.to(torch.float64)
    sigmas = table64[low] + frac * (table64[low + 1] - table64[low])
    return Schedule(_append(sigmas, 0.0), t)


def _linspace_integer(table: torch.Tensor, steps: int, last: float = 0.0) -> Schedule:
    """diffusers' DPMSolverMultistep "linspace": ``round(linspace(0, 999, steps + 1))`` reversed, last dropped;
    then ``last`` (0, or ``sigma(t=0)`` for DEIS)."""
    n = table.shape[0]
    t = torch.linspace(0, n - 1, steps + 1, dtype=torch.float64).round().flip(0)[:-1].long()
    return Schedule(_append(table[t], last), t.to(torch.float32))


def _leading(table: torch.Tensor, steps: int, offset: int) -> Schedule:
    """diffusers' "leading": ``t_i = i * (T // steps) + offset``, descending.

    The step after the last timestep goes to ``alphas_cumprod[t - T // steps]``, or past t = 0 to
    alpha 1 (sigma 0) for DDPM and to ``alphas_cumprod[0]`` (``set_alpha_to_one=False``) for DDIM.
    """
    n = table.shape[0]
    ratio = n // steps
    t = (torch.arange(steps) * ratio + offset).flip(0)
    if int(t[0]) > n - 1:
        raise ValueError(f"steps={steps} is too many for this schedule; use at most {n - 1}")
    last = float(table[0]) if offset > 0 else 0.0
    return Schedule(_append(table[t], last), t.to(torch.float32))


def _lcm(table: torch.Tensor, steps: int, original_steps: int = 50) -> Schedule:
    """diffusers' LCMScheduler: ``steps`` of the distillation's ``original_steps`` timesteps ``20 k - 1``, 999 first.

    Latent consistency models (Luo et al. 2023, arXiv 2310.04378) are distilled on that 50-step grid; the
    run picks every ``50 / steps``-th of it (4 steps: 999, 759, 499, 259), then 0.
    """
    n = table.shape[0]
    if steps > original_steps:
        raise ValueError(f"steps={steps} is too many for LCM; use at most {original_steps}")
    origin = (torch.arange(1, original_steps + 1) * (n // original_steps) - 1).flip(0)
    picks = torch.linspace(0, original_steps, steps + 1, dtype=torch.float64)[:-1].floor().long()
    t = origin[picks]
    return Schedule(_append(table[t], 0.0), t.to(torch.float32))


def _from_sigmas(sigmas: torch.Tensor, log_sigmas: torch.Tensor, round_timesteps: bool) -> Schedule:
    t = sigma_to_t(sigmas, log_sigmas)
    if round_timesteps:
        t = t.round()
    return Schedule(_append(sigmas, 0.0), t.to(torch.float32))


def _plugin_schedule(schedule: ScheduleType, steps: int, table: torch.Tensor) -> Schedule:
    """Run a plugin's schedule function and check what it returns."""
    result = schedule.function(steps, table)
    if isinstance(result, Schedule):
        plan = result
    else:
        sigmas = torch.as_tensor(result, dtype=torch.float32).reshape(-1).cpu()
        plan = Schedule(sigmas, sigma_to_t(sigmas[:-1], table.log()).to(torch.float32))
    sigmas = plan.sigmas
    if sigmas.ndim != 1 or sigmas.shape[0] < 2 or plan.timesteps.shape != (sigmas.shape[0] - 1,):
        raise ValueError(
            f"Schedule {schedule.name!r} gave {tuple(sigmas.shape)} sigmas and {tuple(plan.timesteps.shape)} "
            f"timesteps for {steps} steps; expected ({steps + 1},) and ({steps},)"
        )
    if not bool(torch.isfinite(sigmas).all()) or bool((sigmas < 0).any()) or bool((sigmas.diff() > 0).any()):
        raise ValueError(f"Schedule {schedule.name!r} gave sigmas that are not finite, >= 0 and descending")
    return Schedule(sigmas.to(torch.float32), plan.timesteps.to(torch.float32))


def build_schedule(
    schedule: str | ScheduleType,
    steps: int,
    alphas_cumprod: torch.Tensor,
    *,
    automatic: str = "linspace",
    round_karras_timesteps: bool = False,
) -> Schedule:
    """The sigmas and UNet timesteps of a run.

    Args:
        schedule: one of ``SCHEDULES`` (case-insensitive), or a plugin's :class:`ScheduleType`.
        steps: number of sampler steps, >= 1.
        alphas_cumprod: (T,) training schedule of the model.
        automatic: meaning of "Automatic", one of ``AUTOMATIC_SPACINGS`` (see ``Sampler.automatic``).
        round_karras_timesteps: round Karras timesteps to integers (diffusers' DPM-Solver does).

    "Karras" (rho 7) and "Exponential" run from ``sigma(T-1)`` to ``sigma(0)`` and append 0, as in
    k-diffusion; their timesteps are ``sigma_to_t`` of each sigma, as in diffusers.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    table = discrete_sigmas(alphas_cumprod)
    if isinstance(schedule, ScheduleType):
        return _plugin_schedule(schedule, steps, table)
    schedule = normalize_schedule(schedule)
    if schedule == "Automatic":
        if automatic == "linspace":
            return _linspace(table, steps)
        if automatic == "linspace-integer":
            return _linspace_integer(table, steps)
        if automatic == "leading":
            return _leading(table, steps, offset=0)
        if automatic == "leading-offset":
            return _leading(table, steps, offset=1)
        if automatic == "linspace-integer-to-sigma-min":
            return _linspace_integer(table, steps, last=float(table[0]))
        if automatic == "lcm":
            return _lcm(table, steps)
        raise ValueError(f"automatic={automatic!r} is not one of {', '.join(AUTOMATIC_SPACINGS)}")
    sigma_min, sigma_max = float(table[0]), float(table[-1])
    log_sigmas = table.log()
    if schedule == "Karras":
        return _from_sigmas(karras_sigmas(sigma_min, sigma_max, steps), log_sigmas, round_karras_timesteps)
    return _from_sigmas(exponential_sigmas(sigma_min, sigma_max, steps), log_sigmas, False)

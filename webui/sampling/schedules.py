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
from dataclasses import dataclass

import torch

SCHEDULES: tuple[str, ...] = ("Automatic", "Karras", "Exponential")
"""Schedule names users pick from, matched case-insensitively."""

AUTOMATIC_SPACINGS: tuple[str, ...] = ("linspace", "linspace-integer", "leading", "leading-offset")
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


def _linspace_integer(table: torch.Tensor, steps: int) -> Schedule:
    """diffusers' DPMSolverMultistep "linspace": ``round(linspace(0, 999, steps + 1))`` reversed, last dropped."""
    n = table.shape[0]
    t = torch.linspace(0, n - 1, steps + 1, dtype=torch.float64).round().flip(0)[:-1].long()
    return Schedule(_append(table[t], 0.0), t.to(torch.float32))


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


def _from_sigmas(sigmas: torch.Tensor, log_sigmas: torch.Tensor, round_timesteps: bool) -> Schedule:
    t = sigma_to_t(sigmas, log_sigmas)
    if round_timesteps:
        t = t.round()
    return Schedule(_append(sigmas, 0.0), t.to(torch.float32))


def build_schedule(
    schedule: str,
    steps: int,
    alphas_cumprod: torch.Tensor,
    *,
    automatic: str = "linspace",
    round_karras_timesteps: bool = False,
) -> Schedule:
    """The sigmas and UNet timesteps of a run.

    Args:
        schedule: one of ``SCHEDULES`` (case-insensitive).
        steps: number of sampler steps, >= 1.
        alphas_cumprod: (T,) training schedule of the model.
        automatic: meaning of "Automatic", one of ``AUTOMATIC_SPACINGS`` (see ``Sampler.automatic``).
        round_karras_timesteps: round Karras timesteps to integers (diffusers' DPM-Solver does).

    "Karras" (rho 7) and "Exponential" run from ``sigma(T-1)`` to ``sigma(0)`` and append 0, as in
    k-diffusion; their timesteps are ``sigma_to_t`` of each sigma, as in diffusers.
    """
    schedule = normalize_schedule(schedule)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    table = discrete_sigmas(alphas_cumprod)
    if schedule == "Automatic":
        if automatic == "linspace":
            return _linspace(table, steps)
        if automatic == "linspace-integer":
            return _linspace_integer(table, steps)
        if automatic == "leading":
            return _leading(table, steps, offset=0)
        if automatic == "leading-offset":
            return _leading(table, steps, offset=1)
        raise ValueError(f"automatic={automatic!r} is not one of {', '.join(AUTOMATIC_SPACINGS)}")
    sigma_min, sigma_max = float(table[0]), float(table[-1])
    log_sigmas = table.log()
    if schedule == "Karras":
        return _from_sigmas(karras_sigmas(sigma_min, sigma_max, steps), log_sigmas, round_karras_timesteps)
    return _from_sigmas(exponential_sigmas(sigma_min, sigma_max, steps), log_sigmas, False)

"""The schedule types of AUTOMATIC1111 1.10 beyond the core three, registered as a plugin like any other.

Each function maps ``(steps, table)`` to ``steps + 1`` descending sigmas, ``table`` being the model's
ascending discrete ``sigma(t)`` (see :data:`webui.sampling.ScheduleFunction`). The formulas are
AUTOMATIC1111's ``modules/sd_schedulers.py`` and k-diffusion's; where the UNet timestep of a sigma is an
exact integer the function returns it in a :class:`Schedule`, otherwise the driver interpolates it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from webui.sampling import Schedule, ScheduleType, hookimpl
from webui.sampling.schedules import exponential_sigmas, sigma_to_t, t_to_sigma

AYS_SD15_SIGMAS = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)
"""Align Your Steps (Sabour et al. 2024, arXiv 2404.14507): NVIDIA's published SD 1.5 noise levels."""

BETA_ALPHA = BETA_BETA = 0.6
"""Beta schedule's distribution parameters (Lee et al. 2024, arXiv 2407.12173; AUTOMATIC1111's defaults)."""


def _append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas.to(torch.float32), sigmas.new_zeros(1, dtype=torch.float32)])


def uniform_sigmas(steps: int, table: torch.Tensor) -> torch.Tensor:
    """k-diffusion's ``get_sigmas(n)``: timesteps evenly spaced from T-1 to 0, sigma interpolated in log-sigma."""
    t = torch.linspace(table.shape[0] - 1, 0, steps)
    return _append_zero(t_to_sigma(t, table.log()))


def normal_sigmas(steps: int, table: torch.Tensor) -> torch.Tensor:
    """AUTOMATIC1111's "Normal": ``steps`` timesteps evenly spaced from ``t(sigma_max)`` to ``t(sigma_min)``."""
    log_sigmas = table.log()
    start, end = (float(sigma_to_t(table[i], log_sigmas)) for i in (-1, 0))
    return _append_zero(t_to_sigma(torch.linspace(start, end, steps), log_sigmas))


def sgm_uniform_sigmas(steps: int, table: torch.Tensor) -> torch.Tensor:
    """Stability's SGM "uniform" discretisation: ``steps + 1`` timesteps from ``t(sigma_max)`` to ``t(sigma_min)``,
    the last one dropped for the final 0 (diffusers' "trailing" spacing up to the rounding of timesteps)."""
    log_sigmas = table.log()
    start, end = (float(sigma_to_t(table[i], log_sigmas)) for i in (-1, 0))
    return _append_zero(t_to_sigma(torch.linspace(start, end, steps + 1)[:-1], log_sigmas))


def simple_schedule(steps: int, table: torch.Tensor) -> Schedule:
    """ComfyUI's "Simple": every ``T/steps``-th training sigma from the top, ``t = T - 1 - int(i * T / steps)``."""
    n = table.shape[0]
    t = torch.tensor([n - 1 - int(i * (n / steps)) for i in range(steps)])
    return Schedule(_append_zero(table[t]), t.to(torch.float32))


def ddim_schedule(steps: int, table: torch.Tensor) -> Schedule:
    """DDIM's uniform timesteps 1, 1 + T//steps, ... below T (diffusers' "leading" with offset 1), descending, then 0.

    As in AUTOMATIC1111, a step count that does not divide T gets the extra timesteps that fit (30 steps:
    31 timesteps 991, 958, ..., 1).
    """
    n = table.shape[0]
    t = torch.arange(1, n, max(n // steps, 1)).flip(0)
    return Schedule(_append_zero(table[t]), t.to(torch.float32))


def polyexponential_sigmas(steps: int, table: torch.Tensor, rho: float = 1.0) -> torch.Tensor:
    """k-diffusion's ``get_sigmas_polyexponential``: log-sigma a polynomial of degree ``rho`` in the step (rho 1:
    "Exponential")."""
    sigma_min, sigma_max = float(table[0]), float(table[-1])
    if rho == 1.0:
        return _append_zero(exponential_sigmas(sigma_min, sigma_max, steps))
    ramp = torch.linspace(1, 0, steps) ** rho
    return _append_zero(torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min)))


def kl_optimal_sigmas(steps: int, table: torch.Tensor) -> torch.Tensor:
    """Sigmas evenly spaced in ``arctan(sigma)`` (Sabour et al. 2024, the KL-optimal schedule), as AUTOMATIC1111
    1.10 writes it: ``steps + 1`` points from sigma_max down to sigma_min, without a final 0."""
    alpha_min, alpha_max = torch.arctan(table[0]), torch.arctan(table[-1])
    i = torch.arange(steps + 1)
    return torch.tan(i / steps * alpha_min + (1.0 - i / steps) * alpha_max)


def loglinear_interp(sigmas: tuple[float, ...], steps: int) -> list[float]:
    """``steps`` values interpolating the descending ``sigmas`` linearly in log-sigma (the AYS paper's recipe)."""
    ys = [math.log(s) for s in reversed(sigmas)]
    out = []
    for k in range(steps):
        x = k / (steps - 1) * (len(ys) - 1) if steps > 1 else 0.0
        j = min(int(x), len(ys) - 2)
        out.append(math.exp(ys[j] + (x - j) * (ys[j + 1] - ys[j])))
    return out[::-1]


def align_your_steps_sigmas(steps: int, table: torch.Tensor) -> torch.Tensor:
    """Align Your Steps: NVIDIA's 11 optimised SD 1.5 sigmas, log-linearly interpolated to other step counts."""
    sigmas = list(AYS_SD15_SIGMAS) if steps == len(AYS_SD15_SIGMAS) else loglinear_interp(AYS_SD15_SIGMAS, steps)
    return torch.tensor([*sigmas, 0.0], dtype=torch.float32)


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) by its continued fraction (Numerical Recipes 6.4)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast below the mean; use the symmetry above it
        return 1.0 - _betainc(b, a, 1.0 - x)
    log_front = a * math.log(x) + b * math.log1p(-x) - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 300):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return math.exp(log_front) * f / a


def beta_ppf(p: float, a: float, b: float) -> float:
    """The quantile of the Beta(a, b) distribution at ``p`` (bisection on :func:`_betainc`, float64 exact)."""
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    low, high = 0.0, 1.0
    for _ in range(200):
        mid = (low + high) / 2
        if mid in (low, high):
            break
        low, high = (mid, high) if _betainc(a, b, mid) < p else (low, mid)
    return (low + high) / 2


def beta_sigmas(steps: int, table: torch.Tensor, alpha: float = BETA_ALPHA, beta: float = BETA_BETA) -> torch.Tensor:
    """Beta sampling (Lee et al. 2024): ``sigma_min + ppf(1 - i/(n-1)) (sigma_max - sigma_min)``, then 0; more steps
    at both ends of the schedule."""
    sigma_min, sigma_max = float(table[0]), float(table[-1])
    ramp = [1.0 - k / (steps - 1) for k in range(steps)] if steps > 1 else [1.0]
    return torch.tensor([*(sigma_min + beta_ppf(p, alpha, beta) * (sigma_max - sigma_min) for p in ramp), 0.0])


SCHEDULE_TYPES: tuple[tuple[str, Callable[..., torch.Tensor | Schedule], tuple[str, ...], str], ...] = (
    ("Uniform", uniform_sigmas, (), "Evenly spaced timesteps (k-diffusion's discrete schedule)."),
    ("Polyexponential", polyexponential_sigmas, (), "Log-sigma polynomial; rho 1 = Exponential."),
    ("SGM Uniform", sgm_uniform_sigmas, ("SGMUniform",), "Trailing timesteps; for few-step models."),
    ("KL Optimal", kl_optimal_sigmas, (), "Evenly spaced in arctan(sigma)."),
    ("Align Your Steps", align_your_steps_sigmas, (), "NVIDIA's tuned SD 1.5 steps."),
    ("Simple", simple_schedule, (), "Every T/n-th training timestep from the top (ComfyUI)."),
    ("Normal", normal_sigmas, (), "Timesteps evenly spaced between the model's sigma range."),
    ("DDIM", ddim_schedule, (), "DDIM's timesteps 1, 1 + T/n, ..., ending at 0."),
    ("Beta", beta_sigmas, (), "Beta(0.6, 0.6) quantiles: dense at both ends."),
)


@hookimpl
def register_schedules(register: Callable[[ScheduleType], None]) -> None:
    for name, function, aliases, description in SCHEDULE_TYPES:
        register(ScheduleType(name=name, function=function, aliases=aliases, description=description))

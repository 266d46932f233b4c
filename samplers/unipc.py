"""UniPC (Zhao et al. 2023, arXiv 2302.04867): a multistep predictor (UniP) and a corrector (UniC) that reuses the
model call of the next step, so it costs one model call per step. Data-prediction form with ``B(h) = e^h - 1``
("bh2"), as diffusers' ``UniPCMultistepScheduler`` with its defaults.

In ``lambda = -log(sigma)``, with ``h`` the step and ``r_k`` the earlier steps relative to it, both update

    x_t = (sigma_t / sigma_s) x_s + (1 - e^-h) D_s - B(h) sum_k rho_k (D_k - D_s) / r_k

with weights ``rho`` from the order conditions ``R rho = b`` (the paper's Algorithm 2 / 3).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from webui.sampling import Generator, Model, Sampler, StepCallback, hookimpl


def _order_conditions(h: float, rks: list[float], variant: str) -> tuple[float, float, list[list[float]], list[float]]:
    """``(h_phi_1, B(h), R, b)`` of the paper's order conditions for the ratios ``rks`` (the last one 1)."""
    hh = -h
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    b_h = math.expm1(hh) if variant == "bh2" else hh
    rows, b = [], []
    factorial = 1
    for k in range(1, len(rks) + 1):
        rows.append([r ** (k - 1) for r in rks])
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return h_phi_1, b_h, rows, b


def _solve(rows: list[list[float]], b: list[float]) -> list[float]:
    return torch.linalg.solve(torch.tensor(rows, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)).tolist()


def _update(
    x: torch.Tensor,
    s: int,
    t: int,
    lambdas: list[float],
    sig: list[float],
    history: list[tuple[int, torch.Tensor]],
    order: int,
    variant: str,
    denoised_t: torch.Tensor | None = None,
) -> torch.Tensor:
    """One UniP step from step ``s`` to ``t`` (``denoised_t`` None) or the UniC correction of ``x_t`` (given the
    model's estimate ``denoised_t`` there). ``history`` holds ``(step, D)`` pairs, the newest (``s``) last."""
    m0 = history[-1][1]
    h = lambdas[t] - lambdas[s]
    rks, d1s = [], []
    for k in range(1, order):
        step_k, m_k = history[-(k + 1)]
        rk = (lambdas[step_k] - lambdas[s]) / h
        rks.append(rk)
        d1s.append((m_k - m0) / rk)
    rks.append(1.0)
    h_phi_1, b_h, rows, b = _order_conditions(h, rks, variant)
    x_t = (sig[t] / sig[s]) * x - h_phi_1 * m0
    if denoised_t is None:  # predictor
        if d1s:
            rhos = [0.5] if order == 2 else _solve([r[:-1] for r in rows[:-1]], b[:-1])
            x_t = x_t - b_h * sum(rho * d for rho, d in zip(rhos, d1s, strict=True))
        return x_t
    rhos = [0.5] if order == 1 else _solve(rows, b)  # corrector
    correction = sum((rho * d for rho, d in zip(rhos[:-1], d1s, strict=True)), torch.zeros_like(x))
    return x_t - b_h * (correction + rhos[-1] * (denoised_t - m0))


def sample_unipc(
    model: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: Generator,
    callback: StepCallback | None = None,
    order: int = 2,
    variant: str = "bh2",
) -> torch.Tensor:
    """UniPC with predictor order ``order`` (lower while the history fills and on the last steps).

    Args:
        order: 1-3; 2 for guided sampling (the paper's and diffusers' default), 3 for unguided.
        variant: ``"bh2"`` (``B(h) = e^h - 1``) or ``"bh1"`` (``B(h) = h``).
    """
    if order not in (1, 2, 3) or variant not in ("bh1", "bh2"):
        raise ValueError(f"UniPC: order must be 1, 2 or 3 and variant 'bh1' or 'bh2', got {order!r}, {variant!r}")
    sig = sigmas.tolist()
    steps = len(sig) - 1
    lambdas = [-math.log(s) if s > 0 else math.inf for s in sig]
    history: list[tuple[int, torch.Tensor]] = []
    last_x: torch.Tensor | None = None
    last_order = 1
    for i in range(steps):
        denoised = model(x, sigmas[i])
        if callback is not None:
            callback({"i": i, "x": x, "denoised": denoised, "sigma": sig[i]})
        if last_x is not None:  # UniC: correct x_i with the estimate just made there
            x = _update(last_x, i - 1, i, lambdas, sig, history, last_order, variant, denoised_t=denoised)
        history = [*history, (i, denoised)][-order:]
        this_order = min(order, steps - i, len(history))
        last_x = x
        x = _update(x, i, i + 1, lambdas, sig, history, this_order, variant)
        last_order = this_order
    return x


@hookimpl
def register_samplers(register: Callable[[Sampler], None]) -> None:
    register(
        Sampler(
            name="UniPC",
            function=sample_unipc,
            aliases=("k_unipc", "UniPCMultistepScheduler"),
            automatic="linspace-integer",
            variance_preserving=True,
            round_karras_timesteps=True,
            description="Predictor-corrector multistep, one model call per step: good images in 8-15 steps.",
        )
    )

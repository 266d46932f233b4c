"""Linear multistep (Adams-Bashforth) in sigma space (k-diffusion's ``sample_lms``; diffusers' LMSDiscreteScheduler)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from webui.sampling import Generator, Model, Sampler, StepCallback, hookimpl, linear_multistep_coeff, to_d


def sample_lms(
    model: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: Generator,
    callback: StepCallback | None = None,
    order: int = 4,
) -> torch.Tensor:
    """Integrate the ODE with a polynomial through the last ``order`` derivatives (one model call per step).

    Args:
        order: number of past derivatives used (1 = Euler).
    """
    if order < 1:
        raise ValueError(f"LMS order must be >= 1, got {order}")
    sig = sigmas.tolist()
    derivatives: list[torch.Tensor] = []
    for i in range(len(sig) - 1):
        denoised = model(x, sigmas[i])
        if callback is not None:
            callback({"i": i, "x": x, "denoised": denoised, "sigma": sig[i]})
        derivatives.append(to_d(x, sigmas[i], denoised))
        if len(derivatives) > order:
            derivatives.pop(0)
        cur_order = min(i + 1, order)
        coeffs = [linear_multistep_coeff(cur_order, sig, i, j) for j in range(cur_order)]
        x = x + sum(c * d for c, d in zip(coeffs, reversed(derivatives), strict=True))
    return x


@hookimpl
def register_samplers(register: Callable[[Sampler], None]) -> None:
    register(
        Sampler(
            name="LMS",
            function=sample_lms,
            aliases=("k_lms",),
            description="Fourth-order linear multistep; one model call per step.",
        )
    )

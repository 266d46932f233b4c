"""DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095, Algorithm 2; k-diffusion's ``sample_dpmpp_2m``)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from webui.sampling import Generator, Model, Sampler, StepCallback, hookimpl


def sample_dpmpp_2m(
    model: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: Generator,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Second-order multistep solver in ``lambda = -log(sigma)``, one model call per step.

    With ``h = lambda_next - lambda`` and ``r = h_last / h``, the step is
    ``x <- (sigma_next / sigma) x - expm1(-h) D``, where ``D`` is the denoised estimate
    extrapolated with the previous one, ``D = (1 + 1/(2r)) x0 - 1/(2r) x0_prev``; the first step and
    the step into sigma = 0 are first order (as diffusers' ``final_sigmas_type="zero"``).
    """
    sig = sigmas.tolist()
    old_denoised = None
    for i in range(len(sig) - 1):
        denoised = model(x, sigmas[i])
        if callback is not None:
            callback({"i": i, "x": x, "denoised": denoised, "sigma": sig[i]})
        if sig[i + 1] == 0:
            x = denoised
        else:
            h = math.log(sig[i]) - math.log(sig[i + 1])
            if old_denoised is None:
                denoised_d = denoised
            else:
                r = (math.log(sig[i - 1]) - math.log(sig[i])) / h
                denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sig[i + 1] / sig[i]) * x - math.expm1(-h) * denoised_d
        old_denoised = denoised
    return x


@hookimpl
def register_samplers(register: Callable[[Sampler], None]) -> None:
    register(
        Sampler(
            name="DPM++ 2M",
            function=sample_dpmpp_2m,
            aliases=("k_dpmpp_2m", "dpmpp_2m"),
            automatic="linspace-integer",
            variance_preserving=True,
            round_karras_timesteps=True,
            description="Second-order multistep; good images in 20-30 steps.",
        )
    )

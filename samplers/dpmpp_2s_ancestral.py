"""DPM-Solver++(2S) ancestral (Lu et al. 2022, arXiv 2211.01095; k-diffusion's ``sample_dpmpp_2s_ancestral``)"""

from __future__ import annotations

from collections.abc import Callable

import torch

from webui.sampling import Generator, Model, Sampler, StepCallback, ancestral_step, hookimpl, randn_like, to_d


def sample_dpmpp_2s_ancestral(
    model: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: Generator,
    callback: StepCallback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """A single-step second-order DPM-Solver++ step to ``sigma_down`` via ``t + h/2``, then noise of std ``sigma_up``.

    Args:
        eta: 1 = DDPM's posterior noise, 0 = deterministic DPM-Solver++(2S).
        s_noise: scale of the added noise.
    """
    sig = sigmas.tolist()
    for i in range(len(sig) - 1):
        denoised = model(x, sigmas[i])
        if callback is not None:
            callback({"i": i, "x": x, "denoised": denoised, "sigma": sig[i]})
        sigma_down, sigma_up = ancestral_step(sig[i], sig[i + 1], eta)
        if sigma_down == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            t, t_next = sigmas[i].log().neg(), sigmas.new_tensor(sigma_down).log().neg()
            h = t_next - t
            s = t + h / 2
            x_2 = ((-s).exp() / (-t).exp()) * x - (-h / 2).expm1() * denoised
            denoised_2 = model(x_2, (-s).exp())
            x = ((-t_next).exp() / (-t).exp()) * x - (-h).expm1() * denoised_2
        if sig[i + 1] > 0:
            x = x + randn_like(x, generator) * (s_noise * sigma_up)
    return x


@hookimpl
def register_samplers(register: Callable[[Sampler], None]) -> None:
    register(
        Sampler(
            name="DPM++ 2S a",
            function=sample_dpmpp_2s_ancestral,
            aliases=("k_dpmpp_2s_a", "k_dpmpp_2s_ancestral"),
            stochastic=True,
            description="Second-order single-step with fresh noise; two model calls per step.",
        )
    )

"""The stochastic DPM-Solver++ samplers (Lu et al. 2022, arXiv 2211.01095; k-diffusion's ``sample_dpmpp_*sde``).

They work in ``t = -log(sigma)`` with step ``h = t_next - t``. Their noise comes, as in AUTOMATIC1111, from a
Brownian tree per image seed (:func:`webui.sampling.noise.brownian_noise`), so that the image does not
jump when the step count changes; the ``noise="white"`` option draws fresh noise from the generator at
every step instead, as diffusers' ``DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++")`` does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from webui.sampling import Generator, Model, Sampler, StepCallback, ancestral_step, hookimpl, to_d
from webui.sampling.noise import brownian_noise, sde_noise


def _sigma(t: torch.Tensor) -> torch.Tensor:
    return t.neg().exp()


def _t(sigma: torch.Tensor) -> torch.Tensor:
    return sigma.log().neg()


def sample_dpmpp_sde(
    model: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: Generator,
    callback: StepCallback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    r: float = 0.5,
) -> torch.Tensor:
    """DPM-Solver++ (stochastic, single step): two ancestral sub-steps per step, via ``t + r h``.

    Args:
        eta: stochasticity of each sub-step (0 = deterministic DPM-Solver++(2S) with midpoint ``r``).
        s_noise: scale of the added noise.
        r: where the intermediate evaluation lies, as a fraction of the step in ``t``.
    """
    noise = brownian_noise(x, sigmas, generator)
    fac = 1 / (2 * r)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        if callback is not None:
            callback({"i": i, "x": x, "denoised": denoised, "sigma": float(sigmas[i])})
        if sigmas[i + 1] == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
            continue
        t, t_next = _t(sigmas[i]), _t(sigmas[i + 1])
        h = t_next - t
        s = t + h * r
        # step 1: ancestral sub-step to sigma(s)
        sd, su = ancestral_step(float(_sigma(t)), float(_sigma(s)), eta)
        s_ = _t(sigmas.new_tensor(sd))
        x_2 = (_sigma(s_) / _sigma(t)) * x - (t - s_).expm1() * denoised
        x_2 = x_2 + noise(_sigma(t), _sigma(s)) * s_noise * su
        denoised_2 = model(x_2, _sigma(s))
        # step 2: the full step with the denoised estimates combined
        sd, su = ancestral_step(float(_sigma(t)), float(_sigma(t_next)), eta)
        t_next_ = _t(sigmas.new_tensor(sd))
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (_sigma(t_next_) / _sigma(t)) * x - (t - t_next_).expm1() * denoised_d
        x = x + noise(_sigma(t), _sigma(t_next)) * s_noise * su
    return x


def _dpmpp_2m_sde(
    model: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    generator: Generator,
    callback: StepCallback | None,
    eta: float,
    s_noise: float,
    noise_kind: str,
    solver_type: str,
) -> torch.Tensor:
    """DPM-Solver++(2M) SDE (Lu et al. 2022, eq. for the SDE variant); ``solver_type`` "midpoint" or "heun"."""
    noise = sde_noise(x, sigmas, generator, noise_kind)
    old_denoised: torch.Tensor | None = None
    h_last = sigmas.new_ones(())
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        if callback is not None:
            callback({"i": i, "x": x, "denoised": denoised, "sigma": float(sigmas[i])})
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            eta_h = eta * h
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + ((-h - eta_h).expm1().neg() / (-h - eta_h) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (denoised - old_denoised)
            if eta:
                x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * eta_h).expm1().neg().sqrt() * s_noise
            h_last = h
        old_denoised = denoised
    return x


def sample_dpmpp_2m_sde(
    model: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: Generator,
    callback: StepCallback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise: str = "brownian",
) -> torch.Tensor:
    """DPM-Solver++(2M) SDE, midpoint form: one model call per step, the previous estimate as second order term.

    Args:
        eta: 1 = the SDE, 0 = DPM++ 2M's ODE.
        s_noise: scale of the added noise.
        noise: "brownian" (a Brownian tree per image seed, AUTOMATIC1111) or "white" (fresh noise from the
            generator at every step, diffusers).
    """
    return _dpmpp_2m_sde(model, x, sigmas, generator, callback, eta, s_noise, noise, "midpoint")


def sample_dpmpp_2m_sde_heun(
    model: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: Generator,
    callback: StepCallback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise: str = "brownian",
) -> torch.Tensor:
    """DPM-Solver++(2M) SDE with the Heun form of the second-order term (``solver_type="heun"``); see
    :func:`sample_dpmpp_2m_sde` for the options."""
    return _dpmpp_2m_sde(model, x, sigmas, generator, callback, eta, s_noise, noise, "heun")


def sample_dpmpp_3m_sde(
    model: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    generator: Generator,
    callback: StepCallback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise: str = "brownian",
) -> torch.Tensor:
    """DPM-Solver++(3M) SDE: third-order multistep with the two previous estimates (``phi_2``, ``phi_3`` terms).

    Args:
        eta: 1 = the SDE, 0 = the ODE (DPM-Solver++(3M)).
        s_noise: scale of the added noise.
        noise: "brownian" (AUTOMATIC1111) or "white".
    """
    noise_at = sde_noise(x, sigmas, generator, noise)
    denoised_1, denoised_2 = None, None
    h_1, h_2 = None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        if callback is not None:
            callback({"i": i, "x": x, "denoised": denoised, "sigma": float(sigmas[i])})
        h = None
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            if h_2 is not None and denoised_1 is not None and denoised_2 is not None and h_1 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None and denoised_1 is not None:
                r = h_1 / h
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + phi_2 * (denoised - denoised_1) / r
            if eta:
                x = (
                    x
                    + noise_at(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
                )
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


@hookimpl
def register_samplers(register: Callable[[Sampler], None]) -> None:
    multistep = dict(automatic="linspace-integer", variance_preserving=True, round_karras_timesteps=True)
    register(
        Sampler(
            name="DPM++ SDE",
            function=sample_dpmpp_sde,
            aliases=("k_dpmpp_sde", "DPMSolverSDEScheduler"),
            stochastic=True,
            description="Stochastic DPM-Solver++, two model calls per step; detailed at 10-20 Karras steps.",
        )
    )
    register(
        Sampler(
            name="DPM++ 2M SDE",
            function=sample_dpmpp_2m_sde,
            aliases=("k_dpmpp_2m_sde", "dpmpp_2m_sde"),
            stochastic=True,
            description="DPM++ 2M with Brownian noise; detailed images at 20-30 steps (Karras or Exponential).",
            **multistep,  # type: ignore[arg-type]
        )
    )
    register(
        Sampler(
            name="DPM++ 2M SDE Heun",
            function=sample_dpmpp_2m_sde_heun,
            aliases=("k_dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun"),
            stochastic=True,
            description="DPM++ 2M SDE with the Heun form of the correction.",
            **multistep,  # type: ignore[arg-type]
        )
    )
    register(
        Sampler(
            name="DPM++ 3M SDE",
            function=sample_dpmpp_3m_sde,
            aliases=("k_dpmpp_3m_sde", "dpmpp_3m_sde"),
            stochastic=True,
            description="Third-order multistep SDE; wants 30+ steps (Exponential).",
        )
    )

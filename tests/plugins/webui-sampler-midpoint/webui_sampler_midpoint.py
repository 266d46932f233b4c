"""Example sampler plugin: the explicit midpoint method (second-order Runge-Kutta) in sigma space."""

import torch

from webui.sampling import Generator, Model, Sampler, StepCallback, hookimpl, to_d


def sample_midpoint(
    model: Model, x: torch.Tensor, sigmas: torch.Tensor, *, generator: Generator, callback: StepCallback | None = None
) -> torch.Tensor:
    """Half an Euler step to the geometric mean of sigma and sigma_next, then a full step with that slope."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        if callback is not None:
            callback({"i": i, "x": x, "denoised": denoised, "sigma": float(sigma)})
        if sigma_next == 0:
            x = denoised  # an Euler step into sigma = 0 lands on the denoised estimate
            continue
        sigma_mid = (sigma * sigma_next) ** 0.5
        x_mid = x + to_d(x, sigma, denoised) * (sigma_mid - sigma)
        x = x + to_d(x_mid, sigma_mid, model(x_mid, sigma_mid)) * (sigma_next - sigma)
    return x


@hookimpl
def register_samplers(register):
    register(Sampler(name="Midpoint", function=sample_midpoint, aliases=("rk2",), description="2nd-order RK"))

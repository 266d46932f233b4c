"""From an epsilon-predicting UNet to a k-diffusion denoiser ``D(x; sigma) -> x0``."""

from __future__ import annotations

from collections.abc import Callable

import torch

from webui.sampling.schedules import discrete_sigmas, sigma_to_t

EpsFunction = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
"""``eps_fn(x_in, timestep, step) -> eps``; ``step`` is the 0-based sampling step (it picks prompt-edited contexts)."""


class DiscreteEpsDenoiser:
    """Wrap ``eps_fn(x_in, timestep) -> eps`` of a discrete-time DDPM model (Karras et al. 2022, Table 1, "VP").

    With ``sigma = sqrt((1 - abar) / abar)`` and ``x = x0 + sigma * eps`` (variance exploding), the
    model sees the variance-preserving input ``x_in = x / sqrt(sigma^2 + 1)`` and the denoised
    estimate is ``x0 = x - sigma * eps``.

    Args:
        eps_fn: ``eps_fn(x_in (B, C, H, W), timestep (B,) float, step int) -> eps``; the pipeline
            does classifier-free guidance inside it, with the contexts of sampling step ``step``.
        alphas_cumprod: (T,) the model's training schedule.
    """

    def __init__(self, eps_fn: EpsFunction, alphas_cumprod: torch.Tensor):
        self.eps_fn = eps_fn
        self.sigmas = discrete_sigmas(alphas_cumprod)
        self.log_sigmas = self.sigmas.log()

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Fractional timestep of each sigma (log-sigma interpolation), float32."""
        return sigma_to_t(sigma, self.log_sigmas).to(torch.float32)

    def __call__(
        self, x: torch.Tensor, sigma: torch.Tensor, *, timestep: torch.Tensor | None = None, step: int = 0
    ) -> torch.Tensor:
        batch = x.shape[0]
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1).expand(batch)
        if timestep is None:
            timestep = self.sigma_to_t(sigma)
        timestep = torch.as_tensor(timestep, dtype=torch.float32, device=x.device).reshape(-1).expand(batch)
        sigma_b = sigma.reshape(batch, *([1] * (x.ndim - 1)))
        eps = self.eps_fn(x / (sigma_b**2 + 1) ** 0.5, timestep, step)
        return x - eps.to(x.dtype) * sigma_b

"""The DDPM forward-process schedule that Stable Diffusion 1.x was trained with."""

from __future__ import annotations

import torch

NUM_TRAIN_TIMESTEPS = 1000
BETA_START = 0.00085
BETA_END = 0.012


def scaled_linear_alphas_cumprod(
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS, beta_start: float = BETA_START, beta_end: float = BETA_END
) -> torch.Tensor:
    """``alphas_cumprod[t]`` = prod_{s<=t} (1 - beta_s), with betas linear in sqrt-space.

    Computed in float32 in the same order of operations as CompVis and diffusers, so that
    schedules derived from it match theirs bit for bit.
    """
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)

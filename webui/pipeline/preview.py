"""Cheap live previews: a per-model linear map from latent channels to RGB.

A VAE decode per step would cost as much as the step itself. Instead, as AUTOMATIC1111's
"Approx cheap" preview does with hand-picked SD 1.x coefficients, each latent pixel maps to
one RGB pixel by ``rgb = latent @ W + b``. Here ``W`` and ``b`` are fitted per model by least
squares: decode a few random latents once with the model's own VAE, average-pool the images to
latent resolution, and regress the pooled colours on the latent channels. The fit costs one
small decode per loaded model (the service caches it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

if TYPE_CHECKING:
    from webui.models.vae import AutoencoderKL

FIT_SAMPLES = 2
FIT_LATENT_SIZE = 8


@dataclass(frozen=True)
class LatentPreview:
    """``rgb = latent @ weight + bias`` per latent pixel; latents are VAE-scaled, rgb in [-1, 1]."""

    weight: torch.Tensor  # (C, 3)
    bias: torch.Tensor  # (3,)

    def __call__(self, latent: torch.Tensor) -> Image.Image:
        """(C, H, W) or (B, C, H, W) latent (first item) -> an H x W RGB image."""
        if latent.ndim == 4:
            latent = latent[0]
        x = latent.detach().to("cpu", torch.float32).permute(1, 2, 0)  # (H, W, C)
        rgb = (x @ self.weight + self.bias).clamp(-1.0, 1.0)
        pixels = ((rgb + 1.0) * 127.5).round().to(torch.uint8).numpy()
        return Image.fromarray(np.ascontiguousarray(pixels), "RGB")


def fit_latent_preview(
    vae: AutoencoderKL,
    scale_factor: float,
    *,
    samples: int = FIT_SAMPLES,
    latent_size: int = FIT_LATENT_SIZE,
    seed: int = 0,
) -> LatentPreview:
    """Least-squares fit of decoded RGB on latent channels for ``vae`` (one small decode)."""
    param = next(vae.parameters())
    channels = vae.post_quant_conv.in_channels
    generator = torch.Generator("cpu").manual_seed(seed)
    latents = torch.randn((samples, channels, latent_size, latent_size), generator=generator)
    with torch.no_grad():
        images = vae.decode((latents / scale_factor).to(param.device, param.dtype)).float().cpu()
    pooled = F.adaptive_avg_pool2d(images, (latent_size, latent_size))  # (B, 3, h, w)
    x = latents.permute(0, 2, 3, 1).reshape(-1, channels)
    x = torch.cat([x, torch.ones(len(x), 1)], dim=1)  # (N, C + 1): channels and a constant
    y = pooled.permute(0, 2, 3, 1).reshape(-1, 3)
    solution = torch.linalg.lstsq(x.double(), y.double()).solution.float()  # (C + 1, 3)
    if not bool(torch.isfinite(solution).all()):
        solution = torch.zeros_like(solution)
    return LatentPreview(weight=solution[:channels].contiguous(), bias=solution[channels].contiguous())

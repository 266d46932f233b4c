"""Sample images during training with a minimal deterministic DDIM loop.

The app's own samplers (``webui.sampling``) need a loaded ``StableDiffusionModel``; during
training the networks are still separate modules, so this is the plain DDIM update (Song et al.
2021, arXiv 2010.02502, eq. 12 with eta = 0) with classifier-free guidance and SD's "leading"
timestep spacing. It is for progress pictures only; the shipped model is checked with the app's
pipeline.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn

from webui.models.noise_schedule import scaled_linear_alphas_cumprod
from webui.models.unet import UNetModel
from webui.models.vae import AutoencoderKL
from webui.train.diffusion_training import tokenize

PREVIEW_PROMPTS = (
    "a red circle on a blue background",
    "a yellow star on a black background",
    "a green square on a white background",
    "a purple heart on an orange background",
    "a white triangle on a green background",
    "a small blue circle in the top left corner on a yellow background",
    "a large orange star on a purple background",
    "a black heart on the left and a red square on the right, white background",
)


@torch.no_grad()
def ddim_sample(
    unet: UNetModel,
    text_model: nn.Module,
    tokenizer,
    vae: AutoencoderKL,
    prompts: list[str] | tuple[str, ...],
    *,
    steps: int = 20,
    cfg_scale: float = 5.0,
    seed: int = 0,
    size: int = 128,
    device: torch.device | None = None,
) -> list[Image.Image]:
    """Text-to-image with DDIM (eta 0) and classifier-free guidance; one image per prompt."""
    device = device or torch.device("cpu")
    alphas_cumprod = scaled_linear_alphas_cumprod().double()
    stride = len(alphas_cumprod) // steps
    timesteps = list(range(1, len(alphas_cumprod), stride))[::-1][:steps]  # leading spacing, offset 1
    b = len(prompts)
    ids = tokenize(tokenizer, [*prompts, *([""] * b)]).to(device)
    context = text_model(input_ids=ids).last_hidden_state
    h = size // vae.config.downscale
    generator = torch.Generator("cpu").manual_seed(seed)
    x = torch.randn((b, unet.config.in_channels, h, h), generator=generator, dtype=torch.float64)
    for i, t in enumerate(timesteps):
        a = alphas_cumprod[t]
        a_prev = alphas_cumprod[timesteps[i + 1]] if i + 1 < len(timesteps) else torch.tensor(1.0, dtype=a.dtype)
        x_in = torch.cat([x, x]).float().to(device)
        eps_cond, eps_uncond = unet(x_in, torch.full((2 * b,), t, device=device), context).double().cpu().chunk(2)
        eps = eps_uncond + cfg_scale * (eps_cond - eps_uncond)
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    images = vae.decode((x / vae.config.scale_factor).float().to(device)).float().cpu()
    return [to_pil(image) for image in images]


def to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) in [-1, 1] -> PIL RGB."""
    array = ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(array))


def grid(images: list[Image.Image], columns: int = 4) -> Image.Image:
    w, h = images[0].size
    rows = (len(images) + columns - 1) // columns
    out = Image.new("RGB", (columns * w, rows * h), (128, 128, 128))
    for i, image in enumerate(images):
        out.paste(image, ((i % columns) * w, (i // columns) * h))
    return out

"""Sample images during training, with the app's own "DDIM" sampler.

The networks are still separate modules while they train, but the app's sampling needs no loaded
``StableDiffusionModel``: only a denoiser ``D(x; sigma)`` (:class:`webui.sampling.DiscreteEpsDenoiser`
around the guided UNet) and the training schedule. So the progress pictures are made exactly as the
app makes a DDIM picture (Song et al. 2021, eta = 0; SD 1.5's "leading" timesteps 951, 901, ..., 1
ending at ``alphas_cumprod[0]``, as diffusers and AUTOMATIC1111), with classifier-free guidance.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn

from webui.models.noise_schedule import scaled_linear_alphas_cumprod
from webui.models.unet import UNetModel
from webui.models.vae import AutoencoderKL
from webui.sampling import DiscreteEpsDenoiser, SamplerRegistry, create_sampler_registry, sample
from webui.train.diffusion_training import tokenize

PREVIEW_SAMPLER = "DDIM"

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
    samplers: SamplerRegistry | None = None,
) -> list[Image.Image]:
    """Text-to-image with the app's DDIM sampler (eta 0) and classifier-free guidance; one image per prompt.

    ``samplers`` is the app's sampler registry (built when not given).
    """
    device = device or torch.device("cpu")
    sampler = (samplers or create_sampler_registry()).get(PREVIEW_SAMPLER)
    alphas_cumprod = scaled_linear_alphas_cumprod()
    b = len(prompts)
    ids = tokenize(tokenizer, [*prompts, *([""] * b)]).to(device)
    context = text_model(input_ids=ids).last_hidden_state  # (2B, 77, D): the prompts, then B empty prompts

    def eps_fn(x_in: torch.Tensor, timestep: torch.Tensor, step: int) -> torch.Tensor:  # one prompt for every step
        eps_cond, eps_uncond = unet(torch.cat([x_in, x_in]), torch.cat([timestep, timestep]), context).chunk(2)
        return eps_uncond + cfg_scale * (eps_cond - eps_uncond)

    h = size // vae.config.downscale
    generator = torch.Generator("cpu").manual_seed(seed)
    # Drawn in float64 as the earlier preview loop drew it (a float32 draw is another draw), so that the grids
    # of runs sampled before and after it changed to the app's sampler stay comparable.
    noise = torch.randn((b, unet.config.in_channels, h, h), generator=generator, dtype=torch.float64).float()
    latents = sample(
        sampler,
        DiscreteEpsDenoiser(eps_fn, alphas_cumprod),
        noise.to(device),
        steps=steps,
        alphas_cumprod=alphas_cumprod,
        generator=generator,
    )
    images = vae.decode(latents / vae.config.scale_factor).float().cpu()
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

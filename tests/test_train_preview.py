"""Training previews are the app's DDIM: the same pictures as a plain DDIM loop (Song et al. 2021, eq. 12)."""

from __future__ import annotations

import numpy as np
import torch

from webui.models.noise_schedule import scaled_linear_alphas_cumprod
from webui.sampling import create_sampler_registry
from webui.train.diffusion_training import tokenize
from webui.train.preview import ddim_sample

PROMPTS = ("the cat", "a dog")


@torch.no_grad()
def reference_ddim(c, prompts, *, steps: int, cfg_scale: float, seed: int, size: int) -> np.ndarray:
    """DDIM with eta 0 in float64, SD 1.5's scheduler settings: leading timesteps with offset 1 (951, ..., 1 for
    20 steps), and the last step going to ``alphas_cumprod[0]`` (``set_alpha_to_one=False``), not to 1."""
    alphas_cumprod = scaled_linear_alphas_cumprod().double()
    stride = len(alphas_cumprod) // steps
    timesteps = list(range(1, len(alphas_cumprod), stride))[::-1][:steps]
    b = len(prompts)
    context = c.text_model(input_ids=tokenize(c.tokenizer, [*prompts, *([""] * b)])).last_hidden_state
    h = size // c.vae.config.downscale
    x = torch.randn((b, 4, h, h), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    for i, t in enumerate(timesteps):
        a = alphas_cumprod[t]
        a_prev = alphas_cumprod[timesteps[i + 1]] if i + 1 < len(timesteps) else alphas_cumprod[0]
        eps_cond, eps_uncond = c.unet(torch.cat([x, x]).float(), torch.full((2 * b,), t), context).double().chunk(2)
        eps = eps_uncond + cfg_scale * (eps_cond - eps_uncond)
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    images = c.vae.decode((x / c.vae.config.scale_factor).float()).clamp(-1, 1)
    return ((images + 1) * 127.5).round().permute(0, 2, 3, 1).numpy().astype(int)


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(image).astype(int) for image in images])


def test_preview_images_equal_a_plain_ddim_loop(tiny_components):
    samplers = create_sampler_registry()
    kwargs = {"steps": 10, "cfg_scale": 5.0, "seed": 3, "size": 64}
    ours = pixels(
        ddim_sample(
            tiny_components.unet,
            tiny_components.text_model,
            tiny_components.tokenizer,
            tiny_components.vae,
            PROMPTS,
            samplers=samplers,
            **kwargs,
        )
    )
    reference = reference_ddim(tiny_components, PROMPTS, **kwargs)
    assert ours.shape == reference.shape == (2, 64, 64, 3)
    assert np.abs(ours - reference).max() <= 1  # float32 sampling vs the float64 loop: rounding only
    assert ours.std() > 5  # a picture, not a flat field
    other_seed = pixels(
        ddim_sample(
            tiny_components.unet,
            tiny_components.text_model,
            tiny_components.tokenizer,
            tiny_components.vae,
            PROMPTS,
            samplers=samplers,
            **{**kwargs, "seed": 4},
        )
    )
    assert np.abs(other_seed - reference).mean() > 5 * np.abs(ours - reference).mean() + 1

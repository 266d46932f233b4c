"""Phase 2: train the CLIP text encoder and the UNet together on frozen-VAE latents.

The objective is Stable Diffusion's (Rombach et al. 2022, arXiv 2112.10752; Ho et al. 2020,
arXiv 2006.11239, eq. 14): pick ``t`` uniformly in 0..999, noise the scaled latent
``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` with SD 1.x's scaled-linear schedule, and
regress ``eps`` with a squared error. Each example's error is weighted by Min-SNR-5 (Hang et
al. 2023, arXiv 2303.09556: ``min(SNR_t, 5) / SNR_t`` for epsilon prediction), which speeds up
convergence without changing the optimum. 10% of the captions are replaced by the empty
caption (Ho & Salimans 2022, arXiv 2207.12598) so that classifier-free guidance works.

The latents come from a fixed pool of scenes encoded once by the frozen VAE; captions are
rewritten for every step from the scenes' descriptions, so the text varies even when an image
repeats. An exponential moving average of the weights is kept and is what gets shipped.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from webui.models.noise_schedule import scaled_linear_alphas_cumprod
from webui.models.unet import UNetModel
from webui.models.vae import AutoencoderKL
from webui.train import data
from webui.train.checkpointing import step_generator
from webui.train.vae_training import encode_images, lr_at

ModuleT = TypeVar("ModuleT", bound=nn.Module)

CONTEXT_LENGTH = 77


@dataclass(frozen=True)
class DiffusionTrainConfig:
    steps: int = 3600
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 200
    pool_size: int = 8192
    image_size: int = 64
    uncond_probability: float = 0.1
    min_snr_gamma: float = 5.0
    offset_noise: float = 0.5
    high_noise_weight: float = 8.0
    ema_decay: float = 0.998
    # Keep a contrastively pretrained text encoder fixed, as SD 1.x keeps CLIP. Trained on with the
    # UNet, it lost the shape features the pretraining gave it, and the shapes stayed at chance.
    freeze_pretrained_text: bool = True
    bf16: bool = False
    seed: int = 0


@dataclass
class LatentPool:
    """Scenes and the VAE posterior (mean, std) of their images, unscaled."""

    scenes: list[data.Scene]
    means: torch.Tensor
    stds: torch.Tensor


def pool_scenes(seed: int, count: int) -> list[data.Scene]:
    rng = np.random.default_rng([seed, 3])
    return [data.random_scene(rng) for _ in range(count)]


@torch.no_grad()
def build_pool(
    vae: AutoencoderKL,
    scenes: list[data.Scene],
    size: int,
    device: torch.device,
    progress: Callable[[int], None] | None = None,
) -> LatentPool:
    """Render and encode ``scenes`` in chunks."""
    count = len(scenes)
    means, stds = [], []
    chunk = 256
    for i in range(0, count, chunk):
        images = np.stack([data.image_to_array(data.render(s, size)) for s in scenes[i : i + chunk]])
        m, s = encode_images(vae, images, device)
        means.append(m.half())
        stds.append(s.half())
        if progress:
            progress(min(count, i + chunk))
    return LatentPool(scenes, torch.cat(means), torch.cat(stds))


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    """(B, 77) ids: start token, caption, end token, padded with the end token (as SD 1.x)."""
    return tokenizer(
        captions, padding="max_length", max_length=CONTEXT_LENGTH, truncation=True, return_tensors="pt"
    ).input_ids


def batch_captions(
    pool: LatentPool, indices: np.ndarray, rng: np.random.Generator, uncond_probability: float
) -> list[str]:
    """A fresh caption per scene; the empty caption with probability ``uncond_probability``."""
    captions = [data.caption(pool.scenes[i], rng) for i in indices]
    drop = rng.random(len(captions)) < uncond_probability
    return ["" if d else c for c, d in zip(captions, drop, strict=True)]


def diffusion_loss(
    unet: UNetModel,
    text_model: nn.Module,
    ids: torch.Tensor,
    x0: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    generator: torch.Generator,
    min_snr_gamma: float,
    offset_noise: float = 0.0,
    high_noise_weight: float = 1.0,
) -> torch.Tensor:
    """Min-SNR-weighted epsilon-prediction MSE for scaled latents ``x0``.

    Below SNR 1 the weight is raised to ``clamp(1 / SNR, 1, high_noise_weight)``, i.e. towards the
    x0 error (eps error / SNR). At high noise the eps error barely depends on x0, so without this
    the caption, which mostly decides what the image looks like at that stage (its colours), gets
    almost no gradient and a text encoder trained from scratch learns to tell captions apart only
    very slowly.

    ``offset_noise`` adds a per-image, per-channel constant of that standard deviation to the
    noise (Guttenberg 2023, "Diffusion with offset noise"). SD 1.x's schedule keeps some signal
    at t = 999 (Lin et al. 2023, arXiv 2305.08891), and in a small latent (16x16 for the demo) the
    mean of a few hundred noise values hides little of it: without the offset the model reads the
    background colour from the noisy latent instead of from the caption, and at sampling time
    (pure noise) picks it at random.
    """
    b = x0.shape[0]
    t = torch.randint(0, len(alphas_cumprod), (b,), generator=generator)
    eps = torch.randn(x0.shape, generator=generator)
    if offset_noise:
        eps = eps + offset_noise * torch.randn((b, x0.shape[1], 1, 1), generator=generator)
    abar = alphas_cumprod[t].view(b, 1, 1, 1)
    device = x0.device
    x_t = abar.sqrt().to(device) * x0 + (1 - abar).sqrt().to(device) * eps.to(device)
    context = text_model(input_ids=ids.to(device)).last_hidden_state
    pred = unet(x_t, t.to(device), context).float()
    snr = (abar / (1 - abar)).view(b).to(device)
    weight = torch.clamp(snr, max=min_snr_gamma) / snr * torch.clamp(1.0 / snr, min=1.0, max=high_noise_weight)
    per_example = (pred - eps.to(device)).pow(2).mean(dim=(1, 2, 3))
    return (weight * per_example).mean()


@torch.no_grad()
def zero_init_unet(unet: UNetModel) -> None:
    """Zero the last layer of every residual branch and the output conv, as CompVis' ``zero_module`` does.

    Each resblock and transformer then starts as the identity and the UNet predicts eps = 0, which
    makes training from scratch converge faster (Rombach et al. 2022; Dhariwal & Nichol 2021).
    """
    from webui.models.unet import ResBlock, SpatialTransformer

    for module in unet.modules():
        if isinstance(module, ResBlock):
            layer = module.out_layers[-1]
        elif isinstance(module, SpatialTransformer):
            layer = module.proj_out
        else:
            continue
        for param in layer.parameters():  # weight and bias
            nn.init.zeros_(param)
    for param in unet.out[-1].parameters():
        nn.init.zeros_(param)


def make_ema(module: ModuleT) -> ModuleT:
    ema = copy.deepcopy(module)
    ema.requires_grad_(False)
    return ema.eval()


@torch.no_grad()
def update_ema(ema: nn.Module, module: nn.Module, step: int, decay: float) -> None:
    """``ema = d * ema + (1 - d) * params`` with ``d`` warmed up as ``(1 + step) / (10 + step)``."""
    d = min(decay, (1 + step) / (10 + step))
    # One fused call for all tensors: a per-parameter loop is hundreds of tiny kernel launches per
    # step on a GPU, where this small model's step is launch-bound.
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in module.parameters()], 1.0 - d)


def train_diffusion_steps(
    unet: UNetModel,
    text_model: nn.Module,
    ema_unet: nn.Module,
    ema_text: nn.Module,
    tokenizer,
    optimizer: torch.optim.Optimizer,
    pool: LatentPool,
    config: DiffusionTrainConfig,
    start: int,
    device: torch.device,
    scale_factor: float,
    on_step: Callable[[int, dict[str, float]], None],
) -> None:
    """Run steps ``start .. config.steps - 1``; each step depends only on (seed, step), so resuming is exact."""
    alphas_cumprod = scaled_linear_alphas_cumprod()
    params = [*unet.parameters(), *text_model.parameters()]
    unet.train()
    text_model.train()
    for step in range(start, config.steps):
        rng = np.random.default_rng([config.seed, 2, step])
        generator = step_generator(config.seed, 2, step)
        indices = rng.integers(0, len(pool.scenes), size=config.batch_size)
        ids = tokenize(tokenizer, batch_captions(pool, indices, rng, config.uncond_probability))
        idx = torch.from_numpy(indices)
        noise = torch.randn(pool.means[idx].shape, generator=generator)
        x0 = ((pool.means[idx].float() + pool.stds[idx].float() * noise) * scale_factor).to(device)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config.steps, config.lr, config.warmup)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
            loss = diffusion_loss(
                unet,
                text_model,
                ids,
                x0,
                alphas_cumprod,
                generator,
                config.min_snr_gamma,
                config.offset_noise,
                config.high_noise_weight,
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        update_ema(ema_unet, unet, step, config.ema_decay)
        update_ema(ema_text, text_model, step, config.ema_decay)
        on_step(step, {"loss": float(loss.detach()), "grad": float(grad_norm)})
    unet.eval()
    text_model.eval()

"""Phase 1: train the KL autoencoder, then rescale its latents to SD 1.x's scale factor.

The loss is a pixel reconstruction term (L1 + L2) plus a small KL term towards N(0, I) as in
Rombach et al. 2022 (arXiv 2112.10752, section 3 and appendix G; no adversarial or perceptual
term: the images are flat colours). The VAE is fully convolutional, so it trains on random
crops of the full-size images, which is several times cheaper per step.

SD 1.x single files have no field for a latent scale: every loader multiplies latents by
0.18215. :func:`normalize_latents` therefore folds a per-channel affine map into the 1x1
``quant_conv`` / ``post_quant_conv`` so that ``0.18215 * mean`` has zero mean and unit
standard deviation per channel, while ``decode(encode(x))`` is unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from webui.models.vae import AutoencoderKL
from webui.train import data
from webui.train.checkpointing import step_generator


@dataclass(frozen=True)
class VAETrainConfig:
    steps: int = 2400
    batch_size: int = 16
    crop: int = 32
    image_size: int = 64
    lr: float = 2e-3
    warmup: int = 20
    kl_weight: float = 1e-6
    # Extra reconstruction weight on pixels that differ from the background (the shapes).
    shape_weight: float = 0.0
    bf16: bool = True
    seed: int = 0


def _bias(conv: torch.nn.Conv2d) -> torch.Tensor:
    """A convolution's bias, which the VAE's 1x1 convolutions always have (torch types it as optional)."""
    if conv.bias is None:
        raise ValueError(f"{conv} has no bias")
    return conv.bias


@torch.no_grad()
def start_nearly_deterministic(vae: AutoencoderKL, logvar: float = -10.0) -> None:
    """Start the posterior's log-variance at ``logvar`` (std 0.007) instead of 0.

    With a freshly initialised encoder the latent means are small, and unit-variance posterior
    noise would drown them: the decoder could learn nothing until the encoder had shrunk the
    variance. Starting almost deterministic lets the reconstruction improve from the first step;
    the KL term may still raise the variance later.
    """
    c = vae.config.embed_dim
    vae.quant_conv.weight[c:] *= 0.01
    _bias(vae.quant_conv)[c:] = logvar


def vae_loss(
    vae: AutoencoderKL,
    x: torch.Tensor,
    kl_weight: float,
    generator: torch.Generator,
    decoder_only: bool = False,
    weight: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Reconstruction (L1 + L2, per pixel) and KL(q(z|x) || N(0, I)) per latent element.

    With ``decoder_only`` the encoder runs without gradients: the latent space stays fixed.
    ``weight`` (B, 1, H, W) weights the pixels of the reconstruction loss (reported l1/l2 are unweighted).
    """
    with torch.set_grad_enabled(torch.is_grad_enabled() and not decoder_only):
        mean, logvar = vae.encode(x)
    noise = torch.randn(mean.shape, generator=generator).to(mean.device, mean.dtype)
    z = mean + torch.exp(0.5 * logvar) * noise
    recon = vae.decode(z).float()
    error = recon - x
    l1 = error.abs().mean()
    l2 = error.pow(2).mean()
    kl = 0.5 * (mean.float().pow(2) + logvar.float().exp() - 1.0 - logvar.float()).mean()
    if weight is None:
        reconstruction = l1 + l2
    else:
        reconstruction = ((error.abs() + error.pow(2)) * weight).mean() / weight.mean()
    return {"loss": reconstruction + kl_weight * kl, "l1": l1, "l2": l2, "kl": kl}


def shape_pixel_weights(images: np.ndarray, scenes: list[data.Scene], extra: float) -> np.ndarray:
    """(B, 1, H, W): 1 on the background, ``1 + extra`` where a pixel differs from the background colour."""
    backgrounds = np.array([data.COLOURS[s.background] for s in scenes], dtype=np.float32) / 127.5 - 1.0
    distance = np.abs(images - backgrounds[:, :, None, None]).max(axis=1, keepdims=True)
    return 1.0 + extra * (distance > 0.1).astype(np.float32)


def random_crops(images: np.ndarray, scenes: list[data.Scene], crop: int, rng: np.random.Generator) -> np.ndarray:
    """One ``crop`` x ``crop`` window per image, aligned to the VAE's 8-pixel grid.

    Three windows in four are placed around a shape (where the edges, the hard part, are); the
    rest anywhere.
    """
    size = images.shape[-1]
    if crop >= size:
        return images
    out = np.empty((*images.shape[:2], crop, crop), dtype=images.dtype)
    cells = (size - crop) // 8
    for i, (image, scene) in enumerate(zip(images, scenes, strict=True)):
        if rng.random() < 0.75:
            shape = scene.shapes[rng.integers(len(scene.shapes))]
            centre = np.array([shape.cx, shape.cy]) * size + rng.uniform(-0.6, 0.6, size=2) * shape.half * size
            x, y = np.clip(np.round((centre - crop / 2) / 8), 0, cells).astype(int) * 8
        else:
            x, y = rng.integers(0, cells + 1, size=2) * 8
        out[i] = image[:, y : y + crop, x : x + crop]
    return out


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of ``peak``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def train_vae_steps(
    vae: AutoencoderKL,
    optimizer: torch.optim.Optimizer,
    config: VAETrainConfig,
    start: int,
    device: torch.device,
    on_step: Callable[[int, dict[str, float]], None],
    *,
    decoder_only: bool = False,
) -> None:
    """Run steps ``start .. config.steps - 1``; ``on_step(step, losses)`` after each (checkpoints, progress).

    ``decoder_only`` fine-tunes ``post_quant_conv`` and the decoder on the frozen encoder's latents
    (as Stability AI's ft-MSE decoder for SD 1.x was made), so latents already used to train the
    UNet keep their meaning; the optimizer should then hold the decoder's parameters only.
    """
    phase = 4 if decoder_only else 1
    vae.train()
    for step in range(start, config.steps):
        rng = np.random.default_rng([config.seed, phase, step])
        images, scenes = data.sample_batch(rng, config.batch_size, config.image_size)
        crops = random_crops(images, scenes, config.crop, rng)
        x = torch.from_numpy(crops).to(device)
        weight = None
        if config.shape_weight:
            weight = torch.from_numpy(shape_pixel_weights(crops, scenes, config.shape_weight)).to(device)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config.steps, config.lr, config.warmup)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
            losses = vae_loss(vae, x, config.kl_weight, step_generator(config.seed, phase, step), decoder_only, weight)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], 1.0)
        optimizer.step()
        on_step(step, {k: float(v.detach()) for k, v in losses.items()})
    vae.eval()


def decoder_parameters(vae: AutoencoderKL) -> list[torch.nn.Parameter]:
    return [*vae.post_quant_conv.parameters(), *vae.decoder.parameters()]


@torch.no_grad()
def encode_images(vae: AutoencoderKL, images: np.ndarray, device: torch.device, batch_size: int = 64):
    """Posterior means and standard deviations of ``images`` (N, 3, H, W) in [-1, 1], on the CPU."""
    means, stds = [], []
    for i in range(0, len(images), batch_size):
        mean, logvar = vae.encode(torch.from_numpy(images[i : i + batch_size]).to(device))
        means.append(mean.float().cpu())
        stds.append(torch.exp(0.5 * logvar.float()).cpu())
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def normalize_latents(vae: AutoencoderKL, latents: torch.Tensor) -> None:
    """Fold ``z' = (z - m) / (s * scale_factor)`` into ``quant_conv`` and its inverse into ``post_quant_conv``.

    ``latents`` are posterior means (N, C, h, w) of typical images; ``m`` and ``s`` are their
    per-channel mean and standard deviation. Afterwards ``scale_factor * encode(x).mean`` has zero
    mean and unit variance per channel and ``decode(encode(x).mean)`` is unchanged.
    """
    c = latents.shape[1]
    m = latents.transpose(0, 1).reshape(c, -1).mean(dim=1).double()
    s = latents.transpose(0, 1).reshape(c, -1).std(dim=1).double()
    k = s * vae.config.scale_factor  # z = k * z' + m
    quant = vae.quant_conv
    w = quant.weight.double()
    b = _bias(quant).double()
    w[:c] /= k[:, None, None, None]
    b[:c] = (b[:c] - m) / k
    b[c:] -= 2.0 * torch.log(k)  # the log-variance of z' = z / k
    quant.weight.copy_(w.float())
    _bias(quant).copy_(b.float())
    post = vae.post_quant_conv
    w = post.weight.double()
    b = _bias(post).double() + (w[:, :, 0, 0] @ m)
    post.weight.copy_((w * k[None, :, None, None]).float())
    _bias(post).copy_(b.float())


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [-1, 1] (peak-to-peak range 2)."""
    mse = float((a.float().clamp(-1, 1) - b.float().clamp(-1, 1)).pow(2).mean())
    return 10.0 * math.log10(4.0 / max(mse, 1e-12))


@torch.no_grad()
def reconstruction_psnr(vae: AutoencoderKL, seed: int, count: int, device: torch.device, size: int = 128) -> float:
    """PSNR of ``decode(encode(x).mean)`` over ``count`` freshly generated images."""
    images, _ = data.sample_batch(np.random.default_rng([seed, 99]), count, size)
    x = torch.from_numpy(images).to(device)
    mean, _ = vae.encode(x)
    return psnr(vae.decode(mean), x)

"""The KL autoencoder that maps images to latents and back, named as CompVis' checkpoints.

A checkpoint's ``first_stage_model.*`` tensors load into :class:`AutoencoderKL` after the
prefix is stripped, with a strict ``load_state_dict`` (CompVis
``ldm/modules/diffusionmodules/model.py`` and ``ldm/models/autoencoder.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

GROUP_NORM_GROUPS = 32


@dataclass(frozen=True)
class VAEConfig:
    """Sizes of a VAE. The defaults are Stable Diffusion 1.x's (about 83.7M parameters)."""

    in_channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 4
    embed_dim: int = 4
    # Latents are multiplied by this after encoding so that they have roughly unit variance.
    scale_factor: float = 0.18215

    @property
    def downscale(self) -> int:
        """Image pixels per latent pixel along each side (8 for SD 1.x)."""
        return 2 ** (len(self.ch_mult) - 1)


def normalize(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(GROUP_NORM_GROUPS, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = normalize(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels, with 1x1 convolutions as projections."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = normalize(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        hn = self.norm(x)
        # (B, C, H, W) -> (B, 1, H*W, C); contiguous so that SDPA may pick a memory-efficient kernel
        # instead of materialising the (H*W)^2 attention matrix (1 GiB at a 1024 px decode).
        q, k, v = (t(hn).reshape(b, 1, c, h * w).transpose(2, 3).contiguous() for t in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj_out(out.transpose(2, 3).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Asymmetric padding as in CompVis: pad right and bottom only.
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class MidBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Level(nn.Module):
    """One resolution of the encoder or decoder: resnet blocks, then an optional resampler."""

    def __init__(self, blocks: list[ResnetBlock], resample: nn.Module | None, resample_name: str):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.resample_name = resample_name
        if resample is not None:
            self.add_module(resample_name, resample)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        resample = getattr(self, self.resample_name, None)
        return x if resample is None else resample(x)


class Encoder(nn.Module):
    def __init__(self, config: VAEConfig):
        super().__init__()
        ch, mult = config.ch, config.ch_mult
        self.conv_in = nn.Conv2d(config.in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        block_in = ch
        for level, m in enumerate(mult):
            blocks = []
            for _ in range(config.num_res_blocks):
                blocks.append(ResnetBlock(block_in, ch * m))
                block_in = ch * m
            last = level == len(mult) - 1
            self.down.append(Level(blocks, None if last else Downsample(block_in), "downsample"))
        self.mid = MidBlock(block_in)
        self.norm_out = normalize(block_in)
        # Mean and log-variance of the latent ("double_z").
        self.conv_out = nn.Conv2d(block_in, 2 * config.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.latent_part(self.image_part(x))

    # The two parts let tiled encoding (vae_tiling) tile only the image-resolution convolutions.
    def image_part(self, x: torch.Tensor) -> torch.Tensor:
        """Image -> features at latent resolution: ``conv_in`` and the down levels (convolutions only)."""
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)  # (B, C, H, W) -> (B, C', H/2, W/2) except at the last level
        return h

    def latent_part(self, h: torch.Tensor) -> torch.Tensor:
        """Features at latent resolution -> mean and log-variance: the mid block (with its attention) and out."""
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    def __init__(self, config: VAEConfig):
        super().__init__()
        ch, mult = config.ch, config.ch_mult
        block_in = ch * mult[-1]
        self.conv_in = nn.Conv2d(config.z_channels, block_in, 3, padding=1)
        self.mid = MidBlock(block_in)
        levels: list[Level] = []
        for level in reversed(range(len(mult))):
            blocks = []
            for _ in range(config.num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, ch * mult[level]))
                block_in = ch * mult[level]
            levels.insert(0, Level(blocks, Upsample(block_in) if level else None, "upsample"))
        # Indexed like CompVis: up.0 is the full-resolution level, run last.
        self.up = nn.ModuleList(levels)
        self.norm_out = normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, config.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.image_part(self.latent_part(z))

    # The two parts let tiled decoding (vae_tiling) tile only the image-resolution convolutions.
    def latent_part(self, z: torch.Tensor) -> torch.Tensor:
        """Latent -> features at latent resolution: ``conv_in`` and the mid block (with its attention)."""
        return self.mid(self.conv_in(z))

    def image_part(self, h: torch.Tensor) -> torch.Tensor:
        """Features at latent resolution -> image: the up levels and out (convolutions only)."""
        for level in reversed(self.up):
            h = level(h)  # (B, C, H, W) -> (B, C', 2H, 2W) except at up.0
        return self.conv_out(F.silu(self.norm_out(h)))


class AutoencoderKL(nn.Module):
    """Images in [-1, 1] <-> unscaled latents; :meth:`encode` returns mean and log-variance."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quant_conv = nn.Conv2d(2 * config.z_channels, 2 * config.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) image -> mean and log-variance, each (B, 4, H/8, W/8) for SD 1.x."""
        mean, logvar = self.quant_conv(self.encoder(x)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Unscaled latent -> (B, 3, H, W) image in about [-1, 1]."""
        return self.decoder(self.post_quant_conv(z))

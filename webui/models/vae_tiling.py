"""Tiled VAE decode and encode: large images in bounded memory (diffusers' ``AutoencoderKL.enable_tiling``).

The latent (decode) or the image (encode) is cut into overlapping square tiles, each tile goes through
the VAE on its own, and neighbouring results are cross-faded linearly over their overlap (a quarter of
a tile) before the non-overlapping parts are joined. Memory then grows with the tile, not the image:
an untiled 2048x2048 decode grows the process by 15 GB in float32, a tiled one by 2.3 GB (measured by
``bench/bench_vae_tiling.py``). The tiles and their blending are diffusers' (``whole_image=False`` equals
``enable_tiling()``).

Tiles see only their own pixels, so a tiled image is close to, not equal to, the untiled one. Two parts
of the VAE see the whole image: the mid block's attention and every GroupNorm (each tile would otherwise
normalise with its own mean and variance; on the bundled demo VAE that alone costs 20 dB of PSNR). By
default (``whole_image=True``) the latent-resolution part with the attention runs untiled (latent pixels
are 1/64 of the image's, so it stays small), and only the image-resolution convolutions are tiled, their
GroupNorms normalising with the statistics of one untiled pass over an overview (the input downscaled to
at most :data:`OVERVIEW_TILES` tiles a side, as multidiffusion-upscaler's Tiled VAE "fast mode"). The
overview is what is left to improve: at 1024 px on a random-weight SD VAE the tiled decode is 33.4 dB PSNR
from the untiled one with the 0.75x overview, 50.1 dB with exact statistics (an overview of the whole input).
``whole_image=False`` is exactly diffusers' ``enable_tiling()``.

When: ``--vae-tiling`` always tiles; by default (``auto``) an image tiles when it is larger than
:data:`AUTO_TILE_PIXELS` or when the untiled activations would not fit in the memory free on its device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from webui.models.vae import AutoencoderKL

TILING_MODES = ("auto", "on", "off")
AUTO_TILE_PIXELS = 1024 * 1024  # above this many image pixels, auto mode tiles
OVERLAP = 0.25  # diffusers' tile_overlap_factor
# The statistics pass decodes the overview untiled, so its side bounds the peak memory of a tiled decode:
# 1.5 tiles (768 px for SD 1.x) is 2.25 tiles' worth of activations, ~2.2 GB in float32 (3.9 KB per pixel
# measured on SD 1.x's VAE), where two tiles a side needed ~3.9 GB.
OVERVIEW_TILES = 1.5


@dataclass(frozen=True)
class TileSize:
    """A tile in image pixels (``sample``) and in latent pixels; diffusers: 512 and 64 for SD 1.x."""

    sample: int = 512
    downscale: int = 8

    @property
    def latent(self) -> int:
        return self.sample // self.downscale


def _blend_v(a: torch.Tensor, b: torch.Tensor, extent: int) -> torch.Tensor:
    """Cross-fade the bottom ``extent`` rows of ``a`` into the top rows of ``b`` (in place on ``b``)."""
    extent = min(a.shape[2], b.shape[2], extent)
    for y in range(extent):
        b[:, :, y, :] = a[:, :, -extent + y, :] * (1 - y / extent) + b[:, :, y, :] * (y / extent)
    return b


def _blend_h(a: torch.Tensor, b: torch.Tensor, extent: int) -> torch.Tensor:
    """Cross-fade the right ``extent`` columns of ``a`` into the left columns of ``b`` (in place on ``b``)."""
    extent = min(a.shape[3], b.shape[3], extent)
    for x in range(extent):
        b[:, :, :, x] = a[:, :, :, -extent + x] * (1 - x / extent) + b[:, :, :, x] * (x / extent)
    return b


def _tiles(x: torch.Tensor, tile_in: int) -> Iterator[list[torch.Tensor]]:
    """The rows of overlapping ``tile_in`` tiles of ``x``, starting every ``tile_in * 3/4`` pixels."""
    stride = int(tile_in * (1 - OVERLAP))
    for i in range(0, x.shape[2], stride):
        yield [x[:, :, i : i + tile_in, j : j + tile_in] for j in range(0, x.shape[3], stride)]


def _tiled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile_in: int, tile_out: int) -> torch.Tensor:
    """Apply ``fn`` (which scales sides by ``tile_out / tile_in``) tile by tile and blend the results.

    Tiles of ``tile_in`` start every ``tile_in * 3/4`` pixels; outputs overlap by ``tile_out / 4``
    pixels, are cross-faded there and cut to ``tile_out * 3/4``.
    """
    extent = int(tile_out * OVERLAP)
    limit = tile_out - extent
    rows = [[fn(tile) for tile in row] for row in _tiles(x, tile_in)]
    joined_rows = []
    for i, row in enumerate(rows):
        joined = []
        for j, tile in enumerate(row):
            if i > 0:
                tile = _blend_v(rows[i - 1][j], tile, extent)
            if j > 0:
                tile = _blend_h(row[j - 1], tile, extent)
            joined.append(tile[:, :, :limit, :limit])
        joined_rows.append(torch.cat(joined, dim=3))
    return torch.cat(joined_rows, dim=2)


class _SharedStatsGroupNorm(nn.Module):
    """Wraps a GroupNorm: records its input's per-group mean and variance, or normalises with recorded ones."""

    def __init__(self, norm: nn.GroupNorm):
        super().__init__()
        self.norm = norm
        self.recording = True
        self.stats: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm, b = self.norm, x.shape[0]
        groups = x.float().reshape(b, norm.num_groups, -1)
        if self.recording or self.stats is None:
            self.stats = (groups.mean(-1), groups.var(-1, unbiased=False))
            return norm(x)
        mean, var = self.stats
        y = ((groups - mean[..., None]) * torch.rsqrt(var[..., None] + norm.eps)).reshape(x.shape).to(x.dtype)
        if norm.affine:
            y = y * norm.weight[None, :, None, None] + norm.bias[None, :, None, None]
        return y


@contextmanager
def _whole_image_norms(
    module: nn.Module, x: torch.Tensor, tile_in: int, run: Callable[[torch.Tensor], object]
) -> Iterator[None]:
    """Inside, every GroupNorm of ``module`` normalises with the statistics of ``run`` on an overview of ``x``.

    Only an overview: a pass that measures the statistics over all tiles would have to normalise its
    tiles with an estimate, and its figures are those of that estimate's activations, not of the final
    ones (tried: 21 dB PSNR at 1024 px where the overview alone gave 33). The GroupNorms are restored on exit.
    """
    swapped: list[tuple[nn.Module, str, _SharedStatsGroupNorm]] = []
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.GroupNorm):
                wrapper = _SharedStatsGroupNorm(child)
                setattr(parent, name, wrapper)
                swapped.append((parent, name, wrapper))
    try:
        run(_overview(x, tile_in))
        for _, _, wrapper in swapped:
            wrapper.recording = False
        yield
    finally:
        for parent, name, wrapper in swapped:
            setattr(parent, name, wrapper.norm)


def _overview(x: torch.Tensor, tile: int) -> torch.Tensor:
    """``x`` downscaled (area average) so that each side is at most :data:`OVERVIEW_TILES` tiles; the statistics
    pass' input."""
    scale = min(1.0, OVERVIEW_TILES * tile / max(x.shape[2], x.shape[3]))
    if scale == 1.0:
        return x
    size = (max(1, round(x.shape[2] * scale)), max(1, round(x.shape[3] * scale)))
    return F.interpolate(x.float(), size=size, mode="area").to(x.dtype)


def tiled_decode(
    vae: AutoencoderKL, z: torch.Tensor, tile: TileSize | None = None, *, whole_image: bool = True
) -> torch.Tensor:
    """``vae.decode(z)`` tile by tile: unscaled latent (B, 4, h, w) -> image (B, 3, 8h, 8w).

    ``whole_image`` (default): the latent-resolution part (``conv_in`` and the mid block, whose attention then
    sees the whole image, as untiled) runs untiled, and the tiles' GroupNorms use the whole (downscaled)
    image's statistics. ``False``: every tile alone through the whole decoder, exactly diffusers' tiling.
    """
    tile = tile or TileSize(downscale=vae.config.downscale)
    if z.shape[2] <= tile.latent and z.shape[3] <= tile.latent:
        return vae.decode(z)
    if not whole_image:
        return _tiled(lambda t: vae.decoder(vae.post_quant_conv(t)), z, tile.latent, tile.sample)
    # Latent pixels are 1/64 of the image's: this part is small even for a 2048 px image (~1 GB in float32).
    features = vae.decoder.latent_part(vae.post_quant_conv(z))
    to_image = vae.decoder.image_part
    with _whole_image_norms(vae.decoder, features, tile.latent, to_image):
        return _tiled(to_image, features, tile.latent, tile.sample)


def tiled_encode(
    vae: AutoencoderKL, x: torch.Tensor, tile: TileSize | None = None, *, whole_image: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """``vae.encode(x)`` tile by tile: image (B, 3, H, W) -> mean and log-variance (B, 4, H/8, W/8).

    ``whole_image`` as in :func:`tiled_decode`: only the image-resolution part is tiled (its GroupNorms with
    the whole image's statistics), the mid block with its attention runs on the whole latent-resolution features.
    """
    tile = tile or TileSize(downscale=vae.config.downscale)
    if x.shape[2] <= tile.sample and x.shape[3] <= tile.sample:
        return vae.encode(x)
    if whole_image:
        to_features = vae.encoder.image_part
        with _whole_image_norms(vae.encoder, x, tile.sample, to_features):
            features = _tiled(to_features, x, tile.sample, tile.latent)
        moments = vae.quant_conv(vae.encoder.latent_part(features))
    else:
        moments = _tiled(lambda t: vae.quant_conv(vae.encoder(t)), x, tile.sample, tile.latent)
    mean, logvar = moments.chunk(2, dim=1)
    return mean, logvar.clamp(-30.0, 20.0)


def untiled_bytes(vae: AutoencoderKL, height: int, width: int, dtype: torch.dtype) -> int:
    """About the activation memory of an untiled decode of a ``height`` x ``width`` image.

    The full-resolution level of the decoder holds about eight ``ch``-channel tensors at once (input,
    normalised, activated, convolved, residual, and the allocator's slack): SD 1.x's VAE grows the process by
    3.9 KB per pixel in float32 (``bench/bench_vae_tiling.py``'s child at 512 px), 8 x 128 x 4 = 4.1 KB.
    """
    element = torch.finfo(dtype).bits // 8
    return 8 * vae.config.ch * element * height * width


def free_bytes(device: torch.device) -> int | None:
    """Memory free for new tensors on ``device``: CUDA's free memory, the OS's MemAvailable for the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "cpu":
        try:
            with open("/proc/meminfo", encoding="ascii") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def should_tile(
    mode: str, vae: AutoencoderKL, height: int, width: int, dtype: torch.dtype, device: torch.device
) -> bool:
    """Whether to tile an image of ``height`` x ``width`` pixels under ``--vae-tiling`` ``mode``."""
    if mode not in TILING_MODES:
        raise ValueError(f"unknown VAE tiling mode {mode!r}; choose one of {', '.join(TILING_MODES)}")
    if mode != "auto":
        return mode == "on"
    if height * width > AUTO_TILE_PIXELS:
        return True
    free = free_bytes(device)
    return free is not None and untiled_bytes(vae, height, width, dtype) > free

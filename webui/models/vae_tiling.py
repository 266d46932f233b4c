"""VAE decode and encode of large images in bounded memory, and when to use them (``--vae-tiling``).

By default (``whole_image=True``) nothing is approximated: the latent-resolution part of the VAE, which holds
the mid block's attention, runs untiled (latent pixels are 1/64 of the image's, so it stays small), and the
image-resolution layers run one at a time, in bands, with each GroupNorm normalising by its whole input's
statistics (:mod:`webui.models.vae_bands`). The image equals the untiled one up to float rounding, and memory
grows with a band, not the image: an untiled 2048x2048 decode grows the process by 15 GB in float32, the banded
one by 1.3 GB (``bench/bench_vae_tiling.py``), keeping the layers' whole activations in temporary files.

``whole_image=False`` is diffusers' ``AutoencoderKL.enable_tiling()`` exactly: overlapping square tiles, each
through the whole VAE alone, cross-faded linearly over their overlap (a quarter of a tile). Each tile then
normalises with its own statistics and attends only to itself, which costs 20 dB of PSNR on the bundled demo
VAE; it is kept as the reference that users of diffusers know.

When: ``--vae-tiling on`` always tiles; by default (``auto``) an image tiles when it is larger than
:data:`AUTO_TILE_PIXELS` or when the untiled activations would not fit in the memory free on its device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from webui.models.vae import AutoencoderKL
from webui.models.vae_bands import BAND_BYTES, ReportFraction, decoder_image_part, encoder_image_part

TILING_MODES = ("auto", "on", "off")
AUTO_TILE_PIXELS = 1024 * 1024  # above this many image pixels, auto mode tiles
OVERLAP = 0.25  # diffusers' tile_overlap_factor


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


def _tiled(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    tile_in: int,
    tile_out: int,
    report: ReportFraction | None = None,
) -> torch.Tensor:
    """Apply ``fn`` (which scales sides by ``tile_out / tile_in``) tile by tile and blend the results.

    Tiles of ``tile_in`` start every ``tile_in * 3/4`` pixels; outputs overlap by ``tile_out / 4``
    pixels, are cross-faded there and cut to ``tile_out * 3/4``. ``report`` gets the fraction of tiles done.
    """
    extent = int(tile_out * OVERLAP)
    limit = tile_out - extent
    tile_rows = list(_tiles(x, tile_in))
    total, done = sum(map(len, tile_rows)), 0
    rows: list[list[torch.Tensor]] = []
    for tile_row in tile_rows:
        rows.append([])
        for tile in tile_row:
            rows[-1].append(fn(tile))
            done += 1
            if report is not None:
                report(done / total)
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


def tiled_decode(
    vae: AutoencoderKL,
    z: torch.Tensor,
    tile: TileSize | None = None,
    *,
    whole_image: bool = True,
    band_bytes: int = BAND_BYTES,
    report: ReportFraction | None = None,
) -> torch.Tensor:
    """``vae.decode(z)`` in bounded memory: unscaled latent (B, 4, h, w) -> image (B, 3, 8h, 8w).

    ``whole_image`` (default): the latent-resolution part (``conv_in`` and the mid block with its attention) runs
    untiled, the image-resolution part layer by layer in bands of ``band_bytes`` (:mod:`webui.models.vae_bands`):
    the untiled image up to float rounding. ``False``: every ``tile`` alone through the whole decoder, blended,
    exactly diffusers' tiling. A latent no larger than one tile is decoded untiled either way (and reports
    nothing); otherwise ``report`` gets the fraction of the image-resolution work (or of the tiles) done.
    """
    tile = tile or TileSize(downscale=vae.config.downscale)
    if z.shape[2] <= tile.latent and z.shape[3] <= tile.latent:
        return vae.decode(z)
    if not whole_image:
        return _tiled(lambda t: vae.decoder(vae.post_quant_conv(t)), z, tile.latent, tile.sample, report)
    # Latent pixels are 1/64 of the image's: this part is small even for a 2048 px image (~1 GB in float32).
    features = vae.decoder.latent_part(vae.post_quant_conv(z))
    return decoder_image_part(vae.decoder, features, band_bytes, report)


def tiled_encode(
    vae: AutoencoderKL,
    x: torch.Tensor,
    tile: TileSize | None = None,
    *,
    whole_image: bool = True,
    band_bytes: int = BAND_BYTES,
    report: ReportFraction | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``vae.encode(x)`` in bounded memory: image (B, 3, H, W) -> mean and log-variance (B, 4, H/8, W/8).

    ``whole_image`` as in :func:`tiled_decode`: the image-resolution part runs layer by layer in bands, the mid
    block with its attention on the whole latent-resolution features; ``report`` as there.
    """
    tile = tile or TileSize(downscale=vae.config.downscale)
    if x.shape[2] <= tile.sample and x.shape[3] <= tile.sample:
        return vae.encode(x)
    if whole_image:
        features = encoder_image_part(vae.encoder, x, band_bytes, report)
        moments = vae.quant_conv(vae.encoder.latent_part(features))
    else:
        moments = _tiled(lambda t: vae.quant_conv(vae.encoder(t)), x, tile.sample, tile.latent, report)
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

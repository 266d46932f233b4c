"""Run an image model on overlapping tiles, so that memory stays bounded whatever the image size.

Each tile of ``tile`` x ``tile`` input pixels is cut out with ``overlap`` pixels of context on every side that
the image has, run through the model, and only its own (context-free) part of the output is kept. Where the
model's receptive field fits in the context, the tiled result equals the untiled one; beyond it the seams are
small. The result is assembled on the CPU, one tile at a time, so the device holds one tile's activations.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from webui.upscalers.base import CancelCheck


class UpscaleCancelled(RuntimeError):
    """The cancel check asked to stop between two tiles."""


def tile_origins(size: int, tile: int) -> list[int]:
    """Start of every tile along one side of ``size`` pixels."""
    return list(range(0, size, tile)) if size > tile else [0]


def tiled_apply(
    model: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    *,
    tile: int,
    overlap: int,
    cancel: CancelCheck | None = None,
) -> torch.Tensor:
    """``model(image)`` computed tile by tile.

    Args:
        model: (1, C, h, w) -> (1, C', h * s, w * s) for an integer factor ``s``, on the tensor's device.
        image: (1, C, H, W).
        tile: side of a tile in input pixels; 0 runs the whole image at once.
        overlap: context in input pixels added around each tile (cut off again after the model).
        cancel: checked before every tile; True raises :class:`UpscaleCancelled`.

    Returns:
        (1, C', H * s, W * s) float32 on the CPU.
    """
    _, _, height, width = image.shape
    if tile <= 0 or (height <= tile and width <= tile):
        if cancel is not None and cancel():
            raise UpscaleCancelled("upscaling cancelled")
        return model(image).float().cpu()
    out: torch.Tensor | None = None
    scale = 0
    for y0 in tile_origins(height, tile):
        for x0 in tile_origins(width, tile):
            if cancel is not None and cancel():
                raise UpscaleCancelled("upscaling cancelled")
            y1, x1 = min(y0 + tile, height), min(x0 + tile, width)
            ya, xa = max(y0 - overlap, 0), max(x0 - overlap, 0)
            yb, xb = min(y1 + overlap, height), min(x1 + overlap, width)
            result = model(image[:, :, ya:yb, xa:xb])
            if out is None:
                scale = result.shape[-1] // (xb - xa)
                if scale < 1 or result.shape[-2] != (yb - ya) * scale or result.shape[-1] != (xb - xa) * scale:
                    raise ValueError(f"the model gave {tuple(result.shape)} for a {yb - ya}x{xb - xa} input")
                out = torch.empty((1, result.shape[1], height * scale, width * scale), dtype=torch.float32)
            keep = result[:, :, (y0 - ya) * scale : (y1 - ya) * scale, (x0 - xa) * scale : (x1 - xa) * scale]
            out[:, :, y0 * scale : y1 * scale, x0 * scale : x1 * scale] = keep.float().cpu()
    assert out is not None
    return out

"""Token merging for Stable Diffusion (ToMe for SD; Bolya & Hoffman 2023, arXiv 2303.17604).

Before a transformer block's self-attention the image tokens of the highest-resolution levels are merged:
the tokens are split into a destination set (one token of every ``sy x sx`` cell) and a source set, each
source token is paired with its most similar destination token (cosine similarity, bipartite soft matching),
and the ``r = int(N * ratio)`` best-matched sources are averaged into their destinations. The attention then
sees ``N - r`` tokens, and its output is copied back to every token that was merged ("unmerge"). This is the
method of the ``tomesd`` package (its defaults: stride 2x2, max_downsample 1, self-attention only); the test
``tests/test_token_merging.py`` checks that a UNet here equals a diffusers UNet patched by ``tomesd``.

The merge is scoped: :func:`token_merging` sets it on the UNet's transformer blocks for the ``with`` block
only, so that jobs with different ratios never share it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

Merge = Callable[[torch.Tensor], torch.Tensor]
# (merge, unmerge) for the self-attention, the cross-attention and the feed-forward of one block call.
BlockMerges = tuple[tuple[Merge, Merge], tuple[Merge, Merge], tuple[Merge, Merge]]

MAX_RATIO = 0.75  # 1 - 1/(sx*sy): every source token of a 2x2 cell merged


def keep(x: torch.Tensor) -> torch.Tensor:
    """No merge: the tensor itself (so that a block without merging computes exactly what it did before)."""
    return x


NO_MERGE: BlockMerges = ((keep, keep), (keep, keep), (keep, keep))


@dataclass(frozen=True)
class TokenMerging:
    """ToMe's settings, named and defaulted as ``tomesd.apply_patch``'s except ``use_rand``.

    ``use_rand`` False (AUTOMATIC1111 turns it off: random destinations "can cause issues with some samplers")
    puts every cell's destination at its top-left token; True draws it per cell from the generator given to
    :func:`token_merging`, for batches of even size only (a CFG batch [uncond; cond]), as ``tomesd``.
    """

    ratio: float
    max_downsample: int = 1
    sx: int = 2
    sy: int = 2
    use_rand: bool = False
    merge_attn: bool = True
    merge_crossattn: bool = False
    merge_mlp: bool = False


def bipartite_soft_matching_2d(
    metric: torch.Tensor, w: int, h: int, sx: int, sy: int, r: int, generator: torch.Generator | None = None
) -> tuple[Merge, Merge]:
    """Merge and unmerge functions for tokens ``metric`` (B, N, C) of an ``h x w`` image, removing ``r`` tokens.

    Destinations: one token of each ``sy x sx`` cell (the first, or one drawn by ``generator``); tokens of a
    partial cell at the right or bottom edge are sources. Each source's best destination is its most
    cosine-similar one; the ``r`` sources with the highest such similarity are averaged into it.
    """
    b, n, _ = metric.shape
    if r <= 0:
        return keep, keep
    hsy, wsx = h // sy, w // sx
    with torch.no_grad():
        if generator is None:
            pick = torch.zeros(hsy, wsx, 1, dtype=torch.int64)
        else:
            pick = torch.randint(sy * sx, size=(hsy, wsx, 1), device=generator.device, generator=generator)
        pick = pick.to(metric.device)[..., 0]
        # (hsy, wsx) cell choice -> (h, w) map of destination tokens
        rows = torch.arange(hsy, device=metric.device)[:, None] * sy + pick // sx
        cols = torch.arange(wsx, device=metric.device)[None, :] * sx + pick % sx
        is_dst = torch.zeros(h, w, dtype=torch.bool, device=metric.device)
        is_dst[rows, cols] = True
        is_dst = is_dst.flatten()
        dst_pos = is_dst.nonzero()[:, 0]  # ascending token indices
        src_pos = (~is_dst).nonzero()[:, 0]

        def split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x[:, src_pos], x[:, dst_pos]

        unit = metric / metric.norm(dim=-1, keepdim=True)
        a, bb = split(unit)
        similarity = a @ bb.transpose(-1, -2)  # (B, sources, destinations)
        r = min(a.shape[1], r)
        best, best_dst = similarity.max(dim=-1)
        order = best.argsort(dim=-1, descending=True)[..., None]  # (B, sources, 1), most similar first
        unmerged, merged = order[:, r:], order[:, :r]
        merged_dst = best_dst[..., None].gather(1, merged)

    def merge(x: torch.Tensor) -> torch.Tensor:
        src, dst = split(x)
        c = x.shape[-1]
        kept = src.gather(1, unmerged.expand(-1, -1, c))
        moved = src.gather(1, merged.expand(-1, -1, c))
        dst = dst.scatter_reduce(1, merged_dst.expand(-1, -1, c), moved, reduce="mean")
        return torch.cat([kept, dst], dim=1)

    def unmerge(x: torch.Tensor) -> torch.Tensor:
        n_kept = unmerged.shape[1]
        kept, dst = x[:, :n_kept], x[:, n_kept:]
        c = x.shape[-1]
        out = torch.zeros(b, n, c, device=x.device, dtype=x.dtype)
        out[:, dst_pos] = dst
        src_index = src_pos.expand(b, -1)[..., None]  # (B, sources, 1) token index of each source
        out.scatter_(1, src_index.gather(1, unmerged).expand(-1, -1, c), kept)
        out.scatter_(1, src_index.gather(1, merged).expand(-1, -1, c), dst.gather(1, merged_dst.expand(-1, -1, c)))
        return out

    return merge, unmerge


def block_merges(
    x: torch.Tensor, latent_size: tuple[int, int], settings: TokenMerging, generator: torch.Generator | None
) -> BlockMerges:
    """What one transformer block merges for tokens ``x`` (B, N, C) of a UNet call on a latent of ``latent_size``."""
    height, width = latent_size
    downsample = int(math.ceil(math.sqrt(height * width // x.shape[1])))
    if downsample > settings.max_downsample:
        return NO_MERGE
    w, h = int(math.ceil(width / downsample)), int(math.ceil(height / downsample))
    use_rand = settings.use_rand and x.shape[0] % 2 == 0  # an odd batch cannot hold [uncond; cond] pairs
    pair = bipartite_soft_matching_2d(
        x, w, h, settings.sx, settings.sy, int(x.shape[1] * settings.ratio), generator if use_rand else None
    )
    return (
        pair if settings.merge_attn else (keep, keep),
        pair if settings.merge_crossattn else (keep, keep),
        pair if settings.merge_mlp else (keep, keep),
    )


@contextmanager
def token_merging(unet: nn.Module, settings: TokenMerging, generator: torch.Generator | None = None) -> Iterator[None]:
    """While inside, the transformer blocks of ``unet`` merge tokens as ``settings`` say (ratio 0: nothing).

    ``generator`` draws the random destinations when ``settings.use_rand``; None draws from a fresh
    generator seeded 0, so that a job never depends on the process's global random state.
    """
    if not 0.0 <= settings.ratio <= MAX_RATIO:
        raise ValueError(f"token merging ratio must be in [0, {MAX_RATIO}], got {settings.ratio}")
    if settings.ratio == 0:
        yield
        return
    if settings.use_rand and generator is None:
        generator = torch.Generator().manual_seed(0)
    from webui.models.unet import BasicTransformerBlock  # unet.py imports this module

    blocks = [m for m in unet.modules() if isinstance(m, BasicTransformerBlock)]
    latent_size: list[tuple[int, int]] = []

    def remember_size(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        latent_size[:] = [(int(args[0].shape[-2]), int(args[0].shape[-1]))]

    def merges(x: torch.Tensor) -> BlockMerges:
        return block_merges(x, latent_size[0], settings, generator)

    hook = unet.register_forward_pre_hook(remember_size)
    for block in blocks:
        block.token_merge = merges
    try:
        yield
    finally:
        hook.remove()
        for block in blocks:
            block.token_merge = None

"""DeepCache: reuse the UNet's deep features across sampling steps (Ma, Fang & Wang 2023, arXiv 2312.00858).

Adjacent denoising steps change the high-level (deep) features of the UNet very little. Every
``interval``-th UNet call runs the whole network and keeps the input of the output block where the shallow
branch ``branch`` joins; the calls in between run only that branch, the first ``branch + 1`` input blocks and
the last ``branch + 1`` output blocks, and feed the kept deep features in where the skipped blocks would have.
``branch`` is the DeepCache package's ``cache_branch_id`` (for SD 1.x, ``3 * block + layer`` of the diffusers
UNet: 0 is the shallowest branch, the fastest and the farthest from the exact result); the test
``tests/test_deep_cache.py`` checks that our UNet equals a diffusers UNet with ``DeepCacheSDHelper``.

The interval counts UNet calls of one sampling pass (one per step for Euler, DDIM, DPM++ 2M and the other
one-call samplers; two per step for Heun and DPM2). A call on another shape, or at a timestep not below the
previous one (a new pass, a restart), is always a full one: cached features are never used across passes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from webui.models.unet import UNetModel


@dataclass(frozen=True)
class DeepCache:
    """``interval`` 1 is off (every call full); ``branch`` the shallow branch that runs in between."""

    interval: int = 1
    branch: int = 0


@dataclass
class FeatureCache:
    """The state of one sampling pass: the deep features of the last full call, and when that was."""

    settings: DeepCache
    deep: torch.Tensor | None = None
    calls_since_full: int = 0
    last_timestep: torch.Tensor | None = None
    full_calls: int = 0
    cached_calls: int = 0
    _shape: tuple[int, ...] = field(default=())

    def _is_full(self, x: torch.Tensor, timesteps: torch.Tensor) -> bool:
        new_pass = (
            self.deep is None
            or tuple(x.shape) != self._shape
            or self.last_timestep is None
            or bool((timesteps >= self.last_timestep).any())
        )
        self.last_timestep, self._shape = timesteps.detach().clone(), tuple(x.shape)
        if new_pass or self.calls_since_full + 1 >= self.settings.interval:
            self.calls_since_full = 0
            return True
        self.calls_since_full += 1
        return False

    def run(
        self, unet: UNetModel, x: torch.Tensor, timesteps: torch.Tensor, emb: torch.Tensor, context: torch.Tensor
    ) -> torch.Tensor:
        """``unet``'s forward after the embeddings: all blocks, or the shallow branch on the cached features."""
        full = self._is_full(x, timesteps)
        shallow = self.settings.branch + 1  # input blocks (and output blocks) of the branch
        n_out = len(unet.output_blocks)
        skips = []
        h = x
        for block in unet.input_blocks if full else unet.input_blocks[:shallow]:
            h = block(h, emb, context)
            skips.append(h)
        if full:
            h = unet.middle_block(h, emb, context)
            for block in unet.output_blocks[: n_out - shallow]:
                h = unet.output_block(block, h, skips, emb, context)
            self.deep = h
            self.full_calls += 1
        else:
            assert self.deep is not None
            h = self.deep
            self.cached_calls += 1
        for block in unet.output_blocks[n_out - shallow :]:
            h = unet.output_block(block, h, skips, emb, context)
        return unet.out(h)


@contextmanager
def deep_cache(unet: UNetModel, settings: DeepCache) -> Iterator[FeatureCache | None]:
    """While inside, ``unet`` reuses its deep features as ``settings`` say (interval 1: nothing changes).

    Yields the pass's :class:`FeatureCache` (None when off); enter it once per sampling pass.
    """
    n_in = len(unet.input_blocks)
    if settings.interval < 1:
        raise ValueError(f"DeepCache interval must be 1 (off) or more, got {settings.interval}")
    if not 0 <= settings.branch <= n_in - 1:
        raise ValueError(f"DeepCache branch must be in [0, {n_in - 1}] for this UNet, got {settings.branch}")
    if settings.interval == 1:
        yield None
        return
    cache = FeatureCache(settings)
    unet.feature_cache = cache
    try:
        yield cache
    finally:
        unet.feature_cache = None

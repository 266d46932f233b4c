"""The latent-diffusion UNet, with module names equal to the CompVis checkpoint keys.

A checkpoint's ``model.diffusion_model.*`` tensors load into :class:`UNetModel` after the
prefix is stripped, with a strict ``load_state_dict``: every layer here is named and
positioned as in CompVis' ``ldm/modules/diffusionmodules/openaimodel.py`` (Rombach et al.
2022, arXiv 2112.10752). ``nn.Identity`` stands where the original had a dropout so that
``nn.Sequential`` indices line up with the checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from webui.models.token_merging import NO_MERGE, BlockMerges

if TYPE_CHECKING:
    from webui.models.deep_cache import FeatureCache

GROUP_NORM_GROUPS = 32
# Attention scores (batch x heads x queries x keys) computed in one go; above this the queries are split.
# At 1024 px on the demo model one self-attention holds 2 x 8 x 16384^2 = 2^32 scores: a single kernel
# call of about 20 s on a CPU that nothing (an interrupt included) can stop, and 16 GiB if materialised.
ATTENTION_CHUNK_SCORES = 2**27


@dataclass(frozen=True)
class UNetConfig:
    """Sizes of a UNet. The defaults are Stable Diffusion 1.x's (about 859.5M parameters)."""

    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    # Downsampling factors (1, 2, 4, ...) at which a transformer follows each resblock.
    attention_resolutions: tuple[int, ...] = (4, 2, 1)
    num_heads: int = 8
    context_dim: int = 768

    @property
    def time_embed_dim(self) -> int:
        return self.model_channels * 4


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, cosines first as in CompVis."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def group_norm(channels: int, eps: float = 1e-5) -> nn.GroupNorm:
    return nn.GroupNorm(GROUP_NORM_GROUPS, channels, eps=eps)


class ResBlock(nn.Module):
    """Two 3x3 convolutions with the timestep embedding added in between."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int):
        super().__init__()
        self.in_layers = nn.Sequential(group_norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            group_norm(out_channels), nn.SiLU(), nn.Identity(), nn.Conv2d(out_channels, out_channels, 3, padding=1)
        )
        self.skip_connection = nn.Identity() if channels == out_channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb)[:, :, None, None].to(h.dtype)
        return self.skip_connection(x) + self.out_layers(h)


class Attention(nn.Module):
    """Multi-head attention; self-attention when ``context`` is None."""

    def __init__(self, query_dim: int, context_dim: int, heads: int, dim_head: int):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Identity())

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        b, n_keys = x.shape[0], context.shape[1]
        k, v = (self._heads(t) for t in (self.to_k(context), self.to_v(context)))
        # Queries in chunks of at most ATTENTION_CHUNK_SCORES scores (two chunks at 512 px on SD 1.x):
        # each query's row is independent, and every chunk calls to_q and to_out again, so that forward
        # hooks (the pipeline's interrupt checks) run between chunks of a long attention.
        chunk = max(1, ATTENTION_CHUNK_SCORES // (b * self.heads * n_keys))
        outs = []
        for x_chunk in x.split(chunk, dim=1):
            out = F.scaled_dot_product_attention(self._heads(self.to_q(x_chunk)), k, v)
            outs.append(self.to_out(out.transpose(1, 2).reshape(b, x_chunk.shape[1], -1)))
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        """(B, N, heads*d) -> (B, heads, N, d)."""
        return t.view(t.shape[0], -1, self.heads, t.shape[-1] // self.heads).transpose(1, 2)


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Identity(), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int):
        super().__init__()
        self.attn1 = Attention(dim, dim, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = Attention(dim, context_dim, heads, dim_head)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        # Token merging (issue 19, webui/models/token_merging.py) sets this for one job only: tokens ->
        # the (merge, unmerge) pairs of the self-attention, the cross-attention and the feed-forward.
        self.token_merge: Callable[[torch.Tensor], BlockMerges] | None = None

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        (m_a, u_a), (m_c, u_c), (m_m, u_m) = NO_MERGE if self.token_merge is None else self.token_merge(x)
        x = x + u_a(self.attn1(m_a(self.norm1(x))))
        x = x + u_c(self.attn2(m_c(self.norm2(x)), context))
        return x + u_m(self.ff(m_m(self.norm3(x))))


class SpatialTransformer(nn.Module):
    """Image features attend to themselves and to the text; 1x1 conv projections as in SD 1.x."""

    def __init__(self, channels: int, heads: int, context_dim: int):
        super().__init__()
        self.norm = group_norm(channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(channels, heads, channels // heads, context_dim)]
        )
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, H*W, C)
        for block in self.transformer_blocks:
            tokens = block(tokens, context)
        return x + self.proj_out(tokens.transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        # ``size``: the next skip connection's, when a side was odd on the way down (diffusers' upsample_size).
        if size is None:
            return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class TimestepEmbedSequential(nn.Sequential):
    """Routes the timestep embedding to resblocks and the text context to transformers."""

    def forward(  # type: ignore[override]  # nn.Sequential.forward takes one input; blocks here route three
        self,
        x: torch.Tensor,
        emb: torch.Tensor,
        context: torch.Tensor,
        upsample_size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, Upsample):
                x = layer(x, upsample_size)
            else:
                x = layer(x)
        return x


class UNetModel(nn.Module):
    """Predicts the noise ``eps`` in a noisy latent, given the timestep and the text context."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        mc, ted, heads, ctx = config.model_channels, config.time_embed_dim, config.num_heads, config.context_dim
        self.time_embed = nn.Sequential(nn.Linear(mc, ted), nn.SiLU(), nn.Linear(ted, ted))

        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(config.in_channels, mc, 3, padding=1))])
        skip_channels = [mc]
        ch, ds = mc, 1
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, ted, mult * mc)]
                ch = mult * mc
                if ds in config.attention_resolutions:
                    layers.append(SpatialTransformer(ch, heads, ctx))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(config.channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))  # (B, C, H, W) -> (B, C, H/2, W/2)
                skip_channels.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(
            ResBlock(ch, ted, ch), SpatialTransformer(ch, heads, ctx), ResBlock(ch, ted, ch)
        )

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), ted, mult * mc)]
                ch = mult * mc
                if ds in config.attention_resolutions:
                    layers.append(SpatialTransformer(ch, heads, ctx))
                if level and i == config.num_res_blocks:
                    layers.append(Upsample(ch))  # (B, C, H, W) -> (B, C, 2H, 2W)
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        # CompVis writes model_channels here, which equals ch whenever channel_mult[0] == 1 (all SD configs).
        self.out = nn.Sequential(group_norm(ch), nn.SiLU(), nn.Conv2d(ch, config.out_channels, 3, padding=1))
        # DeepCache (issue 19, webui/models/deep_cache.py) sets this for one sampling pass only: it runs the
        # blocks instead of forward's loop, reusing the deep features between full steps.
        self.feature_cache: FeatureCache | None = None

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """``x`` (B, C, H, W) latent, ``timesteps`` (B,) or scalar, ``context`` (B, T, context_dim)."""
        timesteps = timesteps.reshape(-1).expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels).to(x.dtype))
        context = context.to(x.dtype)
        if self.feature_cache is not None:
            return self.feature_cache.run(self, x, timesteps, emb, context)
        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb, context)
            skips.append(h)
        h = self.middle_block(h, emb, context)
        for block in self.output_blocks:
            h = self.output_block(block, h, skips, emb, context)
        return self.out(h)

    def output_block(
        self, block: nn.Module, h: torch.Tensor, skips: list[torch.Tensor], emb: torch.Tensor, context: torch.Tensor
    ) -> torch.Tensor:
        """One output block on ``h`` and the last of ``skips`` (popped)."""
        h = torch.cat([h, skips.pop()], dim=1)
        # Latent sides that are not multiples of 2^levels (e.g. 72 px images): upsample to the next skip's size.
        size = tuple(skips[-1].shape[-2:]) if skips else None
        return block(h, emb, context, None if size == (2 * h.shape[-2], 2 * h.shape[-1]) else size)

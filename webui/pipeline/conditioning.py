"""Prompt -> CLIP conditioning, with AUTOMATIC1111's weighting and chunking.

Each 77-token chunk is encoded on its own; the chunks are concatenated along the sequence
axis, so a 200-token prompt gives a (1, 3 * 77, D) context. Weights multiply the token
embeddings, then the whole chunk is rescaled so that its mean equals the unweighted mean
(AUTOMATIC1111's ``FrozenCLIPEmbedderWithCustomWordsBase.process_tokens``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from webui.pipeline.prompts import PromptChunk, TokenIds, chunk_prompt, pad_chunks


class PromptEncoder(Protocol):
    """What conditioning needs from :class:`webui.models.text_encoder.TextEncoder`."""

    chunk_length: int

    @property
    def bos_id(self) -> int: ...

    @property
    def eos_id(self) -> int: ...

    @property
    def pad_id(self) -> int: ...

    def tokenize(self, text: str) -> list[int]: ...

    def encode_ids(self, ids: torch.Tensor, clip_skip: int = 1) -> torch.Tensor: ...


@dataclass
class Conditioning:
    """Context tensors for classifier-free guidance, each (1, 77 * chunks, D), same chunk count."""

    cond: torch.Tensor
    uncond: torch.Tensor
    chunks: int
    token_count: int


def token_ids(encoder: PromptEncoder) -> TokenIds:
    """The special ids of ``encoder``'s vocabulary; the comma id lets chunks break after commas."""
    comma = encoder.tokenize(",")
    return TokenIds(
        bos=encoder.bos_id, eos=encoder.eos_id, pad=encoder.pad_id, comma=comma[0] if len(comma) == 1 else None
    )


def encode_chunks(encoder: PromptEncoder, chunks: list[PromptChunk], clip_skip: int = 1) -> torch.Tensor:
    """Encode and weight every chunk; returns (1, 77 * len(chunks), D)."""
    ids = torch.tensor([chunk.tokens for chunk in chunks], dtype=torch.long)
    with torch.no_grad():
        z = encoder.encode_ids(ids, clip_skip=clip_skip)  # (chunks, 77, D)
    weights = torch.tensor([chunk.multipliers for chunk in chunks], dtype=z.dtype, device=z.device)
    if bool((weights != 1.0).any()):
        weighted = []
        for zi, wi in zip(z, weights, strict=True):
            original_mean = zi.mean()
            zw = zi * wi[:, None]
            weighted.append(zw * (original_mean / zw.mean()))
        z = torch.stack(weighted)
    return z.reshape(1, -1, z.shape[-1])


def encode_prompt(encoder: PromptEncoder, prompt: str, clip_skip: int = 1) -> torch.Tensor:
    """One prompt -> (1, 77 * chunks, D) context."""
    chunks, _ = chunk_prompt(prompt, encoder.tokenize, token_ids(encoder), chunk_length=encoder.chunk_length)
    return encode_chunks(encoder, chunks, clip_skip)


def encode_conditioning(
    encoder: PromptEncoder, prompt: str, negative_prompt: str, clip_skip: int = 1
) -> Conditioning:
    """Prompt and negative prompt, the shorter padded with empty-prompt chunks to the same length."""
    ids = token_ids(encoder)
    cond_chunks, token_count = chunk_prompt(prompt, encoder.tokenize, ids, chunk_length=encoder.chunk_length)
    uncond_chunks, _ = chunk_prompt(negative_prompt, encoder.tokenize, ids, chunk_length=encoder.chunk_length)
    count = max(len(cond_chunks), len(uncond_chunks))
    return Conditioning(
        cond=encode_chunks(encoder, pad_chunks(cond_chunks, count, ids), clip_skip),
        uncond=encode_chunks(encoder, pad_chunks(uncond_chunks, count, ids), clip_skip),
        chunks=count,
        token_count=token_count,
    )

"""Prompt -> CLIP conditioning, with AUTOMATIC1111's weighting and chunking.

Each 77-token chunk is encoded on its own; the chunks are concatenated along the sequence
axis, so a 200-token prompt gives a (1, 3 * 77, D) context. Weights multiply the token
embeddings, then the whole chunk is rescaled so that its mean equals the unweighted mean
(AUTOMATIC1111's ``FrozenCLIPEmbedderWithCustomWordsBase.process_tokens``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from webui.pipeline.prompt_schedule import prompt_schedule
from webui.pipeline.prompts import EmbeddingMatcher, PromptChunk, TokenIds, chunk_prompt, pad_chunks


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

    def encode_ids(
        self, ids: torch.Tensor, clip_skip: int = 1, vectors: Sequence[Sequence[tuple[int, torch.Tensor]]] | None = None
    ) -> torch.Tensor: ...


class PromptEmbeddings(EmbeddingMatcher, Protocol):
    """The textual-inversion words a prompt may use (:class:`webui.extra_networks.embeddings.EmbeddingVocabulary`)."""

    def vectors(self, name: str) -> torch.Tensor: ...


@dataclass
class Conditioning:
    """Contexts for classifier-free guidance, each (1, 77 * chunks, D), all with the same chunk count.

    ``conds`` / ``unconds`` are ``(end_step, context)`` schedules (prompt editing, see
    :mod:`webui.pipeline.prompt_schedule`): a context is used while the 0-based sampling step
    is ``<= end_step``. Without prompt editing each holds one entry.
    """

    conds: list[tuple[int, torch.Tensor]]
    unconds: list[tuple[int, torch.Tensor]]
    chunks: int
    token_count: int
    # Textual-inversion words the prompt or the negative prompt used, in order of first use (for "TI hashes").
    embeddings_used: tuple[str, ...] = field(default=())

    @classmethod
    def constant(cls, cond: torch.Tensor, uncond: torch.Tensor) -> Conditioning:
        """One context pair for every step."""
        return cls([(MAX_STEP, cond)], [(MAX_STEP, uncond)], cond.shape[1] // 77, 0)

    @property
    def cond(self) -> torch.Tensor:
        return self.conds[0][1]

    @property
    def uncond(self) -> torch.Tensor:
        return self.unconds[0][1]

    def at(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cond, uncond)`` in force at 0-based sampling step ``step``."""
        return _at(self.conds, step), _at(self.unconds, step)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Conditioning:
        def move(schedule: list[tuple[int, torch.Tensor]]) -> list[tuple[int, torch.Tensor]]:
            return [(end, context.to(device, dtype)) for end, context in schedule]

        return Conditioning(move(self.conds), move(self.unconds), self.chunks, self.token_count, self.embeddings_used)


MAX_STEP = 2**31 - 1


def _at(schedule: list[tuple[int, torch.Tensor]], step: int) -> torch.Tensor:
    for end, context in schedule:
        if step <= end:
            return context
    return schedule[-1][1]


def token_ids(encoder: PromptEncoder) -> TokenIds:
    """The special ids of ``encoder``'s vocabulary; the comma id lets chunks break after commas."""
    comma = encoder.tokenize(",")
    return TokenIds(
        bos=encoder.bos_id, eos=encoder.eos_id, pad=encoder.pad_id, comma=comma[0] if len(comma) == 1 else None
    )


def count_tokens(
    encoder: PromptEncoder, prompt: str, steps: int = 1, embeddings: PromptEmbeddings | None = None
) -> tuple[int, int]:
    """A1111's token counter: ``(tokens, capacity)``, capacity = 75 per chunk of the longest edited text.

    An embedding counts as its vectors."""
    ids = token_ids(encoder)
    most_tokens, most_chunks = 0, 1
    for _, text in prompt_schedule(prompt, steps):
        chunks, count = chunk_prompt(
            text, encoder.tokenize, ids, chunk_length=encoder.chunk_length, embeddings=embeddings
        )
        most_tokens, most_chunks = max(most_tokens, count), max(most_chunks, len(chunks))
    return most_tokens, most_chunks * encoder.chunk_length


def encode_chunks(
    encoder: PromptEncoder,
    chunks: list[PromptChunk],
    clip_skip: int = 1,
    embeddings: PromptEmbeddings | None = None,
) -> torch.Tensor:
    """Encode and weight every chunk; returns (1, 77 * len(chunks), D).

    The embeddings' vectors go in at their chunks' ``fixes``, in place of the token vectors; weights
    then apply to them like to any token (``(easynegative:1.2)``).
    """
    ids = torch.tensor([chunk.tokens for chunk in chunks], dtype=torch.long)
    vectors = None
    if any(chunk.fixes for chunk in chunks):
        if embeddings is None:
            raise ValueError("the chunks hold embedding words but no embeddings were given")
        vectors = [[(position, embeddings.vectors(word)) for position, word in chunk.fixes] for chunk in chunks]
    with torch.no_grad():
        z = encoder.encode_ids(ids, clip_skip=clip_skip, vectors=vectors)  # (chunks, 77, D)
    weights = torch.tensor([chunk.multipliers for chunk in chunks], dtype=z.dtype, device=z.device)
    if bool((weights != 1.0).any()):
        weighted = []
        for zi, wi in zip(z, weights, strict=True):
            original_mean = zi.mean()
            zw = zi * wi[:, None]
            weighted.append(zw * (original_mean / zw.mean()))
        z = torch.stack(weighted)
    return z.reshape(1, -1, z.shape[-1])


def encode_prompt(
    encoder: PromptEncoder, prompt: str, clip_skip: int = 1, embeddings: PromptEmbeddings | None = None
) -> torch.Tensor:
    """One prompt -> (1, 77 * chunks, D) context."""
    chunks, _ = chunk_prompt(
        prompt, encoder.tokenize, token_ids(encoder), chunk_length=encoder.chunk_length, embeddings=embeddings
    )
    return encode_chunks(encoder, chunks, clip_skip, embeddings)


def encode_conditioning(
    encoder: PromptEncoder,
    prompt: str,
    negative_prompt: str,
    clip_skip: int = 1,
    steps: int = 1,
    embeddings: PromptEmbeddings | None = None,
) -> Conditioning:
    """Prompt and negative prompt (with prompt editing over ``steps``), padded to one chunk count.

    Each distinct text is encoded once; shorter ones get empty-prompt chunks at the end. ``embeddings``
    are the textual-inversion words both texts may use.
    """
    ids = token_ids(encoder)
    cond_schedule, uncond_schedule = prompt_schedule(prompt, steps), prompt_schedule(negative_prompt, steps)
    chunked: dict[str, list[PromptChunk]] = {}
    token_count = 0
    for i, (_, text) in enumerate(cond_schedule + uncond_schedule):
        if text not in chunked:
            chunks, count = chunk_prompt(
                text, encoder.tokenize, ids, chunk_length=encoder.chunk_length, embeddings=embeddings
            )
            chunked[text] = chunks
            if i < len(cond_schedule):
                token_count = max(token_count, count)
    count = max(len(chunks) for chunks in chunked.values())
    encoded = {
        text: encode_chunks(encoder, pad_chunks(chunks, count, ids), clip_skip, embeddings)
        for text, chunks in chunked.items()
    }
    used = dict.fromkeys(word for chunks in chunked.values() for chunk in chunks for _, word in chunk.fixes)
    return Conditioning(
        conds=[(end, encoded[text]) for end, text in cond_schedule],
        unconds=[(end, encoded[text]) for end, text in uncond_schedule],
        chunks=count,
        token_count=token_count,
        embeddings_used=tuple(used),
    )

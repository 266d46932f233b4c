"""AUTOMATIC1111's prompt syntax: attention weights, ``BREAK`` and 75-token chunks.

- ``(text)`` multiplies the weight of ``text`` by 1.1, ``[text]`` divides it by 1.1,
  ``(text:1.3)`` multiplies it by 1.3; brackets nest and multiply; unbalanced brackets are
  closed at the end of the prompt; ``\\(``, ``\\)``, ``\\[``, ``\\]`` and ``\\\\`` are literals.
- ``BREAK`` (upper case, a word of its own) ends the current 75-token chunk.
- The token sequence is cut into chunks of 75 tokens (a cut falling within 20 tokens after a
  comma moves the text after the comma into the next chunk), each chunk padded and wrapped in
  start/end tokens to CLIP's 77; the encoder runs per chunk and the chunks are concatenated.

Textual-inversion words (see :mod:`webui.extra_networks.embeddings`) are found in the token stream of each
weighted run and take as many positions as they have vectors (A1111's ``PromptChunkFix``); an embedding
that does not fit in the rest of a chunk starts the next one.

Nothing here raises on user text: a prompt the grammar cannot use is taken literally. This
module is pure Python (no torch); :mod:`webui.pipeline.conditioning` does the encoding.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1
CHUNK_LENGTH = 75
COMMA_PADDING_BACKTRACK = 20
BREAK_WEIGHT = -1.0

_ATTENTION = re.compile(
    r"""
    \\\(|\\\)|\\\[|\\]|\\\\|\\|   # escapes, and a lone backslash
    \(|\[|                        # openers
    :\s*([+-]?[.\d]+)\s*\)|       # explicit weight closing a round bracket
    \)|]|                         # closers
    [^\\()\[\]:]+|                # plain text
    :
    """,
    re.VERBOSE,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split ``text`` into ``(fragment, weight)`` runs; ``("BREAK", -1.0)`` marks a chunk break.

    Same results as AUTOMATIC1111's ``prompt_parser.parse_prompt_attention``, e.g.
    ``"an (important) word"`` -> ``[("an ", 1.0), ("important", 1.1), (" word", 1.0)]``.
    Adjacent runs of equal weight are merged. Never raises.
    """
    runs: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply_from(start: int, factor: float) -> None:
        for run in runs[start:]:
            run[1] *= factor

    for match in _ATTENTION.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            runs.append([token[1:], 1.0])
        elif token == "(":
            round_open.append(len(runs))
        elif token == "[":
            square_open.append(len(runs))
        elif weight is not None and round_open and _is_number(weight):
            multiply_from(round_open.pop(), float(weight))
        elif token == ")" and round_open:
            multiply_from(round_open.pop(), ROUND_MULTIPLIER)
        elif token == "]" and square_open:
            multiply_from(square_open.pop(), SQUARE_MULTIPLIER)
        else:
            for i, part in enumerate(_BREAK.split(token)):
                if i > 0:
                    runs.append(["BREAK", BREAK_WEIGHT])
                runs.append([part, 1.0])

    for start in round_open:
        multiply_from(start, ROUND_MULTIPLIER)
    for start in square_open:
        multiply_from(start, SQUARE_MULTIPLIER)

    if not runs:
        runs = [["", 1.0]]
    merged = [runs[0]]
    for run in runs[1:]:
        if run[1] == merged[-1][1]:
            merged[-1][0] += run[0]
        else:
            merged.append(run)
    return [(text_, float(weight)) for text_, weight in merged]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass
class PromptChunk:
    """One 77-token CLIP input: start token, up to 75 prompt tokens, end token, padding.

    ``fixes`` are ``(position, word)``: the embedding ``word``'s vectors replace the token vectors from
    ``position`` on (an index into ``tokens``, start token included); those positions hold placeholder ids.
    """

    tokens: list[int] = field(default_factory=list)
    multipliers: list[float] = field(default_factory=list)
    fixes: list[tuple[int, str]] = field(default_factory=list)


class EmbeddingMatcher(Protocol):
    """Finds textual-inversion words in token ids (:class:`webui.extra_networks.embeddings.EmbeddingVocabulary`)."""

    def match(self, tokens: Sequence[int], offset: int) -> tuple[str, int, int] | None:
        """``(word, tokens it spans, vectors)`` of the embedding starting at ``tokens[offset]``, else None."""
        ...


# The id placed where an embedding's vectors go (AUTOMATIC1111 uses 0 too); the encoder replaces its vector.
EMBEDDING_PLACEHOLDER_ID = 0


@dataclass(frozen=True)
class TokenIds:
    """The special token ids a chunker needs (``comma`` is None when the vocabulary has none)."""

    bos: int
    eos: int
    pad: int
    comma: int | None = None


def chunk_prompt(
    prompt: str,
    tokenize: Callable[[str], list[int]],
    ids: TokenIds,
    *,
    chunk_length: int = CHUNK_LENGTH,
    comma_backtrack: int = COMMA_PADDING_BACKTRACK,
    embeddings: EmbeddingMatcher | None = None,
) -> tuple[list[PromptChunk], int]:
    """Parse, tokenize and cut ``prompt`` into chunks of ``chunk_length + 2`` tokens.

    Returns the chunks (at least one) and the number of prompt tokens (an embedding counts as its
    vectors). Each chunk is ``[bos] + tokens + [eos] + [pad] * (chunk_length - len(tokens))`` with weight
    1.0 on the special tokens, as AUTOMATIC1111's ``tokenize_line`` builds them.
    """
    parsed = parse_prompt_attention(prompt)
    chunks: list[PromptChunk] = []
    current = PromptChunk()
    token_count = 0
    last_comma = -1

    def close_chunk() -> None:
        nonlocal current, last_comma
        padding = chunk_length - len(current.tokens)
        current.tokens = [ids.bos, *current.tokens, ids.eos, *([ids.pad] * padding)]
        current.multipliers = [1.0, *current.multipliers, 1.0, *([1.0] * padding)]
        current.fixes = [(position + 1, word) for position, word in current.fixes]  # after the start token
        chunks.append(current)
        current = PromptChunk()
        last_comma = -1

    for text, weight in parsed:
        if text == "BREAK" and weight == BREAK_WEIGHT:
            close_chunk()
            continue
        tokens = tokenize(text)
        position = 0
        while position < len(tokens):
            token = tokens[position]
            if ids.comma is not None and token == ids.comma:
                last_comma = len(current.tokens)
            elif (
                comma_backtrack
                and len(current.tokens) == chunk_length
                and last_comma != -1
                and len(current.tokens) - last_comma <= comma_backtrack
            ):
                # Move the words after the last comma to the next chunk instead of cutting one.
                cut = last_comma + 1
                moved_tokens, moved_weights = current.tokens[cut:], current.multipliers[cut:]
                moved_fixes = [(p - cut, word) for p, word in current.fixes if p >= cut]
                current.tokens, current.multipliers = current.tokens[:cut], current.multipliers[:cut]
                current.fixes = [(p, word) for p, word in current.fixes if p < cut]
                close_chunk()
                current.tokens, current.multipliers, current.fixes = moved_tokens, moved_weights, moved_fixes
            if len(current.tokens) == chunk_length:
                close_chunk()
            found = embeddings.match(tokens, position) if embeddings is not None else None
            if found is None:
                current.tokens.append(token)
                current.multipliers.append(weight)
                token_count += 1
                position += 1
                continue
            word, spanned, vectors = found
            if len(current.tokens) + vectors > chunk_length:
                close_chunk()  # an embedding is never split between chunks
            current.fixes.append((len(current.tokens), word))
            current.tokens.extend([EMBEDDING_PLACEHOLDER_ID] * vectors)
            current.multipliers.extend([weight] * vectors)
            token_count += vectors
            position += spanned

    if current.tokens or not chunks:
        close_chunk()
    return chunks, token_count


def empty_chunk(ids: TokenIds, chunk_length: int = CHUNK_LENGTH) -> PromptChunk:
    """The chunk of an empty prompt, used to pad a shorter prompt to another's chunk count."""
    return PromptChunk(tokens=[ids.bos, ids.eos, *([ids.pad] * chunk_length)], multipliers=[1.0] * (chunk_length + 2))


def pad_chunks(chunks: Sequence[PromptChunk], count: int, ids: TokenIds) -> list[PromptChunk]:
    """``chunks`` followed by empty-prompt chunks up to ``count``."""
    return [*chunks, *(empty_chunk(ids) for _ in range(count - len(chunks)))]

"""The CLIP text encoder that turns prompt tokens into the UNet's cross-attention context.

SD 1.x conditions on the per-token hidden states of OpenAI CLIP ViT-L/14's text transformer
(Radford et al. 2021, arXiv 2103.00020; Rombach et al. 2022, arXiv 2112.10752): 77 positions,
a start token, up to 75 prompt tokens, an end token, padded with the end token.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from webui.models.errors import TokenizerNotFoundError

CONTEXT_LENGTH = 77
SD1_TOKENIZER_REPO = "openai/clip-vit-large-patch14"
MIN_BYTE_LEVEL_VOCAB = 256  # a byte-level BPE vocabulary has at least one token per byte
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


class TextEncoder:
    """A CLIP tokenizer and ``transformers.CLIPTextModel`` used together.

    The prompt-syntax layer (weights, ``BREAK``, 75-token chunks) lives in the pipeline; this class
    gives it raw token ids and encodes padded (B, 77) id tensors.
    """

    chunk_length = CONTEXT_LENGTH - 2

    def __init__(self, tokenizer, model) -> None:
        self.tokenizer = tokenizer
        self.model = model

    @property
    def bos_id(self) -> int:
        return int(self.tokenizer.bos_token_id)

    @property
    def eos_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    @property
    def pad_id(self) -> int:
        """SD 1.x pads with the end token (``<|endoftext|>``), as CLIP was trained."""
        pad = self.tokenizer.pad_token_id
        return self.eos_id if pad is None else int(pad)

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return self.model.embeddings.token_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embeddings.token_embedding.weight.dtype

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` without start/end tokens and without truncation; never raises."""
        try:
            encoding = self.tokenizer(str(text), add_special_tokens=False, truncation=False, verbose=False)
            return [int(i) for i in encoding["input_ids"]]
        except Exception:  # noqa: BLE001 - a prompt must never crash generation; an odd one encodes as nothing
            return []

    def encode_ids(
        self,
        ids: torch.Tensor,
        clip_skip: int = 1,
        vectors: Sequence[Sequence[tuple[int, torch.Tensor]]] | None = None,
    ) -> torch.Tensor:
        """(B, 77) token ids -> (B, 77, D) context.

        ``clip_skip`` N takes ``hidden_states[-N]`` and applies the final layer norm, as
        AUTOMATIC1111 does (N=1 is the last layer, N=2 "skips" one layer). N larger than the depth
        is clamped to the embedding output.

        ``vectors[b]`` lists ``(position, (n, D) tensor)``: those n input vectors of row b replace the
        token vectors from ``position`` on, before the position embeddings are added (textual inversion,
        as A1111's ``EmbeddingsWithFixes`` and diffusers' added tokens do).
        """
        if clip_skip < 1:
            raise ValueError(f"clip_skip must be >= 1, got {clip_skip}")
        clip_skip = min(int(clip_skip), self.num_layers + 1)
        ids = ids.to(self.device, dtype=torch.long)
        if vectors is not None and any(vectors):
            with replaced_token_vectors(self.model.embeddings.token_embedding, vectors):
                return self._encode(ids, clip_skip)
        return self._encode(ids, clip_skip)

    def _encode(self, ids: torch.Tensor, clip_skip: int) -> torch.Tensor:
        with torch.no_grad():
            if clip_skip == 1:
                return self.model(input_ids=ids).last_hidden_state
            hidden = self.model(input_ids=ids, output_hidden_states=True).hidden_states[-clip_skip]
            return self.model.final_layer_norm(hidden)

    def encode_text(self, text: str, clip_skip: int = 1) -> torch.Tensor:
        """One prompt, truncated to 75 tokens, as (1, 77, D): a convenience for tests and tools."""
        ids = [self.bos_id, *self.tokenize(text)[: self.chunk_length], self.eos_id]
        ids += [self.pad_id] * (CONTEXT_LENGTH - len(ids))
        return self.encode_ids(torch.tensor([ids]), clip_skip)


@contextmanager
def replaced_token_vectors(
    layer: torch.nn.Module, vectors: Sequence[Sequence[tuple[int, torch.Tensor]]]
) -> Iterator[None]:
    """While active, ``vectors`` are written into the token-embedding layer's output (a forward hook)."""

    def hook(module: torch.nn.Module, args: object, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        for row, replacements in enumerate(vectors):
            for position, vec in replacements:
                output[row, position : position + vec.shape[0]] = vec.to(output.device, output.dtype)
        return output

    handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _has_tokenizer_files(folder: Path) -> bool:
    return (
        (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file() or (folder / "tokenizer.json").is_file()
    )


def load_tokenizer(candidates: list[Path], hub_id: str | None, *, model_name: str, hint_folder: Path | None):
    """The first CLIP tokenizer found: local folders in order, then ``hub_id`` from the local HF cache.

    Never downloads. When nothing is found, the error says which files to fetch and where to put them.
    """
    from transformers import CLIPTokenizer

    for folder in candidates:
        if folder.is_dir() and _has_tokenizer_files(folder):
            tokenizer = CLIPTokenizer.from_pretrained(str(folder), model_max_length=CONTEXT_LENGTH)
            if len(tokenizer) <= MIN_BYTE_LEVEL_VOCAB:
                raise TokenizerNotFoundError(f"the tokenizer files in {folder} hold no usable CLIP vocabulary")
            return tokenizer
    looked = [str(p) for p in candidates]
    if hub_id:
        try:
            tokenizer = CLIPTokenizer.from_pretrained(hub_id, model_max_length=CONTEXT_LENGTH, local_files_only=True)
        except (OSError, ValueError):
            tokenizer = None
        # transformers 5 returns a 2-token tokenizer instead of failing when no vocabulary file is found.
        if tokenizer is not None and len(tokenizer) > MIN_BYTE_LEVEL_VOCAB:
            return tokenizer
        looked.append(f"Hugging Face cache entry {hub_id!r}")
    target = hint_folder if hint_folder is not None else Path("models") / "tokenizer"
    raise TokenizerNotFoundError(
        f"No CLIP tokenizer found for model {model_name!r} (looked in: {', '.join(looked) or 'nowhere'}). "
        f"Download the tokenizer files {', '.join(TOKENIZER_FILES)} of {SD1_TOKENIZER_REPO} "
        f"(https://huggingface.co/{SD1_TOKENIZER_REPO}/tree/main) into {target}/ , for example with "
        f"`hf download {SD1_TOKENIZER_REPO} {' '.join(TOKENIZER_FILES)} --local-dir {target}`, "
        "or set `tokenizer:` in models.yaml to a folder that holds them."
    )

"""Textual-inversion embeddings (Gal et al. 2022, arXiv 2208.01618): words whose token vectors were learned.

A file's stem is the word to type. The formats found in the wild:

- AUTOMATIC1111 ``.pt``: ``{"string_to_token": {"*": 265}, "string_to_param": {"*": (n, D)}, "name", "step",
  "sd_checkpoint", "sd_checkpoint_name"}``;
- diffusers ``.bin`` / ``.safetensors``: ``{token: (D,) or (n, D)}``; Civitai/kohya ``.safetensors``:
  ``{"emb_params": (n, D)}`` (the same rule: one tensor under one key);
- SDXL ``{"clip_g", "clip_l"}``: read, and listed as skipped on an SD 1.x model (its width is not 768).

``.pt``/``.bin`` are pickles: they are read with ``torch.load(weights_only=True)`` only, so a file that needs
more than tensors and plain containers is refused with a message and nothing in it runs. An embedding whose
width differs from the loaded text encoder's is listed as skipped (AUTOMATIC1111's ``skipped_embeddings``).
"""

from __future__ import annotations

import pickle
import threading
import weakref
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from webui.extra_networks.files import find_files
from webui.models.hashing import file_sha256

EMBEDDING_SUFFIXES = (".pt", ".bin", ".safetensors")
# AUTOMATIC1111's "TI hashes" use the first 12 hex digits of the file's sha256 (``Embedding.shorthash``).
TI_SHORT_HASH_LENGTH = 12
# An embedding is never split between two 75-token chunks, so it can have at most 75 vectors.
MAX_VECTORS = 75


class EmbeddingError(ValueError):
    """A file that is not a usable embedding; the message names the file and why."""


@dataclass(frozen=True, eq=False)
class Embedding:
    """One learned word: ``vec`` holds its ``vectors`` token vectors of width ``shape`` (A1111's names)."""

    name: str
    vec: torch.Tensor  # (vectors, shape), float32, on the CPU
    path: Path | None = None
    sha256: str | None = None
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None

    @property
    def vectors(self) -> int:
        return int(self.vec.shape[0])

    @property
    def shape(self) -> int:
        """The width of each vector (768 for SD 1.x), as A1111's API reports ``shape``."""
        return int(self.vec.shape[-1])

    @property
    def shorthash(self) -> str | None:
        return self.sha256[:TI_SHORT_HASH_LENGTH] if self.sha256 else None


def embedding_from_data(data: Any, name: str, where: str = "embedding") -> Embedding:
    """An :class:`Embedding` from a loaded file's contents (any of the formats above); raises EmbeddingError."""
    if not isinstance(data, Mapping) or not data:
        raise EmbeddingError(f"{where}: not an embedding (expected a dictionary of tensors)")
    if "string_to_param" in data:
        params = data["string_to_param"]
        if not isinstance(params, Mapping) or len(params) != 1:
            raise EmbeddingError(f"{where}: an A1111 embedding must hold exactly one term in string_to_param")
        tensor = next(iter(params.values()))
    elif "clip_l" in data and "clip_g" in data:
        # SDXL: both encoders' vectors side by side, so that the width (2048) tells it apart from SD 1.x's 768.
        tensor = torch.cat([_tensor(data["clip_g"], where), _tensor(data["clip_l"], where)], dim=-1)
    else:
        tensors = [value for value in data.values() if isinstance(value, torch.Tensor)]
        if len(tensors) != 1:
            raise EmbeddingError(
                f"{where}: expected one tensor (diffusers {{token: tensor}} or emb_params), found {len(tensors)}"
            )
        tensor = tensors[0]
    vec = _tensor(tensor, where)
    if vec.ndim == 1:
        vec = vec.unsqueeze(0)
    if vec.ndim != 2 or vec.shape[0] == 0 or vec.shape[1] == 0:
        raise EmbeddingError(f"{where}: the vectors have shape {tuple(vec.shape)}, expected (vectors, width)")
    if vec.shape[0] > MAX_VECTORS:
        raise EmbeddingError(f"{where}: {vec.shape[0]} vectors do not fit in one {MAX_VECTORS}-token prompt chunk")
    if not bool(torch.isfinite(vec).all()):
        raise EmbeddingError(f"{where}: the vectors hold NaN or infinite values")
    return Embedding(
        name=name,
        vec=vec,
        step=_optional_int(data.get("step")),
        sd_checkpoint=_optional_str(data.get("sd_checkpoint")),
        sd_checkpoint_name=_optional_str(data.get("sd_checkpoint_name")),
    )


def read_embedding(path: Path) -> Embedding:
    """Read one embedding file; the word is the file's stem. Raises EmbeddingError with one clear message."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in EMBEDDING_SUFFIXES:
        raise EmbeddingError(f"{path.name}: not an embedding file ({', '.join(EMBEDDING_SUFFIXES)})")
    data = _read_safetensors(path) if suffix == ".safetensors" else _read_pickle(path)
    embedding = embedding_from_data(data, path.stem, path.name)
    return Embedding(
        name=embedding.name,
        vec=embedding.vec,
        path=path,
        sha256=file_sha256(path),
        step=embedding.step,
        sd_checkpoint=embedding.sd_checkpoint,
        sd_checkpoint_name=embedding.sd_checkpoint_name,
    )


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise EmbeddingError(f"{path.name}: not a readable safetensors file (truncated or damaged: {err})") from None


def _read_pickle(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "GLOBAL" in text or "Unsupported global" in text:  # what torch's weights-only unpickler says of code
            raise EmbeddingError(
                f"{path.name}: refused: the file needs Python code beyond tensors to load (a pickle that could run "
                "code); only plain weights are read. Convert it to .safetensors if you trust its source."
            ) from None
        raise EmbeddingError(f"{path.name}: not a readable PyTorch file (truncated or damaged)") from None
    except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError, zipfile.BadZipFile) as err:
        raise EmbeddingError(f"{path.name}: not a readable PyTorch file (truncated or damaged: {err})") from None


def _tensor(value: Any, where: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise EmbeddingError(f"{where}: expected a tensor, found {type(value).__name__}")
    return value.detach().to("cpu", torch.float32).clone()


def _optional_int(value: Any) -> int | None:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _optional_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


@dataclass
class EmbeddingFolder:
    """What a scan of the embeddings folder found, by word: usable, of another width, or unreadable."""

    loaded: dict[str, Embedding] = field(default_factory=dict)
    skipped: dict[str, Embedding] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # word -> message


def scan_embeddings(folder: Path, width: int | None) -> EmbeddingFolder:
    """Read every embedding under ``folder`` (sub-folders too); those not ``width`` wide go to ``skipped``.

    ``width`` None (no model loaded) accepts every width. A bad file is listed in ``errors`` with its message
    and the others load. Two files with the same stem: the first by path wins, the second is an error.
    """
    found = EmbeddingFolder()
    for path in find_files(Path(folder), EMBEDDING_SUFFIXES):
        name = path.stem
        if name in found.loaded or name in found.skipped or name in found.errors:
            found.errors.setdefault(f"{name} ({path.name})", f"{path}: another file already defines {name!r}")
            continue
        if path.stat().st_size == 0:
            found.errors[name] = f"{path.name}: the file is empty"
            continue
        try:
            embedding = read_embedding(path)
        except EmbeddingError as err:
            found.errors[name] = str(err)
            continue
        if width is None or embedding.shape == width:
            found.loaded[name] = embedding
        else:
            found.skipped[name] = embedding
    return found


class EmbeddingVocabulary:
    """The embeddings a tokenizer can find in a prompt's token ids (A1111's ``EmbeddingDatabase`` lookup).

    A word is matched by its own token ids (``tokenize(name)``); where several words start alike, the
    longest match wins. :meth:`match` is what :func:`webui.pipeline.prompts.chunk_prompt` calls.
    """

    def __init__(self, embeddings: Iterable[Embedding], tokenize: Callable[[str], list[int]]) -> None:
        self.embeddings: dict[str, Embedding] = {}
        self._by_first: dict[int, list[tuple[list[int], Embedding]]] = {}
        for embedding in embeddings:
            ids = tokenize(embedding.name)
            if not ids:
                continue
            self.embeddings[embedding.name] = embedding
            self._by_first.setdefault(ids[0], []).append((ids, embedding))
        for candidates in self._by_first.values():
            candidates.sort(key=lambda item: len(item[0]), reverse=True)

    def __len__(self) -> int:
        return len(self.embeddings)

    def match(self, tokens: Sequence[int], offset: int) -> tuple[str, int, int] | None:
        """``(word, tokens it spans, vectors)`` of the embedding starting at ``tokens[offset]``, else None."""
        for ids, embedding in self._by_first.get(tokens[offset], ()):
            if list(tokens[offset : offset + len(ids)]) == ids:
                return embedding.name, len(ids), embedding.vectors
        return None

    def vectors(self, name: str) -> torch.Tensor:
        return self.embeddings[name].vec

    def infotext_hashes(self, words: Iterable[str]) -> str:
        """A1111's ``TI hashes`` value: ``"word: 12-digit sha256 prefix, ..."`` (words without a file left out)."""
        pairs = []
        for word in words:
            embedding = self.embeddings.get(word)
            if embedding is not None and embedding.shorthash:
                pairs.append(f"{word.replace(':', '').replace(',', '')}: {embedding.shorthash}")
        return ", ".join(pairs)


class TokenizingEncoder(Protocol):
    """What :meth:`EmbeddingLibrary.vocabulary` needs of a text encoder."""

    @property
    def hidden_size(self) -> int: ...

    def tokenize(self, text: str) -> list[int]: ...


class EmbeddingLibrary:
    """The embeddings folder as the app sees it: read at start and on :meth:`refresh`, split by model width.

    Thread-safe: a refresh swaps in a new scan at once, so a job that already has its vocabulary keeps it.
    """

    def __init__(self, folder: Path | None) -> None:
        self.folder = Path(folder) if folder is not None else None
        self._lock = threading.Lock()
        self._found = EmbeddingFolder()
        # (id of the encoder, width) -> (the encoder, weakly, and its vocabulary); cleared by refresh().
        self._vocabularies: dict[tuple[int, int], tuple[weakref.ReferenceType[Any], EmbeddingVocabulary]] = {}
        self.refresh()

    def refresh(self) -> EmbeddingFolder:
        """Read the folder again (every width); returns what it found."""
        found = scan_embeddings(self.folder, None) if self.folder is not None else EmbeddingFolder()
        with self._lock:
            self._found = found
            self._vocabularies = {}
        return found

    def for_width(self, width: int | None) -> EmbeddingFolder:
        """The scan split for a text encoder ``width`` wide (None: no model loaded, every embedding counts)."""
        with self._lock:
            found = self._found
        loaded = {n: e for n, e in found.loaded.items() if width is None or e.shape == width}
        skipped = {n: e for n, e in found.loaded.items() if n not in loaded}
        return EmbeddingFolder(loaded=loaded, skipped=skipped, errors=dict(found.errors))

    def vocabulary(self, encoder: TokenizingEncoder) -> EmbeddingVocabulary:
        """The words ``encoder`` can use (its width), indexed by its tokenizer; built once per encoder."""
        key = (id(encoder), encoder.hidden_size)
        with self._lock:
            cached = self._vocabularies.get(key)
            if cached is not None and cached[0]() is encoder:
                return cached[1]
        vocabulary = EmbeddingVocabulary(self.for_width(encoder.hidden_size).loaded.values(), encoder.tokenize)
        with self._lock:
            self._vocabularies[key] = (weakref.ref(encoder), vocabulary)
        return vocabulary

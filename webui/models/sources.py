"""Read tensors from model files lazily and safely: names and shapes first, data one tensor at a time.

- ``.safetensors``: the header is checked with :func:`safetensors.safe_open`; a tensor's bytes are read
  only when asked for, with a plain file read into memory of its own (not through a memory map: every
  page of a map that was read counts in the process' resident memory until the map is closed, so
  loading an fp16 file for float32 use would hold the whole fp16 file beside the float32 copy; with
  reads, loading holds the final weights plus one source tensor at most, issue 19).
- ``.ckpt`` / ``.pt`` / ``.pth`` / ``.bin`` (pickles): ``torch.load(weights_only=True)``, memory-mapped when
  the file is in the zip format. The restricted unpickler refuses any global beyond tensors and plain
  containers, so a malicious pickle cannot run code; we never fall back to full unpickling.

Every failure becomes a :class:`~webui.models.errors.CheckpointError` subclass with a readable message.
"""

from __future__ import annotations

import io
import json
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from webui.models.errors import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
)

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


class TensorSource(Protocol):
    """Named tensors that can be listed (with shapes) before any data is read."""

    def shapes(self) -> dict[str, tuple[int, ...]]: ...

    def get(self, key: str) -> torch.Tensor: ...

    def close(self) -> None: ...


# safetensors dtype names (the format's header) -> torch dtypes; the data is little-endian, as torch's on
# every platform PyTorch supports.
SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


class SafetensorsSource:
    """A ``.safetensors`` file read one tensor at a time into memory of its own (see the module docstring)."""

    def __init__(self, path: Path):
        from safetensors import safe_open

        self.path = path
        self._file: io.BufferedReader | None = None
        try:
            with safe_open(str(path), framework="pt", device="cpu") as checked:  # validates header and offsets
                self._shapes = {k: tuple(checked.get_slice(k).get_shape()) for k in checked.keys()}
            self._entries, self._data_start = _safetensors_header(path)
        except Exception as exc:  # SafetensorError is not importable as a stable name across versions
            raise CorruptCheckpointError(
                f"{path.name} is not a valid .safetensors file (truncated or damaged download?): {exc}"
            ) from exc
        self._file = path.open("rb")
        self._scratch: torch.Tensor | None = None

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self._shapes)

    def get(self, key: str) -> torch.Tensor:
        if self._file is None:
            raise CorruptCheckpointError(f"{self.path.name}: cannot read tensor {key!r}: the file was closed")
        try:
            kind, shape, (begin, end) = self._entries[key]
            dtype = SAFETENSORS_DTYPES[kind]
        except KeyError as exc:
            raise CorruptCheckpointError(f"{self.path.name}: cannot read tensor {key!r}: {exc}") from exc
        if end == begin:
            return torch.empty(shape, dtype=dtype)
        # A tensor that owns its memory (not torch.frombuffer over a bytearray), so that later moves
        # such as share_memory_() work on it as on any other tensor.
        data = torch.empty(end - begin, dtype=torch.uint8)
        self._file.seek(self._data_start + begin)
        if self._file.readinto(data.numpy().data) != end - begin:
            raise CorruptCheckpointError(f"{self.path.name}: tensor {key!r} is cut short (truncated file?)")
        return data.view(dtype).reshape(shape)

    def get_as(self, key: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """``get(key)`` converted to ``dtype`` (floating-point tensors only) on ``device``.

        A conversion reads the file's bytes into one scratch buffer the size of the largest tensor, reused
        for every tensor, and writes the result straight into its final tensor: the only memory beyond the
        loaded weights is that buffer. (Reading each tensor into a fresh buffer and freeing it after the
        conversion leaves glibc's heap holding the freed buffers: 0.11 GiB on an SD 1.5 file.)
        """
        kind, shape, (begin, end) = self._entries.get(key, ("?", (), (0, 0)))
        source_dtype = SAFETENSORS_DTYPES.get(kind)
        target = dtype if source_dtype is not None and source_dtype.is_floating_point else source_dtype
        if source_dtype is None or target == source_dtype or end == begin or self._file is None:
            return self.get(key).to(device)
        if self._scratch is None:
            self._scratch = torch.empty(max(e - b for _, _, (b, e) in self._entries.values()), dtype=torch.uint8)
        data = self._scratch[: end - begin]
        self._file.seek(self._data_start + begin)
        if self._file.readinto(data.numpy().data) != end - begin:
            raise CorruptCheckpointError(f"{self.path.name}: tensor {key!r} is cut short (truncated file?)")
        out = torch.empty(shape, dtype=target, device=device)
        out.copy_(data.view(source_dtype).reshape(shape))
        return out

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = None
        self._scratch = None


def _safetensors_header(path: Path) -> tuple[dict[str, tuple[str, tuple[int, ...], tuple[int, int]]], int]:
    """Each tensor's (dtype name, shape, (begin, end) byte offsets in the data), and where the data starts.

    The format: an 8-byte little-endian header length N, N bytes of JSON, then the data
    (https://github.com/huggingface/safetensors#format).
    """
    with path.open("rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    entries = {
        key: (
            str(info["dtype"]),
            tuple(int(n) for n in info["shape"]),
            (int(info["data_offsets"][0]), int(info["data_offsets"][1])),
        )
        for key, info in header.items()
        if key != "__metadata__"
    }
    return entries, 8 + size


class DictSource:
    """Tensors already in a dict (a loaded pickle, or a test)."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self._tensors = tensors

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in self._tensors.items()}

    def get(self, key: str) -> torch.Tensor:
        return self._tensors[key]

    def close(self) -> None:
        self._tensors = {}


class LightningCallbackState:
    """Inert stand-in for ``pytorch_lightning`` callback objects pickled into some original SD 1.x ``.ckpt``
    files (e.g. CompVis' ``sd-v1-4.ckpt``). Its fields are kept as plain data and never used; no
    pytorch_lightning code is imported or run."""


def _harmless_globals() -> list[Callable[..., Any] | tuple[Callable[..., Any], str]]:
    """Globals that real SD 1.x ``.ckpt`` files contain besides tensors, which cannot run code.

    The same short list AUTOMATIC1111's restricted unpickler accepts: numpy scalars and dtypes (for
    ``global_step``) and Lightning's ``ModelCheckpoint`` (mapped to :class:`LightningCallbackState`).
    """
    items: list[Callable[..., Any] | tuple[Callable[..., Any], str]] = [
        (LightningCallbackState, "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"),
    ]
    try:
        import numpy as np
    except ImportError:  # numpy is optional for torch; without it such files are refused
        return items
    core = getattr(np, "_core", None) or np.core
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        items.append((core.multiarray.scalar, f"{module}.scalar"))
    items.append((np.dtype, "numpy.dtype"))
    # numpy 2 rebuilds a dtype as an instance of its per-type class (Int64DType, ...) and sets its state.
    for name in dir(getattr(np, "dtypes", None)):
        if name.endswith("DType"):
            items.append((getattr(np.dtypes, name), f"numpy.dtypes.{name}"))
    return items


def _unsafe_global(message: str) -> str | None:
    match = re.search(r"GLOBAL ([\w.]+)", message, flags=re.IGNORECASE)
    return match.group(1) if match else None


def load_pickle_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a PyTorch pickle, unwrapping a ``state_dict`` entry; refuses anything executable."""
    try:
        with torch.serialization.safe_globals(_harmless_globals()):
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap can only be used" not in str(exc):
                    raise
                obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as exc:
        blocked = _unsafe_global(str(exc))
        if blocked:
            raise UnsafeCheckpointError(
                f"{path.name} was refused: this pickle asks to load {blocked}, which could run arbitrary code. "
                "Only tensors are accepted from .ckpt files. Get a .safetensors version of this model instead."
            ) from None
        raise CorruptCheckpointError(
            f"{path.name} is not a PyTorch checkpoint (or is damaged): it could not be read as tensors."
        ) from None
    except Exception as exc:  # the unpickler raises anything (IndexError, KeyError, ...) on garbage
        detail = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise CorruptCheckpointError(f"{path.name} is damaged, truncated or not a checkpoint: {detail}") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CorruptCheckpointError(f"{path.name} holds a {type(obj).__name__}, not a dictionary of tensors.")
    return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def _looks_like_safetensors(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def open_single_file(path: Path) -> TensorSource:
    """A lazy tensor source for one weights file, chosen by suffix (or by content for other suffixes)."""
    if not path.is_file():
        raise CheckpointNotFoundError(f"model file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES or (suffix not in PICKLE_SUFFIXES and _looks_like_safetensors(path)):
        return SafetensorsSource(path)
    return DictSource(load_pickle_weights(path))

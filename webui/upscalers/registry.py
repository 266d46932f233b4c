"""The upscaler list: the built-ins, then one model upscaler per file under the upscaler folder."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path

import torch

from webui.upscalers.base import BUILTIN_UPSCALERS, Upscaler
from webui.upscalers.models import MODEL_SUFFIXES, ModelUpscaler, spandrel_missing

# A1111's folder for ESRGAN-family files, relative to the working directory (``--upscaler-dir`` changes it).
DEFAULT_UPSCALER_DIR = Path("models") / "ESRGAN"


class UpscalerRegistry:
    """The upscalers by name (AUTOMATIC1111's ``shared.sd_upscalers``).

    Args:
        folder: scanned with its sub-folders for ``.pth``, ``.pt``, ``.safetensors`` and ``.ckpt`` files; a
            missing folder lists none. Nothing is loaded until a model upscaler is used.
        device, dtype: where model upscalers run (fp16/bf16 only for architectures that support it).
        tile, overlap: tile side and context in input pixels (see :mod:`webui.upscalers.tiling`).
    """

    def __init__(
        self,
        folder: str | Path | None = None,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        tile: int = 192,
        overlap: int = 32,
    ):
        self.folder = Path(folder) if folder is not None else None
        self.device, self.dtype = torch.device(device), dtype
        self.tile, self.overlap = tile, overlap
        self._lock = threading.Lock()
        self._models: tuple[ModelUpscaler, ...] = ()
        self.refresh()

    def refresh(self) -> None:
        """Re-scan the folder (files already known keep their loaded model)."""
        known = {u.model_path: u for u in self._models}
        files = sorted(_model_files(self.folder)) if self.folder is not None else []
        models: list[ModelUpscaler] = []
        for path in files:
            upscaler = known.get(path)
            if upscaler is None:
                name = _unique_name(path, self.folder, {m.name for m in models})
                upscaler = ModelUpscaler(name, path, self.device, self.dtype, self.tile, self.overlap)
            models.append(upscaler)
        with self._lock:
            self._models = tuple(models)

    @property
    def upscalers(self) -> tuple[Upscaler, ...]:
        return (*BUILTIN_UPSCALERS, *self._models)

    @property
    def names(self) -> list[str]:
        return [u.name for u in self.upscalers]

    def get(self, name: str) -> Upscaler:
        """The upscaler called ``name`` (any case); KeyError listing the names otherwise."""
        for upscaler in self.upscalers:
            if upscaler.name.lower() == str(name).lower():
                return upscaler
        raise KeyError(f"unknown upscaler {name!r}; available: {', '.join(self.names)}")

    def unavailable_reason(self, upscaler: Upscaler) -> str | None:
        """Why ``upscaler`` cannot run here (spandrel not installed), or None."""
        return spandrel_missing() if isinstance(upscaler, ModelUpscaler) else None


def _model_files(folder: Path) -> Iterable[Path]:
    if not folder.is_dir():
        return []
    return (p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in MODEL_SUFFIXES)


def _unique_name(path: Path, folder: Path | None, taken: set[str]) -> str:
    """The file's stem (A1111 names model upscalers so), or its path under the folder when the stem is taken."""
    if path.stem not in taken or folder is None:
        return path.stem
    return path.relative_to(folder).with_suffix("").as_posix()

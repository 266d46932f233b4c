"""Model upscalers (ESRGAN, Real-ESRGAN, SwinIR, DAT, ...) loaded with the optional ``spandrel`` package.

Files are read safely, never unpickled freely: safetensors, or ``torch.load(..., weights_only=True)`` for
``.pth``/``.pt``/``.ckpt``; spandrel then recognises the architecture from the state dict. spandrel imports
torchvision, which must match the installed torch, so it is an optional extra (``pip install 'sd-webui[upscalers]'``)
imported only here, when a model upscaler is first used.
"""

from __future__ import annotations

import importlib.util
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from webui.upscalers.base import CancelCheck, UpscalerError, UpscalerUnavailable
from webui.upscalers.tiling import tiled_apply

MODEL_SUFFIXES = (".pth", ".pt", ".safetensors", ".ckpt")
INSTALL_HINT = "pip install 'sd-webui[upscalers]' (spandrel, with a torchvision that matches your torch)"
_SCALE_IN_NAME = re.compile(r"(?:^|[^0-9])([1-8])x|x([1-8])(?:[^0-9]|$)", re.IGNORECASE)


def spandrel_missing() -> str | None:
    """Why model upscalers cannot run here (None when spandrel is installed)."""
    if importlib.util.find_spec("spandrel") is None:
        return f"model upscalers need the optional spandrel package: {INSTALL_HINT}"
    return None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of an upscaler file, read without running pickled code; UpscalerError naming the file."""
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        state: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated files, foreign pickles: one clear message
        raise UpscalerError(f"cannot read the upscaler file {path.name}: {type(err).__name__}: {err}") from None
    if not isinstance(state, dict):
        raise UpscalerError(f"the upscaler file {path.name} holds a {type(state).__name__}, not a state dict")
    return state


def load_descriptor(path: Path, device: torch.device, dtype: torch.dtype) -> Any:
    """spandrel's ``ImageModelDescriptor`` of ``path`` on ``device`` in ``dtype`` (fp32 where unsupported)."""
    reason = spandrel_missing()
    if reason is not None:
        raise UpscalerUnavailable(reason)
    import spandrel

    state = read_state_dict(path)
    try:
        descriptor = spandrel.ModelLoader(device="cpu").load_from_state_dict(state)
    except spandrel.UnsupportedModelError:
        raise UpscalerError(
            f"spandrel does not recognise the architecture of {path.name}: it is not an upscaler model spandrel "
            "supports (ESRGAN, Real-ESRGAN, SwinIR, DAT, ...)"
        ) from None
    except Exception as err:
        raise UpscalerError(f"cannot load the upscaler file {path.name}: {type(err).__name__}: {err}") from None
    if not isinstance(descriptor, spandrel.ImageModelDescriptor) or descriptor.input_channels != 3:
        raise UpscalerError(f"{path.name} is a {descriptor.architecture.name} model, not an RGB image upscaler")
    if dtype == torch.float16 and not descriptor.supports_half:
        dtype = torch.float32
    if dtype == torch.bfloat16 and not descriptor.supports_bfloat16:
        dtype = torch.float32
    descriptor.to(device=device, dtype=dtype)
    descriptor.eval()
    return descriptor


class ModelUpscaler:
    """One upscaler file; the model loads on first use and stays loaded (its registry drops it on re-scan)."""

    def __init__(self, name: str, path: Path, device: torch.device, dtype: torch.dtype, tile: int, overlap: int):
        self.name, self.model_path = name, path
        self.device, self.dtype, self.tile, self.overlap = device, dtype, tile, overlap
        self._descriptor: Any = None
        self._lock = threading.Lock()

    @property
    def scale(self) -> float:
        """The model's factor once loaded; before that, the one its name says (``4x-UltraSharp``), else 4."""
        if self._descriptor is not None:
            return float(self._descriptor.scale)
        match = _SCALE_IN_NAME.search(self.name)
        return float(match.group(1) or match.group(2)) if match else 4.0

    def descriptor(self) -> Any:
        with self._lock:
            if self._descriptor is None:
                self._descriptor = load_descriptor(self.model_path, self.device, self.dtype)
            return self._descriptor

    def upscale_once(self, image: Image.Image, width: int, height: int, cancel: CancelCheck | None) -> Image.Image:
        descriptor = self.descriptor()
        dtype = next(iter(descriptor.model.parameters())).dtype
        pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
        x = pixels.permute(2, 0, 1)[None].to(self.device, dtype)

        def run(tile: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return descriptor(tile).float()

        out = tiled_apply(run, x, tile=self.tile, overlap=self.overlap, cancel=cancel)[0]
        # One copy, then in place: at 2048 px each float copy of the result is 48 MiB.
        array = out.clamp(0, 1).mul_(255.0).round_().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
        return Image.fromarray(array, "RGB")

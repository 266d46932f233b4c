"""What ``--compile``, ``--medvram`` and ``--lowvram`` do to a model right after it is loaded.

One small value object that the server builds from the command line and the model manager applies to
every model it loads (:class:`~webui.models.manager.ModelManager`'s ``speed`` argument).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from webui.models.model import StableDiffusionModel
from webui.models.offload import VRAM_MODES


@dataclass(frozen=True)
class SpeedOptions:
    """Args:
    compile: ``--compile``: the UNet through ``torch.compile`` (:mod:`webui.models.compile`).
    compile_backend: ``torch.compile``'s backend; ``"inductor"`` in the product (tests count compiles).
    vram: ``normal``, ``medvram`` or ``lowvram`` (:mod:`webui.models.offload`).
    storage: where ``medvram``/``lowvram`` keep the weights that are not running (the CPU).
    """

    compile: bool = False
    compile_backend: Any = "inductor"
    vram: str = "normal"
    storage: str = "cpu"

    def __post_init__(self) -> None:
        if self.vram not in VRAM_MODES:
            raise ValueError(f"unknown VRAM mode {self.vram!r}; choose one of {', '.join(VRAM_MODES)}")
        if self.compile and self.vram != "normal":
            raise ValueError(
                f"--compile cannot be combined with --{self.vram}: moving weights between devices inside a "
                "compiled UNet would recompile it on every call"
            )

    def load_device(self, device: torch.device) -> torch.device:
        """Where the loader puts the weights: ``storage`` under medvram/lowvram, else ``device``."""
        return device if self.vram == "normal" else torch.device(self.storage)

    def apply(self, model: StableDiffusionModel, device: torch.device | None = None) -> StableDiffusionModel:
        """Prepare a freshly loaded ``model`` in place to run on ``device`` (default: where it is); returns it."""
        if self.compile:
            from webui.models.compile import compile_unet

            compile_unet(model.unet, backend=self.compile_backend)
        if self.vram != "normal":
            from webui.models.offload import setup_offload

            model.extra["offload"] = setup_offload(
                model, self.vram, execution=device or model.device, storage=self.storage
            )
        return model

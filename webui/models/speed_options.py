"""What ``--compile`` (and, on GPUs, ``--medvram`` / ``--lowvram``) do to a model right after it is loaded.

One small value object that the server builds from the command line and the model manager applies to
every model it loads (:class:`~webui.models.manager.ModelManager`'s ``speed`` argument).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from webui.models.model import StableDiffusionModel


@dataclass(frozen=True)
class SpeedOptions:
    """Args:
    compile: ``--compile``: the UNet through ``torch.compile`` (:mod:`webui.models.compile`).
    compile_backend: ``torch.compile``'s backend; ``"inductor"`` in the product (tests count compiles).
    """

    compile: bool = False
    compile_backend: Any = "inductor"

    def apply(self, model: StableDiffusionModel) -> StableDiffusionModel:
        """Prepare a freshly loaded ``model`` in place; returns it."""
        if self.compile:
            from webui.models.compile import compile_unet

            compile_unet(model.unet, backend=self.compile_backend)
        return model

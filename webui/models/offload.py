"""``--medvram`` and ``--lowvram``: networks kept in CPU memory and moved to the GPU only while they run.

The semantics of AUTOMATIC1111's flags (its ``modules/lowvram.py``), written with forward pre-hooks:

- ``medvram``: the text encoder, the UNet and the VAE are stored on ``storage`` (the CPU); just before one
  of them runs, the one on ``execution`` goes back to ``storage`` and this one moves to ``execution``. At
  most one network is on the GPU at a time: peak VRAM is the largest network plus its activations.
- ``lowvram``: the same for the text encoder and the VAE, and the UNet is split further: its large
  blocks (each of ``input_blocks``, ``middle_block``, each of ``output_blocks``) are moved one at a time,
  while its small remainder (time embedding, ``out``) stays on ``execution``. Slower (a block's weights
  cross the bus every step), but fits in very little VRAM.

Device-agnostic: ``storage`` and ``execution`` are parameters, and the hooks also move their network's
tensor inputs to ``execution`` (the text encoder's token ids are made on its weights' device). On a
machine without a GPU both are the CPU and only the bookkeeping can be checked (:attr:`Offload.log`);
actual placement and VRAM are measured by ``python -m bench.bench_speed --device cuda``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from webui.models.model import StableDiffusionModel

VRAM_MODES = ("normal", "medvram", "lowvram")


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple | list):
        return type(value)(_to(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value


@dataclass
class Offload:
    """The hooks of one model, and which group of modules is on ``execution`` now (one at a time, as A1111).

    ``log`` records every move as ``(group name, device)``, in order; tests read it.
    """

    storage: torch.device
    execution: torch.device
    log: list[tuple[str, torch.device]] = field(default_factory=list)
    handles: list[RemovableHandle] = field(default_factory=list)
    active: tuple[str, list[nn.Module]] | None = None  # (name, modules) on ``execution`` now

    def attach(self, name: str, group: list[nn.Module], triggers: Iterable[nn.Module]) -> None:
        """Before any of ``triggers`` runs, ``group`` moves to ``execution``, evicting the group there."""

        def hook(module: nn.Module, args: Any, kwargs: Any) -> tuple[Any, Any]:
            self.bring(name, group)
            return _to(args, self.execution), _to(kwargs, self.execution)

        for module in triggers:
            self.handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))

    def bring(self, name: str, group: list[nn.Module]) -> None:
        current = self.active
        if current is not None and current[0] == name:
            return
        if current is not None:
            for module in current[1]:
                module.to(self.storage)
            self.log.append((current[0], self.storage))
        for module in group:
            module.to(self.execution)
        self.log.append((name, self.execution))
        self.active = (name, group)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


def setup_offload(
    model: StableDiffusionModel,
    mode: str,
    *,
    execution: torch.device | str,
    storage: torch.device | str = "cpu",
) -> Offload | None:
    """Install ``mode``'s hooks on ``model`` (whose weights must be on ``storage``); None for ``normal``.

    ``model.device`` becomes ``execution``: the pipeline makes its latents there.
    """
    if mode not in VRAM_MODES:
        raise ValueError(f"unknown VRAM mode {mode!r}; choose one of {', '.join(VRAM_MODES)}")
    if mode == "normal":
        return None
    offload = Offload(torch.device(storage), torch.device(execution))
    model.device = offload.execution
    text, vae, unet = model.text_encoder.model, model.vae, model.unet
    offload.attach("text encoder", [text], [text])
    # Every part of the VAE triggers, not only its top: tiled decoding and encoding call its layers one by one.
    offload.attach("vae", [vae], [module for module in vae.modules() if module is not vae])
    if mode == "medvram":
        offload.attach("unet", [unet], [unet])
        return offload
    big = {"input_blocks", "middle_block", "output_blocks"}
    for name, child in unet.named_children():  # the small remainder lives on ``execution`` (A1111 too)
        if name not in big:
            child.to(offload.execution)
    for param in unet.parameters(recurse=False):
        param.data = param.data.to(offload.execution)
    offload.handles.append(
        unet.register_forward_pre_hook(
            lambda m, a, k: (_to(a, offload.execution), _to(k, offload.execution)), with_kwargs=True
        )
    )
    for stage in ("input_blocks", "middle_block", "output_blocks"):
        part = getattr(unet, stage)
        blocks = list(part) if isinstance(part, nn.ModuleList) else [part]
        for i, block in enumerate(blocks):
            name = f"unet.{stage}" + (f".{i}" if isinstance(part, nn.ModuleList) else "")
            offload.attach(name, [block], [block])
    return offload

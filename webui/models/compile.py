"""``--compile``: the UNet through ``torch.compile`` (TorchInductor: C++/OpenMP on the CPU, Triton on CUDA).

Off by default: the first step at each new shape pays the compile (tens of seconds on a CPU for SD 1.5),
later steps at that shape run faster (figures in the README's Performance section, from
``python -m bench.bench_compile``).

Recompiles are avoided for the sizes people use:

- ``dynamic=False``: each (batch, height, width, prompt length) gets its own specialised graph, compiled
  the first time it is seen and reused from then on (dynamo keeps up to
  ``torch._dynamo.config.recompile_limit`` of them, 8 by default, per model), instead of one slower
  dynamic-shape graph after the second size.
- The module is compiled in place (:meth:`torch.nn.Module.compile`): its class, parameters and state
  dict keys stay as they are, so LoRA merging, precision changes and saving keep working. Weights changed
  in place (a LoRA merged and restored) are graph inputs, not constants, so they need no recompile.
- Nothing else may put hooks inside the compiled UNet per job: a hook added and removed on every job
  is a new guard each time, which recompiles. The pipeline's per-block interrupt hooks are therefore
  not installed on a compiled UNet (:func:`is_compiled`); interrupt and skip then act between steps.

The VAE decoder is not compiled: it runs once per image (not once per step), so its compile would
rarely pay back in an interactive session.
"""

from __future__ import annotations

from typing import Any

from torch import nn


def compile_unet(unet: nn.Module, *, backend: Any = "inductor", mode: str | None = None) -> nn.Module:
    """Compile ``unet`` in place with ``torch.compile(dynamic=False)``; returns it.

    Args:
        backend: ``torch.compile``'s backend (``"inductor"``; tests pass a counting backend).
        mode: ``torch.compile``'s mode (None: the default; ``"max-autotune"`` compiles longer on CUDA).
    """
    options: dict[str, Any] = {"backend": backend, "dynamic": False, "fullgraph": False}
    if mode is not None:
        options["mode"] = mode
    unet.compile(**options)
    return unet


def uncompile(module: nn.Module) -> nn.Module:
    """Back to eager execution (what :meth:`torch.nn.Module.compile` set, undone)."""
    module._compiled_call_impl = None
    return module


def is_compiled(module: nn.Module) -> bool:
    """Whether ``module`` runs through ``torch.compile`` (compiled in place by :func:`compile_unet`)."""
    return getattr(module, "_compiled_call_impl", None) is not None

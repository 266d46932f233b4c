"""Random-weight LoRA files in the layouts users have, for the LoRA tests and the LoRA bench.

The kohya keys are made from a list of ``(kohya module key, weight shape)``: either from a diffusers
UNet's / CLIP text model's own module names (:func:`kohya_specs_from_diffusers`, independent of our key
map, for parity tests) or from our key map (:func:`kohya_specs_from_model`, for tests that only need a valid file).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import save_file

Spec = tuple[str, tuple[int, ...]]  # (kohya module key, shape of the weight it changes)


def kohya_specs_from_diffusers(unet: torch.nn.Module, text_model: torch.nn.Module | None) -> list[Spec]:
    """Every Linear of the transformers, every ResBlock conv (LoCon) of a diffusers UNet; every text Linear."""
    specs: list[Spec] = []
    for name, module in unet.named_modules():
        is_attention = ".attentions." in name and isinstance(module, (torch.nn.Linear, torch.nn.Conv2d))
        is_resnet_conv = ".resnets." in name and isinstance(module, torch.nn.Conv2d)
        if is_attention or is_resnet_conv:
            specs.append(("lora_unet_" + name.replace(".", "_"), tuple(module.weight.shape)))
    if text_model is not None:
        for name, module in text_model.named_modules():
            if isinstance(module, torch.nn.Linear):
                path = name if name.startswith("text_model.") else "text_model." + name
                specs.append(("lora_te_" + path.replace(".", "_"), tuple(module.weight.shape)))
    return specs


def kohya_specs_from_model(model: object, text_encoder: bool = True) -> list[Spec]:
    """Specs for every module of our key map (diffusers spelling), from a loaded model."""
    from webui.extra_networks.lora_keys import TEXT_ENCODER, model_key_map

    seen: dict[tuple[str, str], Spec] = {}  # the key map lists a module's diffusers spelling first
    for key, target in model_key_map(model).items():
        if target.component == TEXT_ENCODER and not text_encoder:
            continue
        seen.setdefault((target.component, target.module), (key, target.shape))
    return list(seen.values())


def kohya_tensors(specs: Iterable[Spec], rank: int, seed: int, alpha: float | None = None) -> dict[str, torch.Tensor]:
    """kohya-ss LoRA tensors: ``lora_down`` (rank, in[, kh, kw]), ``lora_up`` (out, rank[, 1, 1]), ``alpha``."""
    g = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for key, shape in specs:
        out_dim, in_dim = shape[0], shape[1]
        kernel = tuple(shape[2:])
        tensors[f"{key}.lora_down.weight"] = torch.randn((rank, in_dim, *kernel), generator=g) * 0.3
        tensors[f"{key}.lora_up.weight"] = torch.randn((out_dim, rank, *([1] * len(kernel))), generator=g) * 0.3
        if alpha is not None:
            tensors[f"{key}.alpha"] = torch.tensor(float(alpha))
    return tensors


def write_kohya_lora(
    path: Path,
    specs: Iterable[Spec],
    rank: int = 4,
    seed: int = 0,
    alpha: float | None = 2.0,
    metadata: dict[str, str] | None = None,
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(kohya_tensors(specs, rank, seed, alpha), str(path), metadata=metadata)
    return path


def write_header_only(path: Path, header: dict, data_bytes: int = 0) -> Path:
    """A safetensors file whose header says ``header``, followed by ``data_bytes`` zero bytes as a sparse file
    (a "1 GB" LoRA costs no disk); with fewer bytes than the header's offsets, the file looks truncated."""
    raw = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        f.truncate(8 + len(raw) + data_bytes)
    return path

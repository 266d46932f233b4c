"""Reading LoRA files: the safetensors header first, then the tensors, grouped per target module.

Layouts read (every key is renamed to kohya-ss's module key, ``lora_unet_<module path with _>`` or
``lora_te_text_model_<...>``, so that one key map serves them all):

- kohya-ss / AUTOMATIC1111: ``lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight``,
  ``.lora_up.weight``, ``.alpha``; LoCon is the same on the ResBlock convolutions (3x3 down, 1x1 up).
- diffusers / PEFT: ``unet.down_blocks.0.attentions.0.proj_in.lora_A.weight`` / ``lora_B``,
  ``text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight``, and diffusers' older
  attention-processor names (``attn1.processor.to_q_lora.down.weight``).
- LyCORIS LoHa (``hada_w1_a``, ``hada_w1_b``, ``hada_w2_a``, ``hada_w2_b``) and LoKr (``lokr_w1``/``lokr_w2`` or
  their ``_a``/``_b`` factors), without the Tucker (``hada_t1``/``lokr_t2``) variants.

A ``.safetensors`` file's JSON header is read and checked before any tensor: a LoRA made for SD 2.x or SDXL
(its metadata, a second text encoder, the 1024/2048-wide cross-attention of its keys) is refused there, so a
1 GB file for another architecture costs a few kilobytes of reading. ``.pt``/``.ckpt`` files are read with
``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

# A header is JSON text of a few hundred kB even for SDXL LoRAs with their training metadata.
MAX_HEADER_BYTES = 100 * 1024 * 1024
SD1_CONTEXT_DIM = 768
# Cross-attention (and text-encoder) widths of the other architectures, as their LoRAs' shapes show them.
OTHER_ARCHITECTURE_WIDTHS = {1024: "SD 2.x (1024-wide OpenCLIP text encoder)", 2048: "SDXL (2048-wide context)"}
# The tensor name suffixes of one module of each format, as stored after the module key.
LORA_PARTS = ("lora_down.weight", "lora_up.weight", "lora_mid.weight", "alpha")
LOHA_PARTS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
LOKR_PARTS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
KNOWN_PARTS = (*LORA_PARTS, *LOHA_PARTS, *LOKR_PARTS, "dora_scale")
LORA_SUFFIXES = (".safetensors", ".pt", ".ckpt")


class LoraFileError(ValueError):
    """A LoRA file that cannot be used; the message names the file and why."""


@dataclass
class LoraModule:
    """The tensors of one LoRA module (``parts`` by kohya part name, e.g. ``lora_down.weight``)."""

    key: str  # kohya module key, e.g. lora_unet_mid_block_attentions_0_proj_in
    parts: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """``lora``, ``loha`` or ``lokr``."""
        if any(p.startswith("hada_") for p in self.parts):
            return "loha"
        if any(p.startswith("lokr_") for p in self.parts):
            return "lokr"
        return "lora"

    @property
    def alpha(self) -> float | None:
        alpha = self.parts.get("alpha")
        return None if alpha is None else float(alpha.float().reshape(-1)[0])


@dataclass
class LoraNetwork:
    """A LoRA file read into memory: its modules by kohya key, and its metadata."""

    path: Path
    modules: dict[str, LoraModule]
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SafetensorsHeader:
    """What a ``.safetensors`` header says: tensor shapes and the ``__metadata__`` strings."""

    shapes: dict[str, tuple[int, ...]]
    metadata: dict[str, str]


def read_safetensors_header(path: Path) -> SafetensorsHeader:
    """The header of ``path`` (8-byte little-endian length, then JSON), checked against the file's size.

    Raises:
        LoraFileError: not a safetensors file (random bytes), truncated, or an inconsistent header.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise LoraFileError(f"{path.name} is not a .safetensors file: it has only {size} bytes")
            (length,) = struct.unpack("<Q", head)
            if length > min(MAX_HEADER_BYTES, size - 8):
                raise LoraFileError(
                    f"{path.name} is not a valid .safetensors file (truncated or not a LoRA): its header claims "
                    f"{length} bytes in a {size}-byte file"
                )
            raw = f.read(length)
    except OSError as err:
        raise LoraFileError(f"{path.name} cannot be read: {err}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise LoraFileError(f"{path.name} is not a valid .safetensors file: its header is not JSON") from None
    if not isinstance(header, dict):
        raise LoraFileError(f"{path.name} is not a valid .safetensors file: its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    data_bytes = size - 8 - length
    shapes: dict[str, tuple[int, ...]] = {}
    for name, info in header.items():
        try:
            shape = tuple(int(n) for n in info["shape"])
            start, end = (int(n) for n in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise LoraFileError(f"{path.name} has a damaged header entry for {name!r}") from None
        if end > data_bytes or start > end:
            raise LoraFileError(
                f"{path.name} is truncated: tensor {name!r} ends at byte {end} of the data, which has only "
                f"{data_bytes} bytes (an interrupted download?)"
            )
        shapes[name] = shape
    meta = {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, Mapping) else {}
    return SafetensorsHeader(shapes=shapes, metadata=meta)


def lora_metadata(path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a ``.safetensors`` LoRA (kohya's ``ss_*`` training fields); {} for other files."""
    if path.suffix.lower() != ".safetensors":
        return {}
    return read_safetensors_header(path).metadata


def module_key(tensor_name: str) -> tuple[str, str] | None:
    """``(kohya module key, part)`` of a tensor name in any supported layout; None for a key of no module.

    ``unet.down_blocks.0.attentions.0.proj_in.lora_A.weight`` ->
    ``("lora_unet_down_blocks_0_attentions_0_proj_in", "lora_down.weight")``.
    """
    name = tensor_name
    if name.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")):
        module, _, part = name.partition(".")
        return module, part
    for old, new in ((".lora_A.", ".lora_down."), (".lora_B.", ".lora_up.")):
        name = name.replace(old, new)
    # diffusers' attention-processor layout: attn1.processor.to_q_lora.down.weight
    if m := re.match(r"(.+)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(up|down)\.weight$", name):
        out = ".0" if m[2] == "to_out" else ""
        name = f"{m[1]}.{m[2]}{out}.lora_{m[3]}.weight"
    for marker in (".lora_down.", ".lora_up."):
        if marker in name:
            path, _, rest = name.partition(marker)
            part = marker.strip(".") + "." + rest
            break
    else:
        path, _, part = name.rpartition(".")
        if part != "alpha":
            return None
    prefixes = {"unet.": "lora_unet_", "text_encoder.": "lora_te_", "text_encoder_2.": "lora_te2_"}
    for prefix, kohya in prefixes.items():
        if path.startswith(prefix):
            rest = path[len(prefix) :]
            if kohya == "lora_te_" and not rest.startswith("text_model."):
                rest = "text_model." + rest
            return kohya + rest.replace(".", "_"), part
    return None


def other_architecture(shapes: Mapping[str, tuple[int, ...]], metadata: Mapping[str, str]) -> str | None:
    """Why a LoRA is for SD 2.x or SDXL rather than SD 1.x (None when nothing says so), from its header alone."""
    base = str(metadata.get("ss_base_model_version", ""))
    arch = str(metadata.get("modelspec.architecture", ""))
    if base.startswith("sdxl") or "-xl" in arch:
        return f"its metadata says it was trained on SDXL ({base or arch})"
    if str(metadata.get("ss_v2", "")) == "True" or base.startswith("sd_v2") or "-v2" in arch:
        return "its metadata says it was trained on SD 2.x (ss_v2)"
    for name, shape in shapes.items():
        if name.startswith(("lora_te1_", "lora_te2_", "text_encoder_2.")):
            return f"it has a second text encoder ({name.split('.')[0]}), which only SDXL has"
        if re.search(r"transformer_blocks[._]([1-9]\d*)[._]", name):
            return "it has attention blocks with several transformer blocks (transformer_blocks_1+), as SDXL's UNet"
        is_down = ".lora_down." in name or ".lora_A." in name
        if is_down and len(shape) == 2 and re.search(r"attn2[._]to_[kv]", name):
            width = shape[1]
            if width in OTHER_ARCHITECTURE_WIDTHS:
                return f"its cross-attention takes {width}-wide text features: {OTHER_ARCHITECTURE_WIDTHS[width]}"
        if is_down and len(shape) == 2 and (name.startswith("lora_te_") or name.startswith("text_encoder.")):
            if shape[1] == 1024 and "mlp_fc2" not in name and "mlp.fc2" not in name:
                return "its text-encoder layers are 1024 wide: SD 2.x's OpenCLIP text encoder"
    return None


def read_lora(path: Path) -> LoraNetwork:
    """Read ``path`` into a :class:`LoraNetwork` after checking its header (``.safetensors``).

    Raises:
        LoraFileError: unreadable, truncated or random bytes, made for SD 2.x/SDXL, or not a LoRA at all.
    """
    if not path.is_file():
        raise LoraFileError(f"LoRA file not found: {path}")
    metadata: dict[str, str] = {}
    if path.suffix.lower() == ".safetensors":
        header = read_safetensors_header(path)
        metadata = header.metadata
        refuse_other_architecture(path, header.shapes, metadata)
        tensors = _read_safetensors(path)
    else:
        tensors = _read_pickle(path)
        refuse_other_architecture(path, {k: tuple(v.shape) for k, v in tensors.items()}, {})
    return LoraNetwork(path=path, modules=group_modules(path, tensors), metadata=metadata)


def refuse_other_architecture(path: Path, shapes: Mapping[str, tuple[int, ...]], metadata: Mapping[str, str]) -> None:
    why = other_architecture(shapes, metadata)
    if why is not None:
        raise LoraFileError(f"{path.name} is a LoRA for another model family, not SD 1.x: {why}")


def group_modules(path: Path, tensors: Mapping[str, torch.Tensor]) -> dict[str, LoraModule]:
    """Tensors by module key; raises for a file with no LoRA tensors or with parts we cannot apply."""
    modules: dict[str, LoraModule] = {}
    ignored: list[str] = []
    for name, tensor in tensors.items():
        key = module_key(name)
        if key is None or key[1] not in KNOWN_PARTS:
            ignored.append(name)
            continue
        modules.setdefault(key[0], LoraModule(key[0])).parts[key[1]] = tensor
    if not modules:
        example = f" (e.g. {ignored[0]!r})" if ignored else ""
        raise LoraFileError(f"{path.name} holds no LoRA tensors that this app can read{example}")
    for module in modules.values():
        unsupported = {"dora_scale", "hada_t1", "hada_t2", "lokr_t2", "lora_mid.weight"} & set(module.parts)
        if unsupported:
            raise LoraFileError(
                f"{path.name} uses {', '.join(sorted(unsupported))} ({module.key}), a LyCORIS variant "
                "(DoRA or Tucker decomposition) that is not supported; plain LoRA, LoCon, LoHa and LoKr are"
            )
        if module.kind == "lora" and not {"lora_down.weight", "lora_up.weight"} <= set(module.parts):
            raise LoraFileError(f"{path.name} is incomplete: {module.key} lacks its lora_down or lora_up weight")
    return modules


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types; say which file
        raise LoraFileError(f"{path.name} could not be read as .safetensors: {err}") from None


def _read_pickle(path: Path) -> dict[str, torch.Tensor]:
    from webui.models.errors import CheckpointError
    from webui.models.sources import load_pickle_weights

    try:
        return load_pickle_weights(path)
    except CheckpointError as err:
        raise LoraFileError(str(err)) from None


def describe(network: LoraNetwork) -> dict[str, Any]:
    """Counts for logs and the UI: modules per part of the model and per format."""
    kinds: dict[str, int] = {}
    for module in network.modules.values():
        kinds[module.kind] = kinds.get(module.kind, 0) + 1
    unet = sum(1 for k in network.modules if k.startswith("lora_unet_"))
    return {"modules": len(network.modules), "unet": unet, "text_encoder": len(network.modules) - unet, **kinds}

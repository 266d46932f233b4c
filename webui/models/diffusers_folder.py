"""Diffusers-format model folders, read as if they were SD 1.x single files (the product never imports diffusers).

A diffusers folder (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
``scheduler/``) names UNet and VAE modules differently from CompVis. The maps below rename each
diffusers key to the CompVis key our modules use, so that loading a folder goes through exactly the
same code as a single file. The maps are the inverse of diffusers'
``convert_ldm_unet_checkpoint`` / ``convert_ldm_vae_checkpoint``; the tests check both directions
against diffusers itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from webui.models.checkpoint import TEXT_MODEL_PREFIX, UNET_PREFIX, VAE_PREFIX, text_encoder_keys
from webui.models.errors import ONLY_SD1, CheckpointError, MissingWeightsError, UnsupportedModelError
from webui.models.sources import TensorSource, open_single_file

_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
    "query": "q",
    "key": "k",
    "value": "v",
    "proj_attn": "proj_out",
}


def _resnet(rest: str) -> str:
    layer, _, param = rest.rpartition(".")
    if layer not in _RESNET:
        raise KeyError(rest)
    return f"{_RESNET[layer]}.{param}"


def _count(keys: Iterable[str], pattern: str) -> int:
    regex = re.compile(pattern)
    found = {int(m.group(1)) for k in keys if (m := regex.match(k))}
    return max(found) + 1 if found else 0


def unet_key_map(keys: Iterable[str]) -> dict[str, str]:
    """CompVis UNet key (without ``model.diffusion_model.``) -> diffusers ``unet/`` key."""
    keys = list(keys)
    n = _count(keys, r"down_blocks\.0\.resnets\.(\d+)\.")  # layers_per_block
    up_attention = {int(m.group(1)) for k in keys if (m := re.match(r"up_blocks\.(\d+)\.attentions\.", k))}
    rules: list[tuple[str, Callable[[re.Match[str]], str]]] = [
        (r"time_embedding\.linear_1\.(\w+)$", lambda m: f"time_embed.0.{m[1]}"),
        (r"time_embedding\.linear_2\.(\w+)$", lambda m: f"time_embed.2.{m[1]}"),
        (r"conv_in\.(\w+)$", lambda m: f"input_blocks.0.0.{m[1]}"),
        (r"conv_norm_out\.(\w+)$", lambda m: f"out.0.{m[1]}"),
        (r"conv_out\.(\w+)$", lambda m: f"out.2.{m[1]}"),
        (
            r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$",
            lambda m: f"input_blocks.{1 + int(m[1]) * (n + 1) + int(m[2])}.0.{_resnet(m[3])}",
        ),
        (
            r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)$",
            lambda m: f"input_blocks.{1 + int(m[1]) * (n + 1) + int(m[2])}.1.{m[3]}",
        ),
        (
            r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)$",
            lambda m: f"input_blocks.{(int(m[1]) + 1) * (n + 1)}.0.op.{m[2]}",
        ),
        (r"mid_block\.resnets\.(\d+)\.(.+)$", lambda m: f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"),
        (r"mid_block\.attentions\.0\.(.+)$", lambda m: f"middle_block.1.{m[1]}"),
        (
            r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$",
            lambda m: f"output_blocks.{int(m[1]) * (n + 1) + int(m[2])}.0.{_resnet(m[3])}",
        ),
        (
            r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)$",
            lambda m: f"output_blocks.{int(m[1]) * (n + 1) + int(m[2])}.1.{m[3]}",
        ),
        (
            r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)$",
            lambda m: f"output_blocks.{int(m[1]) * (n + 1) + n}.{2 if int(m[1]) in up_attention else 1}.conv.{m[2]}",
        ),
    ]
    return _apply_rules(keys, rules, "UNet")


def vae_key_map(keys: Iterable[str]) -> dict[str, str]:
    """CompVis VAE key (without ``first_stage_model.``) -> diffusers ``vae/`` key."""
    keys = list(keys)
    levels = _count(keys, r"decoder\.up_blocks\.(\d+)\.")

    def attention(m: re.Match[str]) -> str:
        layer, _, param = m[2].rpartition(".")
        if layer not in _VAE_ATTENTION:
            raise KeyError(m[0])
        return f"{m[1]}.mid.attn_1.{_VAE_ATTENTION[layer]}.{param}"

    def resnet(rest: str) -> str:
        return rest.replace("conv_shortcut", "nin_shortcut")

    rules: list[tuple[str, Callable[[re.Match[str]], str]]] = [
        (r"(encoder|decoder)\.(conv_in|conv_out)\.(\w+)$", lambda m: m[0]),
        (r"(encoder|decoder)\.conv_norm_out\.(\w+)$", lambda m: f"{m[1]}.norm_out.{m[2]}"),
        (r"(quant_conv|post_quant_conv)\.(\w+)$", lambda m: m[0]),
        (
            r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$",
            lambda m: f"encoder.down.{m[1]}.block.{m[2]}.{resnet(m[3])}",
        ),
        (
            r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)$",
            lambda m: f"encoder.down.{m[1]}.downsample.conv.{m[2]}",
        ),
        (
            r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)$",
            lambda m: f"{m[1]}.mid.block_{int(m[2]) + 1}.{resnet(m[3])}",
        ),
        (r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)$", attention),
        (
            r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$",
            lambda m: f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}.{resnet(m[3])}",
        ),
        (
            r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)$",
            lambda m: f"decoder.up.{levels - 1 - int(m[1])}.upsample.conv.{m[2]}",
        ),
    ]
    return _apply_rules(keys, rules, "VAE")


def _apply_rules(keys: list[str], rules: list[tuple[str, Callable[[re.Match[str]], str]]], what: str) -> dict[str, str]:
    compiled = [(re.compile(p), f) for p, f in rules]
    out: dict[str, str] = {}
    for key in keys:
        for regex, rename in compiled:
            if m := regex.match(key):
                try:
                    out[rename(m)] = key
                except KeyError:  # a layer name inside a block that SD 1.x does not have
                    pass
                break
    unknown = sorted(set(keys) - set(out.values()))
    if unknown:
        raise UnsupportedModelError(
            f"the diffusers {what} has {len(unknown)} tensors that an SD 1.x {what} does not have, "
            f"e.g. {unknown[:3]}. {ONLY_SD1}"
        )
    return out


def _weights_file(folder: Path, stems: tuple[str, ...]) -> Path:
    for stem in stems:
        for suffix in (".safetensors", ".fp16.safetensors", ".bin", ".fp16.bin"):
            path = folder / f"{stem}{suffix}"
            if path.is_file():
                return path
    if any(folder.glob("*.index.json")):
        raise CheckpointError(f"{folder} holds sharded weights, which are not supported for SD 1.x components.")
    raise MissingWeightsError(f"no weights file ({stems[0]}.safetensors) in {folder}")


def _vae_linear_to_conv(t: torch.Tensor) -> torch.Tensor:
    """diffusers stores the VAE's attention projections as linear layers; CompVis as 1x1 convolutions."""
    return t[:, :, None, None] if t.ndim == 2 else t


def is_diffusers_folder(path: Path) -> bool:
    return path.is_dir() and (path / "model_index.json").is_file()


def _alphas_cumprod_from_scheduler(folder: Path) -> torch.Tensor | None:
    from webui.models.noise_schedule import scaled_linear_alphas_cumprod

    config_path = folder / "scheduler" / "scheduler_config.json"
    if not config_path.is_file():
        return None
    config = json.loads(config_path.read_text())
    if config.get("prediction_type", "epsilon") != "epsilon":
        raise UnsupportedModelError(
            f"{folder.name} predicts {config['prediction_type']!r} (like SD 2.x 768-v models); SD 1.x predicts "
            f"the noise (epsilon). {ONLY_SD1}"
        )
    steps = int(config.get("num_train_timesteps", 1000))
    start, end = float(config.get("beta_start", 0.00085)), float(config.get("beta_end", 0.012))
    schedule = config.get("beta_schedule", "scaled_linear")
    if schedule == "scaled_linear":
        return scaled_linear_alphas_cumprod(steps, start, end)
    if schedule == "linear":
        return torch.cumprod(1.0 - torch.linspace(start, end, steps, dtype=torch.float32), dim=0)
    return None


class DiffusersFolderSource:
    """A diffusers SD 1.x folder presented with single-file (CompVis) tensor names."""

    def __init__(self, folder: Path):
        self.folder = folder
        index = json.loads((folder / "model_index.json").read_text())
        kind = str(index.get("_class_name", ""))
        if "XL" in kind:
            raise UnsupportedModelError(f"{folder.name} is a Stable Diffusion XL folder ({kind}). {ONLY_SD1}")
        if "Inpaint" in kind:
            raise UnsupportedModelError(f"{folder.name} is an inpainting model ({kind}). {ONLY_SD1}")
        if "text_encoder_2" in index:
            raise UnsupportedModelError(f"{folder.name} has two text encoders (SDXL). {ONLY_SD1}")
        for part in ("unet", "vae", "text_encoder"):
            if not (folder / part).is_dir():
                raise MissingWeightsError(f"the diffusers folder {folder} has no {part}/ subfolder")
        self._sources: list[TensorSource] = []
        self._map: dict[str, tuple[TensorSource, str, Callable[[torch.Tensor], torch.Tensor] | None]] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        parts = (
            ("unet", ("diffusion_pytorch_model",), UNET_PREFIX, unet_key_map, None),
            ("vae", ("diffusion_pytorch_model",), VAE_PREFIX, vae_key_map, _vae_linear_to_conv),
            ("text_encoder", ("model", "pytorch_model"), TEXT_MODEL_PREFIX, text_encoder_keys, None),
        )
        try:
            for sub, stems, prefix, key_map, transform in parts:
                source = open_single_file(_weights_file(folder / sub, stems))
                self._sources.append(source)
                shapes = source.shapes()
                for ours, theirs in key_map(shapes).items():
                    key = prefix + ours
                    shape = shapes[theirs]
                    if transform is not None and len(shape) == 2:
                        shape = (*shape, 1, 1)
                    self._map[key] = (source, theirs, transform)
                    self._shapes[key] = shape
        except CheckpointError as exc:
            self.close()
            raise type(exc)(f"{folder.name}: {exc}") from None
        self._alphas = _alphas_cumprod_from_scheduler(folder)
        if self._alphas is not None:
            self._shapes["alphas_cumprod"] = tuple(self._alphas.shape)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self._shapes)

    def get(self, key: str) -> torch.Tensor:
        if key == "alphas_cumprod" and self._alphas is not None:
            return self._alphas
        source, theirs, transform = self._map[key]
        tensor = source.get(theirs)
        return transform(tensor) if transform is not None else tensor

    def get_as(self, key: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """``get(key)`` converted while reading where the part's file can (see ``SafetensorsSource.get_as``)."""
        if key == "alphas_cumprod" and self._alphas is not None:
            return self._alphas
        source, theirs, transform = self._map[key]
        get_as = getattr(source, "get_as", None)
        tensor = get_as(theirs, dtype, device) if get_as is not None else source.get(theirs)
        return transform(tensor) if transform is not None else tensor

    def close(self) -> None:
        for source in self._sources:
            source.close()
        self._sources = []

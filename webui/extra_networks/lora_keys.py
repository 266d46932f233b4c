"""The key map from LoRA module keys to our weights, built once per model as plain data.

kohya-ss names a LoRA module after the *diffusers* module path with ``.`` -> ``_``
(``lora_unet_down_blocks_0_resnets_0_conv1``, ``lora_te_text_model_encoder_layers_0_mlp_fc1``); our UNet
uses the CompVis names (``input_blocks.1.0.in_layers.2``). :func:`lora_key_map` walks our UNet's blocks and
gives every ``Linear``/``Conv2d`` both names (early kohya files used the CompVis ones,
``lora_unet_input_blocks_1_1_proj_in``), and every ``Linear`` of the CLIP text model its kohya name.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from webui.models.unet import UNetModel

UNET, TEXT_ENCODER = "unet", "te"
# CompVis ResBlock layer -> diffusers ResnetBlock2D layer.
_RESNET_LAYERS = {
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}
_TOP_LEVEL = {"time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2", "out.2": "conv_out"}


@dataclass(frozen=True)
class LoraTarget:
    """One weight a LoRA module changes: which network, the module's name there, the weight's shape."""

    component: str  # UNET or TEXT_ENCODER
    module: str  # our module name, e.g. input_blocks.1.1.proj_in or encoder.layers.0.self_attn.q_proj
    shape: tuple[int, ...]

    @property
    def parameter(self) -> str:
        return f"{self.module}.weight"


def _kohya(prefix: str, module_path: str) -> str:
    return prefix + module_path.replace(".", "_")


def unet_diffusers_names(unet: UNetModel, num_res_blocks: int) -> dict[str, str]:
    """Our (CompVis) UNet module name -> the diffusers module name, for every Linear/Conv2d that has one."""
    from webui.models.unet import Downsample, ResBlock, SpatialTransformer, Upsample

    n = num_res_blocks
    blocks: dict[str, str] = {"input_blocks.0.0": "conv_in"}  # CompVis block prefix -> diffusers block prefix
    kinds: dict[str, type[nn.Module]] = {}
    stages = [("input_blocks", "down_blocks", unet.input_blocks), ("output_blocks", "up_blocks", unet.output_blocks)]
    for ours, theirs, stage in stages:
        for i, block in enumerate(stage):
            if ours == "input_blocks" and i == 0:
                continue
            level, j = ((i - 1) // (n + 1), (i - 1) % (n + 1)) if ours == "input_blocks" else divmod(i, n + 1)
            for k, child in enumerate(block.children()):
                if isinstance(child, ResBlock):
                    blocks[f"{ours}.{i}.{k}"] = f"{theirs}.{level}.resnets.{j}"
                elif isinstance(child, SpatialTransformer):
                    blocks[f"{ours}.{i}.{k}"] = f"{theirs}.{level}.attentions.{j}"
                elif isinstance(child, Downsample):
                    blocks[f"{ours}.{i}.{k}.op"] = f"{theirs}.{level}.downsamplers.0.conv"
                elif isinstance(child, Upsample):
                    blocks[f"{ours}.{i}.{k}.conv"] = f"{theirs}.{level}.upsamplers.0.conv"
                kinds[f"{ours}.{i}.{k}"] = type(child)
    for k, child in enumerate(unet.middle_block):
        name = f"middle_block.{k}"
        blocks[name] = f"mid_block.resnets.{k // 2}" if isinstance(child, ResBlock) else "mid_block.attentions.0"
        kinds[name] = type(child)
    names: dict[str, str] = {}
    for name, module in unet.named_modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        if name in _TOP_LEVEL:
            names[name] = _TOP_LEVEL[name]
            continue
        for prefix, target in blocks.items():
            if name == prefix:
                names[name] = target
                break
            if name.startswith(prefix + "."):
                rest = name[len(prefix) + 1 :]
                if kinds.get(prefix) is ResBlock:
                    if rest in _RESNET_LAYERS:
                        names[name] = f"{target}.{_RESNET_LAYERS[rest]}"
                else:
                    names[name] = f"{target}.{rest}"
                break
    return names


def lora_key_map(unet: UNetModel, text_model: nn.Module, num_res_blocks: int) -> dict[str, LoraTarget]:
    """kohya module key -> :class:`LoraTarget`, for the UNet (diffusers and CompVis spellings) and text encoder."""
    keys: dict[str, LoraTarget] = {}
    modules = dict(unet.named_modules())
    for ours, theirs in unet_diffusers_names(unet, num_res_blocks).items():
        target = LoraTarget(UNET, ours, tuple(modules[ours].weight.shape))
        keys[_kohya("lora_unet_", theirs)] = target
        keys.setdefault(_kohya("lora_unet_", ours), target)
    for name, module in text_model.named_modules():
        if isinstance(module, nn.Linear):
            path = name if name.startswith("text_model.") else f"text_model.{name}"
            keys[_kohya("lora_te_", path)] = LoraTarget(TEXT_ENCODER, name, tuple(module.weight.shape))
    return keys


def model_key_map(model: object) -> dict[str, LoraTarget]:
    """The key map of a loaded :class:`~webui.models.model.StableDiffusionModel`."""
    unet = model.unet  # type: ignore[attr-defined]
    return lora_key_map(unet, model.text_encoder.model, unet.config.num_res_blocks)  # type: ignore[attr-defined]


def target_parameter(model: object, target: LoraTarget) -> torch.nn.Parameter:
    """The weight ``target`` names in ``model``."""
    root = model.unet if target.component == UNET else model.text_encoder.model  # type: ignore[attr-defined]
    return root.get_parameter(target.parameter)

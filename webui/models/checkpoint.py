"""Stable Diffusion 1.x single-file checkpoints: the on-disk layout, and writing it.

A "single file" (``.safetensors`` or ``.ckpt``) holds three networks under CompVis prefixes
(Rombach et al. 2022, arXiv 2112.10752; ``configs/stable-diffusion/v1-inference.yaml``)::

    model.diffusion_model.*                      UNet        -> webui.models.unet.UNetModel
    first_stage_model.*                          VAE         -> webui.models.vae.AutoencoderKL
    cond_stage_model.transformer.text_model.*    CLIP text   -> transformers.CLIPTextModel
    alphas_cumprod                               (1000,) training noise schedule

Our modules are named exactly as those keys, so saving is "add the prefix" and loading
(:mod:`webui.models.loading`) is "strip the prefix, strict ``load_state_dict``".

Architecture inference (what :func:`webui.models.detect.infer_unet_config` and friends read
from tensor shapes; nothing extra is stored in the file):

- UNet: in/out channels, ``model_channels``, ``channel_mult``, ``num_res_blocks``,
  ``attention_resolutions`` and ``context_dim`` all come from weight shapes. The number of
  attention heads is not visible in the weights, so it is fixed at **8**, SD 1.x's value
  (CompVis ``v1-inference.yaml`` and ComfyUI do the same). Any UNet whose widths are multiples
  of 32 (needed by its group norms) works with 8 heads, so a small model you train yourself
  must use ``num_heads=8`` to load back identically.
- VAE: ``ch``, ``ch_mult``, ``num_res_blocks``, ``z_channels``, ``embed_dim`` from shapes;
  ``scale_factor`` is SD 1.x's 0.18215.
- CLIP text encoder: width, depth, MLP width, vocabulary and positions from shapes; the number
  of heads is **width // 64** (every OpenAI CLIP uses 64-wide heads), at least 1; activation
  ``quick_gelu`` as in OpenAI CLIP. A small text encoder must follow that rule to load back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from webui.models.noise_schedule import scaled_linear_alphas_cumprod

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."
TEXT_MODEL_PREFIX = TEXT_PREFIX + "text_model."  # what we write; files without ``text_model.`` exist too
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")


def text_encoder_keys(keys: Iterable[str]) -> dict[str, str]:
    """``transformers.CLIPTextModel`` key -> the same tensor's key in ``keys``.

    ``keys`` are CLIP text keys without ``cond_stage_model.transformer.``: with ``text_model.``
    (most files, and transformers 4 state dicts) or without it (older exports, transformers 5).
    A stored ``position_ids`` is a buffer that transformers 5 neither saves nor loads; it is
    dropped here, explicitly, so that loading can stay strict.
    """
    return {key.removeprefix("text_model."): key for key in keys if not key.endswith("position_ids")}


def single_file_state_dict(
    unet: nn.Module,
    vae: nn.Module,
    text_model: nn.Module,
    *,
    alphas_cumprod: torch.Tensor | None = None,
    extra: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """All tensors of an SD 1.x single file, keyed as CompVis checkpoints key them."""
    text_state = text_model.state_dict()
    state: dict[str, torch.Tensor] = {}
    for prefix, items in (
        (UNET_PREFIX, unet.state_dict().items()),
        (VAE_PREFIX, vae.state_dict().items()),
        (TEXT_MODEL_PREFIX, ((ours, text_state[theirs]) for ours, theirs in text_encoder_keys(text_state).items())),
    ):
        for key, tensor in items:
            state[prefix + key] = tensor
    state["alphas_cumprod"] = scaled_linear_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod
    state.update(extra or {})
    # safetensors refuses views that share storage; each tensor gets its own contiguous CPU copy.
    return {key: tensor.detach().to("cpu").contiguous().clone() for key, tensor in state.items()}


def save_single_file(
    path: str | Path,
    unet: nn.Module,
    vae: nn.Module,
    text_model: nn.Module,
    *,
    extra: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Write an SD 1.x single-file checkpoint that other SD 1.x tools (A1111, ComfyUI, diffusers) load.

    Args:
        path: destination; ``.safetensors`` (recommended) or ``.ckpt`` (a ``{"state_dict": ...}`` pickle
            of tensors only, readable with ``torch.load(weights_only=True)``), chosen by suffix.
        unet: a :class:`webui.models.unet.UNetModel` (its state dict is written under ``model.diffusion_model.``).
        vae: a :class:`webui.models.vae.AutoencoderKL` (under ``first_stage_model.``).
        text_model: a ``transformers.CLIPTextModel`` (under ``cond_stage_model.transformer.text_model.``).
        extra: more root tensors, e.g. ``{"alphas_cumprod": ...}`` to override the SD 1.x schedule.

    Returns the path written. The file is written to a temporary name first and then renamed, so a
    crash never leaves a half-written checkpoint under the final name.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in CHECKPOINT_SUFFIXES:
        raise ValueError(f"unsupported checkpoint suffix {path.suffix!r}: use .safetensors or .ckpt")
    state = single_file_state_dict(unet, vae, text_model, extra=extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(tmp), metadata={"format": "pt"})
    else:
        torch.save({"state_dict": state}, tmp)
    tmp.replace(path)
    return path

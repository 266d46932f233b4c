"""What a checkpoint is, and the sizes of its networks, read from tensor names and shapes alone.

Only shapes are looked at (no tensor data), so a memory-mapped multi-GB file is classified in
milliseconds. :func:`check_sd1` refuses other model families with a message that names them;
``infer_*_config`` rebuild the constructor arguments of our UNet, VAE and CLIP text model. The
head-count rules (not visible in weights) are documented in :mod:`webui.models.checkpoint`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from webui.models.checkpoint import TEXT_PREFIX, UNET_PREFIX, VAE_PREFIX, text_encoder_keys
from webui.models.errors import ONLY_SD1, CorruptCheckpointError, MissingWeightsError, UnsupportedModelError
from webui.models.unet import UNetConfig
from webui.models.vae import VAEConfig

Shapes = Mapping[str, tuple[int, ...]]

SD1_UNET_NUM_HEADS = 8
CLIP_HEAD_WIDTH = 64
SD2_CONTEXT_DIM = 1024


def strip_prefix(shapes: Shapes, prefix: str) -> dict[str, tuple[int, ...]]:
    return {k[len(prefix) :]: v for k, v in shapes.items() if k.startswith(prefix)}


def text_encoder_shapes(shapes: Shapes) -> dict[str, tuple[int, ...]]:
    """CLIP text weights keyed as transformers 5 keys them: with or without ``text_model.`` in the file."""
    text = strip_prefix(shapes, TEXT_PREFIX)
    return {ours: text[theirs] for ours, theirs in text_encoder_keys(text).items()}


def check_sd1(shapes: Shapes, source: str = "checkpoint") -> None:
    """Raise :class:`UnsupportedModelError` / :class:`MissingWeightsError` unless ``shapes`` is an SD 1.x model."""
    keys = shapes.keys()

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if has("conditioner.embedders."):
        raise UnsupportedModelError(f"{source} is a Stable Diffusion XL (SDXL) checkpoint. {ONLY_SD1}")
    if has(UNET_PREFIX + "joint_blocks.") or has(UNET_PREFIX + "x_embedder."):
        raise UnsupportedModelError(f"{source} is a Stable Diffusion 3 checkpoint. {ONLY_SD1}")
    if has(UNET_PREFIX + "double_blocks.") or has("double_blocks."):
        raise UnsupportedModelError(f"{source} is a Flux checkpoint. {ONLY_SD1}")
    lora_marks = (".lora_", "lora_down", ".lora.", "lora_A.")
    if has("lora_unet_") or has("lora_te_") or any(t in k for k in keys for t in lora_marks):
        raise UnsupportedModelError(
            f"{source} is a LoRA (a small add-on for a base model), not a full model. {ONLY_SD1}"
        )
    if has("cond_stage_model.model."):
        raise UnsupportedModelError(
            f"{source} is a Stable Diffusion 2.x checkpoint (OpenCLIP text encoder, 1024-wide context, "
            f"v-prediction). {ONLY_SD1}"
        )
    if has("down_blocks.") or has("encoder.down_blocks.") or has("text_model.encoder."):
        raise UnsupportedModelError(
            f"{source} holds a single diffusers component (UNet, VAE or text encoder) in diffusers names. "
            "Point at the whole diffusers folder (the one with model_index.json) or at an SD 1.x single file."
        )
    if not has(UNET_PREFIX):
        if has("encoder.conv_in.") or has("decoder.conv_in."):
            raise UnsupportedModelError(
                f"{source} is a standalone VAE, not a full model. {ONLY_SD1} Use a full SD 1.x checkpoint."
            )
        raise UnsupportedModelError(
            f"{source} is not a Stable Diffusion checkpoint: it has no UNet weights (model.diffusion_model.*). "
            f"{ONLY_SD1}"
        )

    unet = strip_prefix(shapes, UNET_PREFIX)
    if "label_emb.0.0.weight" in unet:
        raise UnsupportedModelError(f"{source} has a class-conditioned UNet (SDXL / unCLIP style). {ONLY_SD1}")
    in_shape = unet.get("input_blocks.0.0.weight")
    if in_shape is None or len(in_shape) != 4:
        raise CorruptCheckpointError(f"{source}: the UNet has no valid input convolution (input_blocks.0.0.weight).")
    in_channels = in_shape[1]
    if in_channels == 9:
        raise UnsupportedModelError(
            f"{source} is an inpainting model (its UNet takes 9 input channels: latent, mask and masked image). "
            f"{ONLY_SD1} Use a regular (4-channel) SD 1.x model; the app's inpainting works with those."
        )
    if in_channels == 8:
        raise UnsupportedModelError(
            f"{source} is an InstructPix2Pix model (its UNet takes 8 input channels: latent and source image). "
            f"{ONLY_SD1}"
        )
    if in_channels != 4:
        raise UnsupportedModelError(f"{source}: its UNet takes {in_channels} input channels, SD 1.x takes 4.")
    proj_in = [v for k, v in unet.items() if k.endswith(".proj_in.weight")]
    context = [v[1] for k, v in unet.items() if k.endswith("attn2.to_k.weight") and len(v) == 2]
    if any(len(v) == 2 for v in proj_in) or SD2_CONTEXT_DIM in context:
        raise UnsupportedModelError(
            f"{source} is a Stable Diffusion 2.x checkpoint (linear transformer projections, 1024-wide context). "
            f"{ONLY_SD1}"
        )
    if any(".transformer_blocks.1." in k for k in unet):
        raise UnsupportedModelError(f"{source} has several transformer blocks per level (SDXL style). {ONLY_SD1}")

    if not has(VAE_PREFIX):
        raise MissingWeightsError(
            f"{source} has no VAE (first_stage_model.*). Some files ship the UNet only; use a full SD 1.x checkpoint."
        )
    if not has(TEXT_PREFIX):
        raise MissingWeightsError(
            f"{source} has no CLIP text encoder (cond_stage_model.transformer.*). Use a full SD 1.x checkpoint."
        )
    text = text_encoder_shapes(shapes)
    width = text.get("embeddings.token_embedding.weight", (0, 0))[1]
    if width == SD2_CONTEXT_DIM:
        raise UnsupportedModelError(f"{source} has a 1024-wide text encoder (Stable Diffusion 2.x). {ONLY_SD1}")


def _get(shapes: Shapes, key: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(shapes[key])
    except KeyError:
        raise MissingWeightsError(f"the {what} is missing tensor {key!r}") from None


def _indices(shapes: Shapes, pattern: str) -> list[int]:
    """Sorted distinct integers N in keys matching ``pattern`` (a regex with one ``(\\d+)`` group)."""
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for k in shapes if (m := regex.match(k))})


def infer_unet_config(unet: Shapes) -> UNetConfig:
    """UNet sizes from ``model.diffusion_model.*`` shapes (prefix already stripped).

    Walks ``input_blocks``: a block with ``0.op`` is a downsampler that closes a level; a block with
    ``0.in_layers`` is a resblock whose output width gives the level's channel multiplier, and a
    ``1.proj_in`` next to it marks an attention level. Heads: fixed at 8 (SD 1.x).
    """
    model_channels, in_channels = _get(unet, "input_blocks.0.0.weight", "UNet")[:2]
    out_channels = _get(unet, "out.2.weight", "UNet")[0]
    levels: list[list[tuple[int, bool]]] = [[]]
    for i in _indices(unet, r"input_blocks\.(\d+)\.")[1:]:
        if f"input_blocks.{i}.0.op.weight" in unet:
            levels.append([])
        elif f"input_blocks.{i}.0.in_layers.2.weight" in unet:
            width = unet[f"input_blocks.{i}.0.in_layers.2.weight"][0]
            levels[-1].append((width, f"input_blocks.{i}.1.proj_in.weight" in unet))
        else:
            raise CorruptCheckpointError(f"UNet input block {i} is neither a resblock nor a downsampler")
    num_res_blocks = len(levels[0])
    channel_mult: list[int] = []
    attention_resolutions: list[int] = []
    for level, blocks in enumerate(levels):
        widths = {w for w, _ in blocks}
        attention = {a for _, a in blocks}
        if len(blocks) != num_res_blocks or len(widths) != 1 or len(attention) != 1 or widths.pop() % model_channels:
            raise CorruptCheckpointError(f"UNet level {level} does not have the regular SD 1.x structure")
        channel_mult.append(blocks[0][0] // model_channels)
        if attention.pop():
            attention_resolutions.append(2**level)
    context = [v[1] for k, v in unet.items() if k.endswith("attn2.to_k.weight")]
    if not context or num_res_blocks == 0:
        raise MissingWeightsError("the UNet has no cross-attention layers (attn2)")
    return UNetConfig(
        in_channels=in_channels,
        out_channels=out_channels,
        model_channels=model_channels,
        channel_mult=tuple(channel_mult),
        num_res_blocks=num_res_blocks,
        attention_resolutions=tuple(attention_resolutions),
        num_heads=SD1_UNET_NUM_HEADS,
        context_dim=context[0],
    )


def infer_vae_config(vae: Shapes) -> VAEConfig:
    """VAE sizes from ``first_stage_model.*`` shapes (prefix already stripped)."""
    ch, in_channels = _get(vae, "encoder.conv_in.weight", "VAE")[:2]
    levels = _indices(vae, r"encoder\.down\.(\d+)\.block\.0\.conv2\.weight")
    if not levels or levels != list(range(len(levels))):
        raise MissingWeightsError("the VAE encoder has no regular down levels (encoder.down.N.block.M)")
    ch_mult = []
    for level in levels:
        width = vae[f"encoder.down.{level}.block.0.conv2.weight"][0]
        if width % ch:
            raise CorruptCheckpointError(f"VAE level {level} width {width} is not a multiple of {ch}")
        ch_mult.append(width // ch)
    num_res_blocks = len(_indices(vae, r"encoder\.down\.0\.block\.(\d+)\.conv1\.weight"))
    z_channels = _get(vae, "decoder.conv_in.weight", "VAE")[1]
    embed_dim = _get(vae, "post_quant_conv.weight", "VAE")[1]
    return VAEConfig(
        in_channels=in_channels,
        ch=ch,
        ch_mult=tuple(ch_mult),
        num_res_blocks=num_res_blocks,
        z_channels=z_channels,
        embed_dim=embed_dim,
    )


def infer_text_config_kwargs(text: Shapes) -> dict[str, int | str]:
    """``CLIPTextConfig`` arguments from CLIP text shapes (keys without ``text_model.``).

    Heads = width // 64 (at least 1): OpenAI CLIP's text transformers all use 64-wide heads
    (Radford et al. 2021, arXiv 2103.00020), e.g. 768 wide -> 12 heads for SD 1.x.
    """
    vocab_size, hidden_size = _get(text, "embeddings.token_embedding.weight", "text encoder")
    max_positions = _get(text, "embeddings.position_embedding.weight", "text encoder")[0]
    layers = _indices(text, r"encoder\.layers\.(\d+)\.")
    if not layers or layers != list(range(len(layers))):
        raise MissingWeightsError("the text encoder has no transformer layers (encoder.layers.N)")
    intermediate = _get(text, "encoder.layers.0.mlp.fc1.weight", "text encoder")[0]
    return {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate,
        "num_hidden_layers": len(layers),
        "num_attention_heads": max(1, hidden_size // CLIP_HEAD_WIDTH),
        "max_position_embeddings": max_positions,
        "hidden_act": "quick_gelu",
    }

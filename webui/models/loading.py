"""Load an SD 1.x model from a single file or a diffusers folder into a :class:`StableDiffusionModel`.

The architecture is inferred from tensor shapes (:mod:`webui.models.detect`; the head-count rules are
in :mod:`webui.models.checkpoint`). Networks are created on the meta device (no random initialisation)
and filled with ``load_state_dict(assign=True)`` one tensor at a time, read lazily from the
memory-mapped file (:mod:`webui.models.sources`), so a multi-GB file never needs twice its size in RAM.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from webui.models.checkpoint import TEXT_PREFIX, UNET_PREFIX, VAE_PREFIX, text_encoder_keys
from webui.models.detect import (
    check_sd1,
    infer_text_config_kwargs,
    infer_unet_config,
    infer_vae_config,
    strip_prefix,
)
from webui.models.errors import (
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    MissingWeightsError,
    TokenizerNotFoundError,
    UnsupportedModelError,
)
from webui.models.hashing import file_sha256, short_hash
from webui.models.model import SD1_NATIVE_SIZE, StableDiffusionModel
from webui.models.noise_schedule import scaled_linear_alphas_cumprod
from webui.models.sources import TensorSource
from webui.models.text_encoder import TextEncoder, load_tokenizer
from webui.models.unet import UNetModel
from webui.models.vae import AutoencoderKL

WEIGHTS_FILE_SUFFIXES = (".safetensors", ".ckpt")


def load_model(
    path: str | Path,
    *,
    tokenizer: str | Path | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    name: str | None = None,
    vae_dtype: torch.dtype | None = None,
    native_size: tuple[int, int] | None = None,
    compute_hash: bool = True,
    text_encoder_dtype: torch.dtype | None = None,
) -> StableDiffusionModel:
    """Load an SD 1.x model from a single file (``.safetensors`` / ``.ckpt``) or a diffusers folder.

    Args:
        path: the checkpoint file or diffusers folder (or a folder holding exactly one checkpoint file).
        tokenizer: where the CLIP tokenizer is if the model has none of its own (a ``tokenizer/``
            folder next to the file, or in a diffusers folder): a local folder or a Hugging Face hub id
            already in the local cache (never downloaded here).
        device, dtype: where the networks go and their precision (integer tensors keep theirs).
        name: display name; the file stem by default.
        vae_dtype: the VAE's precision if different from ``dtype`` (e.g. float32 for fp16 models whose
            VAE overflows).
        native_size: (width, height) the model was trained at; 512x512 by default.
        compute_hash: read the whole file once for its sha256 (A1111's model hash).
        text_encoder_dtype: the text encoder's precision if different from ``dtype``
            (:mod:`webui.models.precision` keeps it float32 where the UNet runs in bf16 on a CPU).

    Raises:
        CheckpointError: one of its subclasses, with a message that says what is wrong with the input.
    """
    from webui.models.diffusers_folder import DiffusersFolderSource, is_diffusers_folder
    from webui.models.sources import open_single_file

    path = Path(path)
    device = torch.device(device)
    if not path.exists():
        raise CheckpointNotFoundError(f"model not found: {path}")
    if path.is_dir() and not is_diffusers_folder(path):
        path = _single_weights_file_in(path)
    source: TensorSource = DiffusersFolderSource(path) if path.is_dir() else open_single_file(path)
    try:
        shapes = source.shapes()
        check_sd1(shapes, source=path.name)
        unet_shapes = strip_prefix(shapes, UNET_PREFIX)
        vae_keys = {
            k[len(VAE_PREFIX) :]: k
            for k in shapes
            if k.startswith(VAE_PREFIX) and not k.startswith(VAE_PREFIX + "loss.")
        }
        text_keys = {
            ours: TEXT_PREFIX + theirs for ours, theirs in text_encoder_keys(strip_prefix(shapes, TEXT_PREFIX)).items()
        }
        try:
            unet_config = infer_unet_config(unet_shapes)
            vae_config = infer_vae_config({k: shapes[v] for k, v in vae_keys.items()})
            text_kwargs = infer_text_config_kwargs({k: shapes[v] for k, v in text_keys.items()})
        except CheckpointError as exc:
            raise type(exc)(f"{path.name}: {exc}") from None
        if unet_config.context_dim != text_kwargs["hidden_size"]:
            raise CorruptCheckpointError(
                f"{path.name}: the UNet expects {unet_config.context_dim}-wide text features but the text encoder "
                f"makes {text_kwargs['hidden_size']}-wide ones"
            )
        clip_tokenizer = load_tokenizer(
            _tokenizer_candidates(path),
            str(tokenizer) if tokenizer is not None else None,
            model_name=name or path.stem,
            hint_folder=_tokenizer_candidates(path)[0],
        )
        if len(clip_tokenizer) != text_kwargs["vocab_size"]:
            raise TokenizerNotFoundError(
                f"{path.name}: the tokenizer has {len(clip_tokenizer)} tokens but the text encoder has "
                f"{text_kwargs['vocab_size']} token embeddings; they do not belong together"
            )

        with torch.device("meta"):
            unet = UNetModel(unet_config)
            vae = AutoencoderKL(vae_config)
        try:
            _materialize(unet, {k: UNET_PREFIX + k for k in unet_shapes}, source, device, dtype, "UNet")
            _materialize(vae, vae_keys, source, device, vae_dtype or dtype, "VAE")
            text_model = _build_text_model(
                text_kwargs, clip_tokenizer, text_keys, source, device, text_encoder_dtype or dtype
            )
        except CheckpointError as exc:
            raise type(exc)(f"{path.name}: {exc}") from None
        alphas_cumprod = _alphas_cumprod(source, shapes)
    finally:
        source.close()

    sha256 = file_sha256(path) if compute_hash and path.is_file() else None
    return StableDiffusionModel(
        unet=unet,
        vae=vae,
        text_encoder=TextEncoder(clip_tokenizer, text_model),
        alphas_cumprod=alphas_cumprod,
        name=name or path.stem,
        short_hash=short_hash(sha256) if sha256 else None,
        device=device,
        dtype=dtype,
        vae_dtype=vae_dtype,
        native_size=native_size or SD1_NATIVE_SIZE,
        path=path,
        sha256=sha256,
    )


def _materialize(
    module: nn.Module,
    key_map: Mapping[str, str],
    source: TensorSource,
    device: torch.device,
    dtype: torch.dtype,
    what: str,
) -> nn.Module:
    """Fill a meta-device ``module`` with tensors from ``source``, one tensor at a time, converted on the way."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in key_map]
    if missing:
        raise MissingWeightsError(f"the {what} is missing {len(missing)} tensors, e.g. {missing[:3]}")
    unexpected = [k for k in key_map if k not in expected]
    if unexpected:
        raise UnsupportedModelError(
            f"the {what} has {len(unexpected)} tensors that an SD 1.x {what} does not have, e.g. {unexpected[:3]}"
        )
    state = {}
    # A source that converts while reading (safetensors files: one reused scratch buffer, issue 19) does it.
    get_as = getattr(source, "get_as", None)
    for key, reference in expected.items():
        tensor = get_as(key_map[key], dtype, device) if get_as is not None else source.get(key_map[key])
        if tensor.shape != reference.shape:
            if tensor.numel() == reference.numel() and what == "VAE":  # linear vs 1x1-conv attention projections
                tensor = tensor.reshape(reference.shape)
            else:
                raise CorruptCheckpointError(
                    f"the {what} tensor {key!r} has shape {tuple(tensor.shape)}, expected {tuple(reference.shape)}"
                )
        target = dtype if tensor.is_floating_point() else tensor.dtype
        state[key] = tensor.to(device=device, dtype=target)
    module.load_state_dict(state, strict=True, assign=True)
    return module.requires_grad_(False).eval()


def _build_text_model(
    kwargs: Mapping[str, Any],
    tokenizer: Any,
    key_map: Mapping[str, str],
    source: TensorSource,
    device: torch.device,
    dtype: torch.dtype,
) -> nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel

    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    config = CLIPTextConfig(**kwargs, bos_token_id=tokenizer.bos_token_id, eos_token_id=eos, pad_token_id=pad)
    with torch.device("meta"):
        model = CLIPTextModel(config)
    _materialize(model, key_map, source, device, dtype, "text encoder")
    # A non-persistent buffer is not in any checkpoint: rebuild it on the real device.
    positions = torch.arange(config.max_position_embeddings, device=device).expand((1, -1))
    model.embeddings.register_buffer("position_ids", positions, persistent=False)
    return model


def _alphas_cumprod(source: TensorSource, shapes: Mapping[str, tuple[int, ...]]) -> torch.Tensor:
    """The file's schedule if it has one that differs from SD 1.x's; else the exact float32 SD 1.x schedule.

    Many fp16 files store ``alphas_cumprod`` in half precision; the exact schedule avoids that rounding.
    """
    reference = scaled_linear_alphas_cumprod()
    if shapes.get("alphas_cumprod") != tuple(reference.shape):
        return reference
    stored = source.get("alphas_cumprod").to("cpu", torch.float32)
    return reference if torch.allclose(stored, reference, rtol=0, atol=1e-3) else stored


def _single_weights_file_in(folder: Path) -> Path:
    """A model folder such as ``models/demo/`` holding one single file (and its ``tokenizer/``)."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in WEIGHTS_FILE_SUFFIXES and p.is_file())
    if len(files) != 1:
        found = f"{len(files)} weights files" if files else "no .safetensors/.ckpt file"
        raise CheckpointError(
            f"{folder} is not a diffusers model folder (no model_index.json) and holds {found}; "
            "point at one checkpoint file or at a diffusers folder"
        )
    return files[0]


def _tokenizer_candidates(path: Path) -> list[Path]:
    return [path / "tokenizer"] if path.is_dir() else [path.parent / "tokenizer"]

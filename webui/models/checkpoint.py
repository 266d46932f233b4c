"""Stable Diffusion 1.x single-file checkpoints: the in-memory model and the on-disk layout.

A "single file" (``.safetensors`` or ``.ckpt``) holds three networks under CompVis prefixes
(Rombach et al. 2022, arXiv 2112.10752; ``configs/stable-diffusion/v1-inference.yaml``)::

    model.diffusion_model.*                      UNet        -> webui.models.unet.UNetModel
    first_stage_model.*                          VAE         -> webui.models.vae.AutoencoderKL
    cond_stage_model.transformer.text_model.*    CLIP text   -> transformers.CLIPTextModel
    alphas_cumprod                               (1000,) training noise schedule

Our modules are named exactly as those keys, so saving is "add the prefix" and loading is
"strip the prefix, strict ``load_state_dict``".

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

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from webui.models.detect import (
    TEXT_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
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
    UnsafeCheckpointError,
    UnsupportedModelError,
)
from webui.models.registry import SD1_NATIVE_SIZE
from webui.models.text_encoder import TextEncoder, load_tokenizer
from webui.models.unet import UNetModel
from webui.models.vae import AutoencoderKL

__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "CorruptCheckpointError",
    "MissingWeightsError",
    "StableDiffusionModel",
    "TokenizerNotFoundError",
    "UnsafeCheckpointError",
    "UnsupportedModelError",
    "file_sha256",
    "load_model",
    "save_single_file",
    "single_file_state_dict",
    "vae_decode",
    "vae_encode",
]

TEXT_MODEL_PREFIX = TEXT_PREFIX + "text_model."


def _text_model_state_dict(text_model: nn.Module) -> dict[str, torch.Tensor]:
    """The CLIP text model's weights keyed as in transformers 5 (no ``text_model.``, no ``position_ids``)."""
    state = {}
    for key, tensor in text_model.state_dict().items():
        key = key.removeprefix("text_model.")
        if key.endswith("position_ids"):
            continue
        state[key] = tensor
    return state


def single_file_state_dict(
    unet: nn.Module,
    vae: nn.Module,
    text_model: nn.Module,
    *,
    alphas_cumprod: torch.Tensor | None = None,
    extra: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """All tensors of an SD 1.x single file, keyed as CompVis checkpoints key them."""
    from webui.models.noise_schedule import scaled_linear_alphas_cumprod

    state: dict[str, torch.Tensor] = {}
    for prefix, items in (
        (UNET_PREFIX, unet.state_dict().items()),
        (VAE_PREFIX, vae.state_dict().items()),
        (TEXT_MODEL_PREFIX, _text_model_state_dict(text_model).items()),
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
    state = single_file_state_dict(unet, vae, text_model, extra=extra)
    suffix = path.suffix.lower()
    if suffix not in (".safetensors", ".ckpt", ".pt", ".pth"):
        raise ValueError(f"unsupported checkpoint suffix {path.suffix!r}: use .safetensors or .ckpt")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(tmp), metadata={"format": "pt"})
    else:
        torch.save({"state_dict": state}, tmp)
    tmp.replace(path)
    return path


@dataclass
class StableDiffusionModel:
    """A loaded SD 1.x model: three networks, the training noise schedule and where they live."""

    unet: UNetModel
    vae: AutoencoderKL
    text_encoder: TextEncoder
    alphas_cumprod: torch.Tensor  # (1000,) float32, on the CPU
    name: str
    short_hash: str | None  # first 10 hex digits of the file's sha256 (A1111's "Model hash")
    device: torch.device
    dtype: torch.dtype
    vae_dtype: torch.dtype | None = None  # None: same as ``dtype``; becomes float32 after an fp16 NaN retry
    native_size: tuple[int, int] = SD1_NATIVE_SIZE  # (width, height) the model was trained at
    path: Path | None = None
    sha256: str | None = None
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def scale_factor(self) -> float:
        return self.vae.config.scale_factor

    @property
    def latent_channels(self) -> int:
        return self.unet.config.in_channels

    @property
    def downscale(self) -> int:
        """Image pixels per latent pixel (8 for SD 1.x)."""
        return self.vae.config.downscale


def file_sha256(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _materialize(module: nn.Module, key_map: Mapping[str, str], source, device: torch.device, dtype: torch.dtype,
                 what: str) -> nn.Module:
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
    for key, reference in expected.items():
        tensor = source.get(key_map[key])
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


def _build_text_model(kwargs: dict, tokenizer, key_map: Mapping[str, str], source, device, dtype) -> nn.Module:
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


def _alphas_cumprod(source, shapes) -> torch.Tensor:
    """The file's schedule if it has one that differs from SD 1.x's; else the exact float32 SD 1.x schedule.

    Many fp16 files store ``alphas_cumprod`` in half precision; the exact schedule avoids that rounding.
    """
    from webui.models.noise_schedule import scaled_linear_alphas_cumprod

    reference = scaled_linear_alphas_cumprod()
    if shapes.get("alphas_cumprod") != tuple(reference.shape):
        return reference
    stored = source.get("alphas_cumprod").to("cpu", torch.float32)
    return reference if torch.allclose(stored, reference, rtol=0, atol=1e-3) else stored


def _single_weights_file_in(folder: Path) -> Path:
    """A model folder such as ``models/demo/`` holding one single file (and its ``tokenizer/``)."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".safetensors", ".ckpt") and p.is_file())
    if len(files) != 1:
        found = f"{len(files)} weights files" if files else "no .safetensors/.ckpt file"
        raise CheckpointError(
            f"{folder} is not a diffusers model folder (no model_index.json) and holds {found}; "
            "point at one checkpoint file or at a diffusers folder"
        )
    return files[0]


def _tokenizer_candidates(path: Path) -> list[Path]:
    return [path / "tokenizer"] if path.is_dir() else [path.parent / "tokenizer"]


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
) -> StableDiffusionModel:
    """Load an SD 1.x model from a single file (``.safetensors`` / ``.ckpt``) or a diffusers folder.

    The architecture is inferred from tensor shapes (see the module docstring for the head-count
    rules). Networks are created on the meta device (no random initialisation) and filled with
    ``load_state_dict(assign=True)`` one tensor at a time, read lazily from the memory-mapped file.

    Args:
        path: the checkpoint file or diffusers folder.
        tokenizer: where the CLIP tokenizer is if the model has none of its own (a ``tokenizer/``
            folder next to the file, or in a diffusers folder): a local folder or a Hugging Face hub id
            already in the local cache (never downloaded here).
        device, dtype: where the networks go and their precision (integer tensors keep theirs).
        name: display name; the file stem by default.
        vae_dtype: the VAE's precision if different from ``dtype`` (e.g. float32 for fp16 models whose
            VAE overflows).
        native_size: (width, height) the model was trained at; 512x512 by default.
        compute_hash: read the whole file once for its sha256 (A1111's model hash).

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
    source = DiffusersFolderSource(path) if path.is_dir() else open_single_file(path)
    try:
        shapes = source.shapes()
        check_sd1(shapes, source=path.name)
        unet_shapes = strip_prefix(shapes, UNET_PREFIX)
        vae_keys = {k[len(VAE_PREFIX):]: k for k in shapes
                    if k.startswith(VAE_PREFIX) and not k.startswith(VAE_PREFIX + "loss.")}
        text_keys = {k[len(TEXT_PREFIX):].removeprefix("text_model."): k for k in shapes
                     if k.startswith(TEXT_PREFIX) and not k.endswith("position_ids")}
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
            _tokenizer_candidates(path), str(tokenizer) if tokenizer is not None else None,
            model_name=name or path.stem, hint_folder=_tokenizer_candidates(path)[0],
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
            text_model = _build_text_model(text_kwargs, clip_tokenizer, text_keys, source, device, dtype)
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
        short_hash=sha256[:10] if sha256 else None,
        device=device,
        dtype=dtype,
        vae_dtype=vae_dtype,
        native_size=native_size or SD1_NATIVE_SIZE,
        path=path,
        sha256=sha256,
    )


def _vae_call(model: StableDiffusionModel, fn, x: torch.Tensor) -> torch.Tensor:
    """Run ``fn(vae, x)`` in the VAE's precision; if half precision overflows to NaN/inf, redo it in float32.

    SD 1.x's VAE is known to overflow in fp16 on some inputs (the reason for A1111's ``--no-half-vae``).
    After one overflow the VAE stays in float32 for the rest of the session (``model.vae_dtype``).
    """
    dtype = model.vae_dtype or model.dtype
    with torch.no_grad():
        out = fn(model.vae, x.to(model.device, dtype))
        if dtype != torch.float32 and not torch.isfinite(out).all():
            model.vae.to(torch.float32)
            model.vae_dtype = torch.float32
            out = fn(model.vae, x.to(model.device, torch.float32))
    return out.float()


def vae_decode(model: StableDiffusionModel, latents: torch.Tensor) -> torch.Tensor:
    """Sampler-space latents (B, 4, h, w) -> float32 images (B, 3, 8h, 8w) in [-1, 1].

    Divides by the VAE's ``scale_factor`` (0.18215) first (Rombach et al. 2022, section 4.3.2).
    """
    images = _vae_call(model, lambda vae, z: vae.decode(z), latents / model.scale_factor)
    return images.clamp(-1.0, 1.0)


def vae_encode(model: StableDiffusionModel, images: torch.Tensor, generator: torch.Generator | None = None
               ) -> torch.Tensor:
    """Images (B, 3, H, W) in [-1, 1] -> sampler-space latents, multiplied by ``scale_factor``.

    With a ``generator``, the latent is sampled from the encoder's Gaussian (mean + std * noise, noise drawn
    on the generator's device, as diffusers' img2img does); without one, the mean is used.
    """
    def encode(vae: AutoencoderKL, x: torch.Tensor) -> torch.Tensor:
        mean, logvar = vae.encode(x)
        if generator is None:
            return mean
        noise = torch.randn(mean.shape, generator=generator, device=generator.device, dtype=torch.float32)
        return mean + torch.exp(0.5 * logvar) * noise.to(mean.device, mean.dtype)

    return _vae_call(model, encode, images) * model.scale_factor

"""Separate VAE files (AUTOMATIC1111's "SD VAE" setting): find them, load them, swap them into a loaded model.

Layouts read:

- ``.safetensors`` / ``.pt`` / ``.ckpt`` with the VAE's CompVis names, with or without the checkpoint's
  ``first_stage_model.`` prefix (``vae-ft-mse-840000-ema-pruned`` has none); ``loss.*`` and ``model_ema.*``
  entries (training leftovers) are dropped. Pickles are read weights-only (:mod:`webui.models.sources`).
- diffusers ``AutoencoderKL`` folders (``config.json`` + ``diffusion_pytorch_model.safetensors``), mapped onto
  the CompVis names with the same key map as diffusers model folders.

Choices, as A1111 names them: ``"Automatic"`` is the model's own default (its ``models.yaml`` ``vae:``, else
a ``<checkpoint>.vae.safetensors|pt|ckpt`` next to the checkpoint, else the baked-in VAE); ``"None"`` is
the VAE inside the checkpoint; any other value is a name from the VAE folder (A1111's ``model_name``, the
file name with its suffix, or the diffusers folder's name).

Swapping replaces ``model.vae`` only: the UNet and the text encoder are not touched or reloaded. The
baked-in VAE is kept (on the CPU while unused) so that "None" brings it back without reading the checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from webui.extra_networks.files import find_files
from webui.models.checkpoint import VAE_PREFIX
from webui.models.errors import CheckpointError, UnsupportedModelError
from webui.models.hashing import file_sha256, short_hash
from webui.models.model import StableDiffusionModel
from webui.models.sources import TensorSource
from webui.models.vae import AutoencoderKL

VAE_SUFFIXES = (".safetensors", ".pt", ".ckpt")
AUTOMATIC, NONE = "Automatic", "None"
NEAR_CHECKPOINT_SUFFIXES = (".vae.safetensors", ".vae.pt", ".vae.ckpt")
_IGNORED_PREFIXES = ("loss.", "model_ema.")


class VaeError(ValueError):
    """A VAE choice or file that cannot be used; the message names it and why."""


@dataclass(frozen=True)
class VaeFile:
    """One VAE the user can choose: ``name`` as the dropdown and A1111's API show it, ``path`` on disk."""

    name: str
    path: Path

    @property
    def is_folder(self) -> bool:
        return self.path.is_dir()


def is_diffusers_vae_folder(folder: Path) -> bool:
    config = folder / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("_class_name") == "AutoencoderKL"
    except (OSError, ValueError, AttributeError):
        return False


def find_vae_files(folder: Path) -> list[VaeFile]:
    """VAE files and diffusers VAE folders under ``folder`` (sub-folders too), sorted by name.

    A missing folder is empty. Weight files inside a diffusers VAE folder are that folder, not VAEs of their own.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    folders = [config.parent for config in folder.rglob("config.json") if is_diffusers_vae_folder(config.parent)]
    found = [VaeFile(f.name, f) for f in folders]
    for path in find_files(folder, VAE_SUFFIXES):
        if not any(f in path.parents for f in folders):
            found.append(VaeFile(path.name, path))
    return sorted(found, key=lambda vae: (vae.name.lower(), str(vae.path)))


def _open(path: Path) -> tuple[TensorSource, dict[str, str]]:
    """The tensor source of a VAE file or folder and its key map: CompVis VAE key -> source key."""
    from webui.models.diffusers_folder import _weights_file, vae_key_map
    from webui.models.sources import open_single_file

    if path.is_dir():
        source = open_single_file(_weights_file(path, ("diffusion_pytorch_model",)))
        return source, vae_key_map(source.shapes())
    source = open_single_file(path)
    keys = list(source.shapes())
    if any(key.startswith(VAE_PREFIX) for key in keys):
        # A whole checkpoint, or a VAE saved with the checkpoint's prefix: only the first-stage model counts.
        key_map = {key[len(VAE_PREFIX) :]: key for key in keys if key.startswith(VAE_PREFIX)}
    else:
        key_map = {key: key for key in keys}
    return source, {ours: theirs for ours, theirs in key_map.items() if not ours.startswith(_IGNORED_PREFIXES)}


def load_vae_file(
    path: Path, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, scale_factor: float = 0.18215
) -> AutoencoderKL:
    """A VAE file or diffusers VAE folder as our :class:`AutoencoderKL` (strict: every tensor must fit).

    Raises:
        VaeError: the file is missing, damaged, unsafe or not an SD 1.x VAE (one message that says which).
    """
    from webui.models.detect import infer_vae_config
    from webui.models.loading import _materialize

    path = Path(path)
    if not path.exists():
        raise VaeError(f"VAE not found: {path}")
    try:
        source, key_map = _open(path)
        try:
            shapes = source.shapes()
            vae_shapes = {ours: shapes[theirs] for ours, theirs in key_map.items()}
            vae_shapes = {k: (*s, 1, 1) if path.is_dir() and len(s) == 2 else s for k, s in vae_shapes.items()}
            config = replace(infer_vae_config(vae_shapes), scale_factor=scale_factor)
            if config.z_channels != 4:
                raise UnsupportedModelError(f"it has {config.z_channels} latent channels; SD 1.x uses 4")
            with torch.device("meta"):
                vae = AutoencoderKL(config)
            _materialize(
                vae, key_map, _Reshaping(source) if path.is_dir() else source, torch.device(device), dtype, "VAE"
            )
        finally:
            source.close()
    except CheckpointError as err:
        raise VaeError(f"{path.name}: not a usable SD 1.x VAE: {err}") from None
    return vae


class _Reshaping:
    """diffusers stores the VAE attention projections as linear layers; CompVis as 1x1 convolutions."""

    def __init__(self, source: TensorSource) -> None:
        self.source = source

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return self.source.shapes()

    def get(self, key: str) -> torch.Tensor:
        tensor = self.source.get(key)
        return tensor[:, :, None, None] if tensor.ndim == 2 else tensor

    def close(self) -> None:
        self.source.close()


def vae_near_checkpoint(checkpoint: Path | None) -> Path | None:
    """A1111's ``<checkpoint stem>.vae.safetensors|pt|ckpt`` next to a single-file checkpoint, if there is one."""
    if checkpoint is None or not checkpoint.is_file():
        return None
    stem = checkpoint.with_suffix("")
    for suffix in NEAR_CHECKPOINT_SUFFIXES:
        candidate = stem.parent / f"{stem.name}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def resolve_vae_choice(
    choice: str | None, files: list[VaeFile], model_default: str | None, checkpoint: Path | None, root: Path
) -> Path | None:
    """The VAE file a choice means for a model; None means the checkpoint's baked-in VAE.

    Args:
        choice: ``"Automatic"`` (or None), ``"None"``, or a name from ``files`` (a path is also accepted).
        files: the VAE folder's contents (:func:`find_vae_files`).
        model_default: the model's ``models.yaml`` ``vae:`` (a name from ``files`` or a path relative to ``root``).
        checkpoint: the model's file, for A1111's ``<checkpoint>.vae.*`` rule.
        root: the folder ``models.yaml`` paths are relative to.

    Raises:
        VaeError: an unknown name (with the names there are).
    """
    if choice is None or choice == AUTOMATIC:
        if model_default:
            return _named(model_default, files, root, f"the models.yaml vae: of this model ({model_default!r})")
        return vae_near_checkpoint(checkpoint)
    if choice == NONE:
        return None
    return _named(choice, files, root, repr(choice))


def _named(name: str, files: list[VaeFile], root: Path, what: str) -> Path:
    for vae in files:
        if name in (vae.name, vae.path.stem, str(vae.path)):
            return vae.path
    path = Path(name) if Path(name).is_absolute() else root / name
    if path.exists():
        return path
    names = ", ".join(vae.name for vae in files) or "none: the VAE folder is empty"
    raise VaeError(f"unknown VAE {what}; there are: {AUTOMATIC}, {NONE}, {names}")


def use_vae(model: StableDiffusionModel, path: Path | None) -> None:
    """Make ``path``'s VAE (None: the baked-in one) ``model``'s VAE; a no-op when it already is.

    Only ``model.vae`` (and the VAE fields of the model) change; the checkpoint's own VAE waits on the CPU in
    ``model.baked_vae`` while another is in use.

    Raises:
        VaeError: the file cannot be used; the model keeps the VAE it had.
    """
    if path == model.vae_path:
        return
    if path is None:
        if model.baked_vae is not None:
            model.vae = model.baked_vae.to(model.device)
            dtype = next(model.vae.parameters()).dtype
            model.vae_dtype = None if dtype == model.dtype else dtype
        model.baked_vae, model.vae_path, model.vae_hash = None, None, None
        return
    vae = load_vae_file(
        path, device=model.device, dtype=model.vae_dtype or model.dtype, scale_factor=model.scale_factor
    )
    if vae.config.downscale != model.downscale or vae.config.embed_dim != model.vae.config.embed_dim:
        raise VaeError(f"{path.name}: this VAE does not fit the model's latents")
    if model.baked_vae is None:
        model.baked_vae = model.vae.to("cpu")
    model.vae = vae
    model.vae_path = path
    model.vae_hash = short_hash(file_sha256(path)) if path.is_file() else None


def vae_infotext(model: object) -> dict[str, str]:
    """A1111's ``VAE hash`` and ``VAE`` infotext values for the model's VAE; empty for the baked-in one."""
    path, vae_hash = getattr(model, "vae_path", None), getattr(model, "vae_hash", None)
    if path is None:
        return {}
    return {"VAE hash": vae_hash, "VAE": Path(path).name} if vae_hash else {"VAE": Path(path).name}

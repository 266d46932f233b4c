"""Merging LoRAs into a model's weights for a job, and undoing it bit for bit.

:func:`lora_deltas` is the maths, a pure function: for each module of a LoRA file, the weight change
``multiplier * alpha / rank * up @ down`` (kohya-ss ``networks/lora.py``; convolutions flattened to matrices
and reshaped to the base kernel, so LoCon's 3x3 down with 1x1 up works unchanged), LoHa's Hadamard product
``(w1a @ w1b) * (w2a @ w2b)`` and LoKr's Kronecker product ``kron(w1, w2)`` with the same scale. Everything is
computed in float32.

:class:`LoraPatcher` holds one model's merge state. Applying a LoRA set computes ``(original.float() + sum of
deltas).to(dtype)`` once per weight and swaps it in; restoring swaps the *original tensor objects* back (they
are never written to, so they come back bit for bit, not as ``merged - delta``). The merged tensors of the last
set are kept, so the next job with the same set swaps them in again without recomputing anything: the merge
costs nothing per sampling step and nothing per repeated job.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from webui.extra_networks.lora_file import LoraFileError, LoraModule, LoraNetwork, read_lora
from webui.extra_networks.lora_keys import UNET, LoraTarget, model_key_map, target_parameter

PATCHER_KEY = "lora_patcher"  # where a model keeps its LoraPatcher (StableDiffusionModel.extra)


@dataclass(frozen=True)
class LoraUse:
    """One LoRA of a job: the name the prompt used, its file, the text-encoder and UNet multipliers
    (``<lora:name:te:unet>``) and A1111's short hash of the file for the infotext (``Lora hashes``)."""

    name: str
    path: Path
    te_weight: float
    unet_weight: float
    short_hash: str = ""


def _matrix_delta(module: LoraModule, shape: tuple[int, ...]) -> tuple[torch.Tensor, int | None]:
    """The unscaled delta of ``module`` reshaped to ``shape``, and the rank that ``alpha`` divides (None: no alpha)."""
    parts = {name: t.float() for name, t in module.parts.items()}
    rank: int | None
    if module.kind == "lora":
        down, up = parts["lora_down.weight"], parts["lora_up.weight"]
        rank = down.shape[0]
        delta = up.flatten(1) @ down.flatten(1)
    elif module.kind == "loha":
        rank = parts["hada_w1_b"].shape[0]
        delta = (parts["hada_w1_a"] @ parts["hada_w1_b"].flatten(1)) * (
            parts["hada_w2_a"] @ parts["hada_w2_b"].flatten(1)
        )
    else:
        w1 = parts["lokr_w1"] if "lokr_w1" in parts else parts["lokr_w1_a"] @ parts["lokr_w1_b"]
        w2 = parts["lokr_w2"] if "lokr_w2" in parts else parts["lokr_w2_a"] @ parts["lokr_w2_b"].flatten(1)
        factored = parts.get("lokr_w1_b", parts.get("lokr_w2_b"))
        rank = int(factored.shape[0]) if factored is not None else None  # full factors: alpha is not used
        delta = torch.kron(w1.flatten(1), w2.flatten(1))
    if delta.numel() != torch.Size(shape).numel():
        raise ValueError(f"gives a {tuple(delta.shape)} change for a weight of shape {shape}")
    return delta.reshape(shape), rank


def module_scale(module: LoraModule, rank: int | None) -> float:
    """kohya's ``alpha / rank``; 1 without an alpha (alpha defaults to the rank) or without a rank."""
    alpha = module.alpha
    if alpha is None or not rank:
        return 1.0
    return alpha / rank


def lora_deltas(
    network: LoraNetwork, key_map: Mapping[str, LoraTarget], te_weight: float, unet_weight: float
) -> dict[LoraTarget, torch.Tensor]:
    """The float32 weight change of every module of ``network``, by the weight it changes.

    Raises:
        LoraFileError: modules that match no weight of this model (how many, and an example), or a module
            whose shape does not fit its weight.
    """
    unmatched = sorted(key for key in network.modules if key not in key_map)
    if unmatched:
        raise LoraFileError(
            f"{network.path.name}: {len(unmatched)} of its {len(network.modules)} modules match no layer of this "
            f"model (e.g. {unmatched[0]}); it was made for another model architecture"
        )
    deltas: dict[LoraTarget, torch.Tensor] = {}
    for key, module in network.modules.items():
        target = key_map[key]
        multiplier = unet_weight if target.component == UNET else te_weight
        if multiplier == 0:
            continue
        try:
            delta, rank = _matrix_delta(module, target.shape)
        except (ValueError, RuntimeError, KeyError) as err:
            raise LoraFileError(f"{network.path.name}: module {key} does not fit this model: {err}") from None
        deltas[target] = delta * (multiplier * module_scale(module, rank))
    return deltas


def sum_deltas(per_lora: Sequence[Mapping[LoraTarget, torch.Tensor]]) -> dict[LoraTarget, torch.Tensor]:
    """Several LoRAs' deltas added per weight (in the order given)."""
    total: dict[LoraTarget, torch.Tensor] = {}
    for deltas in per_lora:
        for target, delta in deltas.items():
            total[target] = total[target] + delta if target in total else delta
    return total


class LoraPatcher:
    """One model's LoRA merge state: which set is merged, the original weights and the cached merged ones."""

    def __init__(self, model: object):
        self.model = model
        self._key_map: dict[str, LoraTarget] | None = None
        self._key: tuple[tuple[str, int, int, float, float], ...] = ()
        self._merged: dict[LoraTarget, torch.Tensor] = {}  # cached merged weights of the set ``_key``
        self._originals: dict[LoraTarget, torch.Tensor] = {}  # the swapped-out original tensors (while applied)

    @property
    def key_map(self) -> dict[str, LoraTarget]:
        if self._key_map is None:
            self._key_map = model_key_map(self.model)
        return self._key_map

    @property
    def applied(self) -> bool:
        return bool(self._originals)

    def apply(self, loras: Sequence[LoraUse]) -> bool:
        """Merge ``loras`` into the model; True when the cached merge of the same set was reused."""
        self.restore()
        if not loras:
            return False
        key = tuple(_identity(lora) for lora in loras)
        reused = key == self._key and bool(self._merged)
        if not reused:
            self._merged, self._key = {}, ()
            self._merged = self._merge(loras)
            self._key = key
        for target, merged in self._merged.items():
            param = target_parameter(self.model, target)
            self._originals[target] = param.data
            param.data = merged
        return reused

    def restore(self) -> None:
        """Put the original tensors back (the very objects that were swapped out: bit-identical)."""
        for target, original in self._originals.items():
            target_parameter(self.model, target).data = original
        self._originals = {}

    def forget(self) -> None:
        """Restore and drop the cached merge (frees its memory)."""
        self.restore()
        self._merged, self._key = {}, ()

    def _merge(self, loras: Sequence[LoraUse]) -> dict[LoraTarget, torch.Tensor]:
        per_lora = []
        for lora in loras:
            network = read_lora(lora.path)
            per_lora.append(lora_deltas(network, self.key_map, lora.te_weight, lora.unet_weight))
        merged: dict[LoraTarget, torch.Tensor] = {}
        with torch.no_grad():
            for target, delta in sum_deltas(per_lora).items():
                original = target_parameter(self.model, target).data
                merged[target] = (original.float() + delta.to(original.device)).to(original.dtype)
        return merged


def _identity(lora: LoraUse) -> tuple[str, int, int, float, float]:
    """What makes two uses of a file the same merge: path, its size and mtime (a replaced file differs), weights."""
    stat = lora.path.stat()
    return (str(lora.path), stat.st_size, stat.st_mtime_ns, lora.te_weight, lora.unet_weight)


def model_patcher(model: object) -> LoraPatcher:
    """The model's own :class:`LoraPatcher`, made on first use and kept in ``model.extra``."""
    extra: dict[str, object] = model.extra  # type: ignore[attr-defined]
    patcher = extra.get(PATCHER_KEY)
    if not isinstance(patcher, LoraPatcher):
        patcher = LoraPatcher(model)
        extra[PATCHER_KEY] = patcher
    return patcher


@contextmanager
def loras_merged(model: object, loras: Sequence[LoraUse]) -> Iterator[bool]:
    """Inside, ``model`` runs with ``loras`` merged (yields whether a cached merge was reused); restored after."""
    if not loras:
        yield False
        return
    patcher = model_patcher(model)
    try:
        reused = patcher.apply(loras)
    except OSError as err:
        patcher.forget()
        raise LoraFileError(f"a LoRA file could not be read: {err}") from None
    except LoraFileError:
        patcher.forget()
        raise
    try:
        yield reused
    finally:
        patcher.restore()

"""Which model is in memory: loads models from the registry on first use, one at a time by default."""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from webui.models.loading import load_model
from webui.models.model import StableDiffusionModel
from webui.models.registry import ModelEntry, Registry, UnknownModelError

Loader = Callable[..., StableDiffusionModel]


@dataclass(frozen=True)
class ModelStatus:
    name: str
    loaded: bool
    current: bool
    default: bool
    error: str | None  # the last load error, if any
    short_hash: str | None
    loading: bool = False  # being loaded (or downloaded) right now


class ModelManager:
    """Loads registry entries on demand; thread-safe.

    Two locks: ``_load_lock`` serialises loading (two threads asking for a model that is not resident
    cause one load), ``_state_lock`` guards the bookkeeping only, so :meth:`status` answers at once even
    while a multi-GB model is being downloaded or loaded.

    Args:
        registry: the validated ``models.yaml``.
        device, dtype: where models go; an entry's ``dtype`` (fp16, bf16, fp32) overrides ``dtype``.
        max_loaded: how many models may stay resident (1: loading another unloads the current one first,
            so that two SD models never need memory at the same time).
        cache_dir: Hugging Face cache for hub entries (default: huggingface_hub's).
        loader: :func:`load_model` or a stand-in with its signature (tests).
    """

    def __init__(self, registry: Registry, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 *, max_loaded: int = 1, cache_dir: Path | None = None, loader: Loader = load_model):
        self.registry = registry
        self.device = torch.device(device)
        self.dtype = dtype
        self.max_loaded = max(1, max_loaded)
        self.cache_dir = cache_dir
        self._loader = loader
        self._load_lock = threading.RLock()
        self._state_lock = threading.Lock()
        self._loaded: dict[str, StableDiffusionModel] = {}  # in load order
        self._errors: dict[str, str] = {}
        self._current: str | None = None
        self._loading: str | None = None

    @property
    def current_name(self) -> str | None:
        return self._current

    def entry(self, name: str | None = None) -> ModelEntry:
        """The registry entry for ``name``; None means the current model, else the default one."""
        if name is None:
            name = self._current
        if name is None:
            default = self.registry.default
            if default is None:
                problems = "; ".join(str(e) for e in self.registry.errors) or "models.yaml lists no models"
                raise UnknownModelError(f"no model is available: {problems}")
            return default
        return self.registry.get(name)

    def get(self, name: str | None = None) -> StableDiffusionModel:
        """The model called ``name`` (None: the current one, else the default), loading it if needed."""
        with self._load_lock:
            entry = self.entry(name)
            with self._state_lock:
                model = self._loaded.get(entry.name)
                if model is not None:
                    self._current = entry.name
                    return model
            return self.load(entry.name)

    def load(self, name: str) -> StableDiffusionModel:
        """Load ``name`` (again, if it was loaded) and make it current; raises the loader's error."""
        with self._load_lock:
            entry = self.registry.get(name)
            with self._state_lock:
                self._loaded.pop(entry.name, None)
                self._evict(keep=self.max_loaded - 1)
                self._loading = entry.name
            self._free()
            try:
                model = self._load_entry(entry)
            except Exception as exc:
                with self._state_lock:
                    self._errors[entry.name] = str(exc)
                    self._loading = None
                raise
            with self._state_lock:
                self._errors.pop(entry.name, None)
                self._loaded[entry.name] = model
                self._current = entry.name
                self._loading = None
            return model

    def unload(self, name: str | None = None) -> None:
        """Free ``name`` (None: every model)."""
        with self._load_lock:
            names = list(self._loaded) if name is None else [self.registry.get(name).name]
            with self._state_lock:
                for n in names:
                    self._loaded.pop(n, None)
                    if self._current == n:
                        self._current = None
            self._free()

    def loaded(self) -> dict[str, StableDiffusionModel]:
        """The resident models by name (a copy)."""
        with self._state_lock:
            return dict(self._loaded)

    def set_registry(self, registry: Registry) -> None:
        """Use a re-read ``models.yaml``; resident models stay loaded, entries that disappeared are unloaded."""
        with self._load_lock:
            with self._state_lock:
                self.registry = registry
                gone = [n for n in self._loaded if n not in registry.names]
                for name in gone:
                    del self._loaded[name]
                    if self._current == name:
                        self._current = None
                self._errors = {n: e for n, e in self._errors.items() if n in registry.names}
            if gone:
                self._free()

    def status(self) -> list[ModelStatus]:
        """One row per registry entry; never waits for a load in progress."""
        with self._state_lock:
            default = self.registry.default
            return [
                ModelStatus(
                    name=e.name,
                    loaded=e.name in self._loaded,
                    current=e.name == self._current,
                    default=default is not None and e.name == default.name,
                    error=self._errors.get(e.name),
                    short_hash=self._loaded[e.name].short_hash if e.name in self._loaded else None,
                    loading=e.name == self._loading,
                )
                for e in self.registry.entries
            ]

    def _load_entry(self, entry: ModelEntry) -> StableDiffusionModel:
        from webui.devices import pick_dtype
        from webui.models.download import fetch_model_file, fetch_tokenizer

        path = fetch_model_file(entry, self.cache_dir)
        tokenizer: str | Path | None = entry.tokenizer
        if entry.is_hub and entry.tokenizer:
            tokenizer = fetch_tokenizer(entry.tokenizer, self.cache_dir) or entry.tokenizer
        dtype = self.dtype if entry.dtype == "auto" else pick_dtype(self.device, entry.dtype)
        return self._loader(path, tokenizer=tokenizer, device=self.device, dtype=dtype, name=entry.name,
                            native_size=entry.native_size)

    def _evict(self, keep: int) -> None:
        """Drop the oldest resident models until ``keep`` remain (caller holds ``_state_lock``)."""
        while len(self._loaded) > keep:
            oldest = next(iter(self._loaded))
            del self._loaded[oldest]
            if self._current == oldest:
                self._current = None

    def _free(self) -> None:
        from webui.devices import empty_cache

        gc.collect()
        empty_cache(self.device)

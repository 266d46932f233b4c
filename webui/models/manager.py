"""Which model is in memory: loads models from the registry on first use, one at a time by default.

Getting a model that is not resident has two steps:

1. :meth:`ModelManager.ensure_downloaded` puts its file on disk (a hub download, with progress and
   cancel) or checks that it is there. It holds no lock while it works: requests for the model already
   in memory, status queries and other downloads go on meanwhile. Two callers asking for the same file
   share one download (one attempt). :meth:`ModelManager.download_plan` says beforehand what it will do.
2. :meth:`ModelManager.load` (or :meth:`get`) reads the file into memory under the load lock. It runs
   step 1 itself first, still outside the lock, unless ``download=False``.

A load that fails leaves the previous model current: a missing or undownloadable file fails in step 1,
before anything is unloaded; a file that fails while loading (damaged, another model family) had the
previous model unloaded to make room, so that model is loaded back.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from webui.models.download import (
    DownloadCancelled,
    DownloadError,
    DownloadPlan,
    DownloadProgress,
    DownloadRequiredError,
    ProgressCallback,
    cached_model_file,
    cached_tokenizer,
    fetch_model_file,
    fetch_tokenizer,
    plan_download,
)
from webui.models.errors import CheckpointNotFoundError
from webui.models.hash_cache import BackgroundHasher, HashCache
from webui.models.hashing import short_hash
from webui.models.loading import load_model
from webui.models.model import StableDiffusionModel
from webui.models.precision import PrecisionPlan
from webui.models.registry import (
    ModelEntry,
    Registry,
    RegistryProblem,
    UnknownModelError,
    check_recommendations,
)
from webui.models.speed_options import SpeedOptions

logger = logging.getLogger(__name__)

Loader = Callable[..., StableDiffusionModel]


@dataclass(frozen=True)
class ModelStatus:
    name: str
    loaded: bool
    current: bool
    default: bool
    error: str | None  # the last load or download error, if any
    short_hash: str | None
    loading: bool = False  # being read into memory right now
    download: DownloadProgress | None = None  # its file is being downloaded now: the latest progress
    needs_download: bool = False  # a hub entry whose file is not in the cache yet


@dataclass
class _Download:
    """One download in flight, shared by every caller that asks for the same model meanwhile."""

    done: threading.Event = field(default_factory=threading.Event)
    listeners: list[ProgressCallback] = field(default_factory=list)
    progress: DownloadProgress | None = None
    result: Path | None = None
    error: BaseException | None = None


class ModelManager:
    """Loads registry entries on demand; thread-safe.

    Two locks: ``_load_lock`` serialises loading into memory (two threads asking for a model that is not
    resident cause one load), ``_state_lock`` guards the bookkeeping only, so :meth:`status` answers at
    once even while a multi-GB model is being downloaded or loaded. Downloads hold neither.

    Args:
        registry: the validated ``models.yaml``.
        device, dtype: where models go; an entry's ``dtype`` (fp16, bf16, fp32) overrides ``dtype``.
        max_loaded: how many models may stay resident (``--models-in-memory``; 1: loading another
            unloads the current one first, so that two SD models never need memory at the same time).
            Beyond it the least recently used model is dropped first: switching back and forth between
            two checkpoints for an A/B comparison then never reloads with ``max_loaded=2``.
        cache_dir: Hugging Face cache for hub entries (default: huggingface_hub's, ``HF_HUB_CACHE``).
        loader: :func:`load_model` or a stand-in with its signature (tests).
        hash_cache: where files' sha256 are kept (:mod:`webui.models.hash_cache`). With one, a load
            never reads the whole file for its hash: a known file takes it from the cache, a new one
            is hashed in the background and the model gets its ``sha256``/``short_hash`` when that
            ends. Without one (the library default) the loader hashes the file itself.
        precision: each network's dtype (``--precision``, :mod:`webui.models.precision`) for entries
            whose ``dtype`` is ``auto``; None puts all three in ``dtype``.
        vae_tiling: ``--vae-tiling`` (auto, on, off) for the models it loads (:mod:`webui.models.vae_tiling`).
        speed: ``--compile`` and the like, applied to each model it loads (:mod:`webui.models.speed_options`).
    """

    def __init__(
        self,
        registry: Registry,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        *,
        max_loaded: int = 1,
        cache_dir: Path | None = None,
        loader: Loader = load_model,
        hash_cache: HashCache | None = None,
        precision: PrecisionPlan | None = None,
        vae_tiling: str = "auto",
        speed: SpeedOptions | None = None,
    ):
        self.registry = registry
        self.device = torch.device(device)
        self.dtype = dtype
        self.max_loaded = max(1, max_loaded)
        self.cache_dir = cache_dir
        self._loader = loader
        self._load_lock = threading.RLock()
        self._state_lock = threading.Lock()
        self._loaded: dict[str, StableDiffusionModel] = {}  # least recently used first
        self._errors: dict[str, str] = {}
        self._current: str | None = None
        self._loading: str | None = None
        self._downloads: dict[str, _Download] = {}
        self._known_samplers: tuple[list[str], list[str], list[str]] | None = None
        self.hasher = BackgroundHasher(hash_cache) if hash_cache is not None else None
        self.precision = precision
        self.vae_tiling = vae_tiling
        self.speed = speed

    @property
    def current_name(self) -> str | None:
        return self._current

    def for_device(self, device: torch.device | str) -> ModelManager:
        """A manager for another device of ``--device cuda:0,cuda:1``: its own loaded models, with this one's
        models.yaml, dtype, precision plan, LRU size, hash cache, VAE tiling and speed options (a second
        device must not silently run without ``--compile`` or ``--medvram`` that the first one has)."""
        other = ModelManager(
            self.registry,
            device,
            self.dtype,
            max_loaded=self.max_loaded,
            cache_dir=self.cache_dir,
            loader=self._loader,
            precision=self.precision,
            vae_tiling=self.vae_tiling,
            speed=self.speed,
        )
        other.hasher = self.hasher  # one background hasher and cache.json for every device
        return other

    # --- registry ---------------------------------------------------------------------------

    def entry(self, name: str | None = None) -> ModelEntry:
        """The registry entry for ``name``; None means the current model, else the default one."""
        if name is None:
            name = self._current
        if name is None:
            default = self.registry.default
            if default is None:
                if self.registry.default_error is not None:
                    raise UnknownModelError(f"no model is selected: {self.registry.default_error}")
                problems = "; ".join(str(e) for e in self.registry.errors) or "models.yaml lists no models"
                raise UnknownModelError(f"no model is available: {problems}")
            return default
        return self.registry.get(name)

    def set_known_samplers(
        self, sampler_names: Iterable[str], schedule_names: Iterable[str], sampler_aliases: Iterable[str] = ()
    ) -> list[RegistryProblem]:
        """Check the entries' ``sampler``/``scheduler`` against these names, now and after every
        :meth:`set_registry` (see :func:`~webui.models.registry.check_recommendations`). Returns the new
        warnings (also in ``registry.warnings``)."""
        self._known_samplers = (list(sampler_names), list(schedule_names), list(sampler_aliases))
        return self._check_recommendations(self.registry)

    def _check_recommendations(self, registry: Registry) -> list[RegistryProblem]:
        if self._known_samplers is None:
            return []
        samplers, schedules, aliases = self._known_samplers
        return check_recommendations(registry, samplers, schedules, sampler_aliases=aliases)

    def set_registry(self, registry: Registry) -> None:
        """Use a re-read ``models.yaml``; resident models stay loaded, entries that disappeared are unloaded.

        A file that cannot be used at all (missing, not YAML, ...) does not empty the list: the entries
        read before stay, and the registry's errors say why the file was not taken.
        """
        if registry.file_error is not None:
            kept = RegistryProblem(
                registry.file_error.file,
                None,
                None,
                f"{registry.file_error.message}; the models read before are kept until it is fixed",
            )
            registry = Registry(
                path=registry.path,
                entries=list(self.registry.entries),
                errors=[kept],
                file_error=kept,
                default_error=self.registry.default_error,
            )
        else:
            self._check_recommendations(registry)
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

    # --- step 1: the file on disk ---------------------------------------------------------------

    def download_plan(self, name: str) -> DownloadPlan | None:
        """What selecting ``name`` would download (size, source, destination), or None if nothing.

        One HEAD request to the hub at most (a few seconds offline): call it outside any lock, before
        :meth:`ensure_downloaded`, to tell the user what is about to happen.
        """
        return plan_download(self.registry.get(name), self.cache_dir)

    def ensure_downloaded(
        self, name: str, progress: ProgressCallback | None = None, cancel: threading.Event | None = None
    ) -> Path:
        """Make sure ``name``'s file is on disk, downloading it if it is a hub entry; returns its path.

        Holds no lock while it downloads, so it runs beside generations and other requests. A second
        call for the same model while the first downloads joins it (one attempt, progress to both);
        its own ``cancel`` then only stops its waiting.

        Args:
            progress: called with a :class:`DownloadProgress` about four times a second (from the
                downloading thread).
            cancel: set it to stop the download within about a second; nothing partial is kept.

        Raises:
            DownloadCancelled: ``cancel`` was set.
            DownloadError: the download failed (the message says what, why and the fix; the model's
                ``error`` in :meth:`status` says the same).
            CheckpointNotFoundError: a local ``path`` that does not exist.
        """
        entry = self.registry.get(name)
        if entry.path is not None:
            if not entry.path.exists():
                error = CheckpointNotFoundError(
                    f"model {entry.name!r}: file not found: {entry.path} (fix 'path' of this entry in "
                    f"{self.registry.path or 'models.yaml'})"
                )
                self._set_error(entry.name, str(error))
                raise error
            return entry.path
        found = cached_model_file(entry, self.cache_dir)
        if found is not None and self._tokenizer_ready(entry):
            return found

        with self._state_lock:
            flight = self._downloads.get(entry.name)
            owner = flight is None
            if flight is None:
                flight = self._downloads[entry.name] = _Download()
            if progress is not None:
                flight.listeners.append(progress)
        if not owner:
            return self._join(entry.name, flight, cancel)

        def forward(update: DownloadProgress) -> None:
            with self._state_lock:
                flight.progress = update
                listeners = list(flight.listeners)
            for listener in listeners:
                listener(update)

        try:
            path = fetch_model_file(entry, self.cache_dir, progress=forward, cancel=cancel)
            if entry.tokenizer and not self._tokenizer_ready(entry):
                fetch_tokenizer(entry.tokenizer, self.cache_dir, cancel=cancel)
            flight.result = path
            self._set_error(entry.name, None)
            return path
        except DownloadCancelled as exc:
            flight.error = exc
            self._set_error(entry.name, None)
            raise
        except DownloadError as exc:
            flight.error = exc
            self._set_error(entry.name, str(exc))
            raise
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._state_lock:
                self._downloads.pop(entry.name, None)
            flight.done.set()

    def _join(self, name: str, flight: _Download, cancel: threading.Event | None) -> Path:
        while not flight.done.wait(0.1):
            if cancel is not None and cancel.is_set():
                raise DownloadCancelled(f"model {name!r}: stopped waiting for its download")
        if isinstance(flight.error, DownloadError):
            raise type(flight.error)(str(flight.error))  # a fresh exception: no traceback shared between threads
        if flight.error is not None:
            raise DownloadError(f"model {name!r}: the download failed: {flight.error}")
        assert flight.result is not None
        return flight.result

    def _tokenizer_ready(self, entry: ModelEntry) -> bool:
        """Whether the entry's tokenizer (if it names a hub id) is cached already."""
        if not entry.tokenizer or Path(entry.tokenizer).exists():
            return True
        return cached_tokenizer(entry.tokenizer, self.cache_dir) is not None

    # --- step 2: into memory ----------------------------------------------------------------------

    def get(self, name: str | None = None, *, download: bool = True) -> StableDiffusionModel:
        """The model called ``name`` (None: the current one, else the default), loading it if needed.

        ``download=False`` never downloads: a hub model whose file is not cached raises
        :class:`DownloadRequiredError` at once (what a generation job wants: a download is started by
        selecting the model, not by pressing Generate).
        """
        entry = self.entry(name)
        with self._state_lock:
            model = self._use_loaded(entry.name)
            if model is not None:
                return model
        self._prepare(entry, download)
        with self._load_lock:
            with self._state_lock:  # loaded by another thread while this one waited for the lock
                model = self._use_loaded(entry.name)
                if model is not None:
                    return model
            return self._load_locked(entry)

    def _use_loaded(self, name: str) -> StableDiffusionModel | None:
        """The resident model ``name`` made current and most recently used (caller holds ``_state_lock``)."""
        model = self._loaded.pop(name, None)
        if model is not None:
            self._loaded[name] = model  # re-inserted last: the eviction order is least recently used first
            self._current = name
        return model

    def load(self, name: str, *, download: bool = True) -> StableDiffusionModel:
        """Load ``name`` (again, if it was loaded) and make it current; raises the loader's error."""
        entry = self.registry.get(name)
        self._prepare(entry, download)
        with self._load_lock:
            return self._load_locked(entry)

    def _prepare(self, entry: ModelEntry, download: bool) -> None:
        """Step 1 before any lock: the file is on disk, or the reason why not is raised (nothing unloaded)."""
        if download or entry.path is not None:
            self.ensure_downloaded(entry.name)  # for a local path: only checks that it exists
            return
        if cached_model_file(entry, self.cache_dir) is not None:
            return
        raise DownloadRequiredError(  # no network here: not even the size is asked
            f"model {entry.name!r} is not downloaded yet: select it to download {entry.file} from {entry.repo} "
            "on the Hugging Face hub"
        )

    def _load_locked(self, entry: ModelEntry) -> StableDiffusionModel:
        """Read ``entry`` into memory (caller holds ``_load_lock``); restores the previous model on failure."""
        with self._state_lock:
            previous = self._current if self._current in self._loaded else None
            self._loaded.pop(entry.name, None)
            evicted = self._evict(keep=self.max_loaded - 1)
            self._loading = entry.name
        self._free()
        try:
            model = self._load_entry(entry)
        except Exception as exc:
            with self._state_lock:
                self._errors[entry.name] = str(exc)
                self._loading = None
            if previous is not None and previous != entry.name and previous in evicted:
                self._restore(previous)
            raise
        with self._state_lock:
            self._errors.pop(entry.name, None)
            self._loaded[entry.name] = model
            self._current = entry.name
            self._loading = None
        return model

    def _restore(self, name: str) -> None:
        """Load ``name`` back after a failed switch away from it (best effort; caller holds ``_load_lock``)."""
        try:
            entry = self.registry.get(name)
            model = self._load_entry(entry)
        except Exception as exc:  # noqa: BLE001 - the original error is what the caller reports
            logger.warning("could not load %r back after a failed model switch: %s", name, exc)
            return
        with self._state_lock:
            self._loaded[name] = model
            self._current = name

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

    def status(self) -> list[ModelStatus]:
        """One row per registry entry; never waits for a load or download in progress."""
        entries = list(self.registry.entries)
        missing = {e.name for e in entries if e.is_hub and cached_model_file(e, self.cache_dir) is None}
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
                    download=self._downloads[e.name].progress if e.name in self._downloads else None,
                    needs_download=e.name in missing,
                )
                for e in entries
            ]

    def _set_error(self, name: str, error: str | None) -> None:
        with self._state_lock:
            if error is None:
                self._errors.pop(name, None)
            else:
                self._errors[name] = error

    def _load_entry(self, entry: ModelEntry) -> StableDiffusionModel:
        from webui.devices import pick_dtype

        path = cached_model_file(entry, self.cache_dir)
        if path is None:  # removed from the cache since step 1
            raise DownloadRequiredError(f"model {entry.name!r}: its file is no longer in the Hugging Face cache")
        tokenizer: str | Path | None = entry.tokenizer
        if entry.tokenizer and not Path(entry.tokenizer).exists():
            tokenizer = cached_tokenizer(entry.tokenizer, self.cache_dir) or entry.tokenizer
        dtype = self.dtype if entry.dtype == "auto" else pick_dtype(self.device, entry.dtype)
        kwargs: dict[str, object] = {}
        if self.precision is not None and entry.dtype == "auto":
            dtype = self.precision.unet
            kwargs.update(vae_dtype=self.precision.vae, text_encoder_dtype=self.precision.text_encoder)
        if self.hasher is not None:
            kwargs["compute_hash"] = False
        model = self._loader(
            path,
            tokenizer=tokenizer,
            device=self.device if self.speed is None else self.speed.load_device(self.device),
            dtype=dtype,
            name=entry.name,
            native_size=entry.native_size,
            **kwargs,
        )
        if self.hasher is not None and path.is_file():
            self._hash_later(model, path)
        model.vae_tiling = self.vae_tiling
        if self.speed is not None:
            self.speed.apply(model, self.device)
        return model

    def _hash_later(self, model: StableDiffusionModel, path: Path) -> None:
        """Give ``model`` its file's hash: at once from the cache, else when the background hash ends."""
        assert self.hasher is not None

        def known(sha256: str) -> None:
            model.sha256, model.short_hash = sha256, short_hash(sha256)

        cached = self.hasher.request(path, known)
        if cached is not None:
            known(cached)

    def _evict(self, keep: int) -> list[str]:
        """Drop the least recently used models until ``keep`` remain (caller holds ``_state_lock``); their names."""
        evicted = []
        while len(self._loaded) > keep:
            oldest = next(iter(self._loaded))
            del self._loaded[oldest]
            evicted.append(oldest)
            if self._current == oldest:
                self._current = None
        return evicted

    def _free(self) -> None:
        from webui.devices import empty_cache

        gc.collect()
        empty_cache(self.device)

"""The generation service shared by the Gradio UI and the REST API.

:class:`WebUIService` owns the :class:`~webui.models.manager.ModelManager` and the sampler
registry and runs generation jobs one at a time, in submission order, on the
:class:`~webui.jobs.JobQueue`'s worker thread (one device, one generation at a time). Each
:class:`~webui.jobs.Job` has an id, a state, a queue position, its latest progress (with a cheap
preview) and, when finished, its result or error.

Nothing starts at import: the worker thread starts with the first submitted job and stops
with :meth:`WebUIService.close`.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

import torch
from PIL import Image

from webui.jobs import Job, JobQueue, JobState, interrupting_text
from webui.models.registry import SD1_NATIVE_SIZE
from webui.pipeline.generation import Progress, native_size
from webui.pipeline.preview import LatentPreview
from webui.pipeline.requests import GenerationRequest, GenerationResult, resolve_request
from webui.pipeline.speedups import SpeedupSettings
from webui.pipeline.styles import default_styles_path
from webui.queue.callbacks import CallbackSender
from webui.queue.codec import decode_request
from webui.queue.device_runner import DeviceRunner, PreviewMaps, RecordedScriptImages, latent_pixels
from webui.queue.outputs import ScriptJobImages, save_job_images
from webui.queue.store import DEFAULT_HISTORY, QueueStore
from webui.queue.workers import Worker

if TYPE_CHECKING:
    from webui.extra_networks.embeddings import EmbeddingFolder
    from webui.extra_networks.lora_library import LoraEntry, LoraLibrary
    from webui.extra_networks.vae_files import VaeFile
    from webui.models.download import DownloadPlan, ProgressCallback
    from webui.models.manager import ModelManager, ModelStatus
    from webui.models.model import StableDiffusionModel
    from webui.models.registry import Registry
    from webui.sampling.registry import SamplerRegistry
    from webui.upscalers import UpscalerRegistry
    from webui.upscalers.postprocess import ExtrasRequest

logger = logging.getLogger(__name__)

IDLE: Final = "idle"  # ProgressSnapshot.state when no job runs
SMALL_MODEL_BYTES = 256 * 2**20


@dataclass
class ProgressSnapshot:
    """What a progress bar needs, for one job (or the idle service)."""

    job_id: str | None
    state: JobState | Literal["idle"]  # IDLE when no job runs
    queue_position: int | None
    queue_size: int  # jobs waiting to start
    progress: float  # 0..1 over the whole job
    eta_seconds: float | None
    step: int = 0
    total_steps: int = 0
    image_index: int = 0
    images_total: int = 0
    preview: Image.Image | None = None
    error: str | None = None
    interrupting: bool = False  # Interrupt was asked for; the job has not stopped yet
    decoding: bool = False  # sampling is over and the images (the kept one after an Interrupt) are being decoded
    decoded: float | None = None  # how much of that decode is done (0..1), where the VAE reports it
    unit: str = "image"  # what image_index / images_total count: "cell" in an X/Y/Z plot (issue 17)

    @property
    def textinfo(self) -> str:
        if self.state == JobState.QUEUED:
            return f"In queue: position {self.queue_position}"
        if self.interrupting:
            return interrupting_text(self.decoding, self.decoded)
        if self.state == JobState.RUNNING:
            return f"Step {self.step}/{self.total_steps}, {self.unit} {self.image_index + 1}/{self.images_total}"
        if self.state == JobState.ERROR:
            return f"Error: {self.error}"
        return self.state.capitalize()

    @classmethod
    def of(cls, job: Job, queue_size: int) -> ProgressSnapshot:
        """The snapshot of ``job``, with ``queue_size`` jobs waiting to start."""
        p = job.progress
        running = job.state == JobState.RUNNING
        return cls(
            job_id=job.id,
            state=job.state,
            queue_position=job.queue_position,
            queue_size=queue_size,
            progress=1.0 if job.state == JobState.DONE else (p.fraction if p is not None else 0.0),
            eta_seconds=p.eta_seconds if p is not None and running else None,
            step=p.step if p else 0,
            total_steps=p.total_steps if p else 0,
            image_index=p.image_index if p else 0,
            images_total=p.images_total if p else _planned(job)[0],
            preview=p.preview if p else None,
            error=job.error_message,
            interrupting=job.interrupting,
            decoding=bool(p is not None and p.decoding and running),
            decoded=p.decoded if p is not None and p.decoding and running else None,
            unit=p.unit if p else _planned(job)[1],
        )


def _planned(job: Job) -> tuple[int, str]:
    """How many images (or X/Y/Z cells) ``job`` will make, before its first progress (while a model loads)."""
    plan = job.request.script
    if plan is not None and plan.grid is not None:
        return len(plan.cells), "cell"
    return (len(plan.cells) if plan is not None else job.request.total_images), "image"


@dataclass(frozen=True)
class LoadedModelInfo:
    """The model in memory, as the page's status line names it."""

    name: str
    native_size: tuple[int, int]  # (width, height)
    dtype: torch.dtype
    device: torch.device


class Service(Protocol):
    """Everything the UI (``webui.ui``) and the REST API (``webui.api``) may ask of the service.

    :class:`WebUIService` implements it; so do the test stand-ins (``tests/support/fakes.py``), and so will a
    service whose jobs run elsewhere (cluster workers): the web layers depend on this contract, not on how a
    service holds its models. Models are reached only through these methods, never through the
    ``ModelManager``, so that loading and unloading always take the service's device lock.
    """

    # A1111's styles.csv (webui/pipeline/styles.py), read on every use.
    styles_file: Path

    @property
    def samplers(self) -> SamplerRegistry:
        """The registered sampler plugins (names, aliases, options)."""
        ...

    @property
    def registry(self) -> Registry:
        """The models listed in ``models.yaml`` (and its problems)."""
        ...

    @property
    def current_model_name(self) -> str | None:
        """The model that a job without a model name uses; None before the first load."""
        ...

    def model_status(self) -> list[ModelStatus]:
        """One row per registry entry: loaded, current, default, last load error; never waits for a load."""
        ...

    def loaded_model_info(self) -> LoadedModelInfo | None:
        """What the current model is, if it is in memory: name, native size, precision, device; never loads."""
        ...

    def precision_text(self) -> str:
        """Each network's precision and why (``--precision``), e.g. for the Models tab; never loads."""
        ...

    def model_sha256(self, name: str) -> str | None:
        """The sha256 of a model's file when known without a long read."""
        ...

    def download_plan(self, name: str) -> DownloadPlan | None:
        """What selecting ``name`` would download first (size, source, destination); None if nothing.

        May ask the hub (up to about 10 s when it cannot be reached): call it from a worker thread.
        """
        ...

    def select_model(
        self, name: str, progress: ProgressCallback | None = None, cancel: threading.Event | None = None
    ) -> None:
        """Download ``name``'s file if needed (``progress`` gets :class:`DownloadProgress`, setting ``cancel``
        stops it; no lock held meanwhile), then load it (after the running job) and make it current.

        Raises ``DownloadCancelled``, ``DownloadError`` or the loader's error; the current model stays then.
        """
        ...

    def unload_model(self, name: str | None = None) -> None:
        """Free ``name`` (None: every model) after the running job."""
        ...

    def reload_registry(self) -> Registry:
        """Re-read ``models.yaml``."""
        ...

    def token_count(self, prompt: str, steps: int = 20, model_name: str | None = None) -> tuple[int, int] | None:
        """``(tokens, capacity)`` of ``prompt``; None while the model is not loaded."""
        ...

    def submit(
        self, request: GenerationRequest, model_name: str | None = None, *, save: bool = True, owner: str | None = None
    ) -> Job:
        """Queue a request; raises ``InvalidRequest`` at once for a bad one. ``owner``: see :class:`Job`."""
        ...

    def estimate_seconds(self, width: int, height: int, steps: int, images: int = 1) -> float | None:
        """About how long sampling ``images`` images of that size takes here; None before any job has run."""
        ...

    @property
    def queue(self) -> JobQueue:
        """The job queue: its order, pause, history (the Queue tab and the queue API)."""
        ...

    def get_job(self, job_id: str) -> Job:
        """A queued, running or recent job; KeyError if unknown."""
        ...

    def progress(self, job_id: str | None = None) -> ProgressSnapshot:
        """Progress of ``job_id``, or of the running job; KeyError if unknown."""
        ...

    def interrupt(self, job_id: str | None = None) -> bool:
        """Interrupt ``job_id`` or the running job; False if there was nothing to interrupt."""
        ...

    def skip(self, job_id: str | None = None) -> bool:
        """Skip the current batch of ``job_id`` or of the running job; False if nothing runs."""
        ...

    def close(self) -> None:
        """Interrupt everything and stop working."""
        ...

    # LoRA (issue 15)
    def loras(self) -> list[LoraEntry]:
        """The LoRA files of the LoRA folder as last scanned (name, alias, path, metadata)."""
        ...

    def refresh_loras(self) -> list[LoraEntry]:
        """Scan the LoRA folder again (files added or removed since the start) and return the new list."""
        ...

    # --- textual-inversion embeddings and VAE files (issue 15) ---

    def embeddings(self) -> EmbeddingFolder:
        """The embeddings folder for the current model: loaded (its width), skipped (another width), errors."""
        ...

    def refresh_embeddings(self) -> EmbeddingFolder:
        """Read the embeddings folder again; returns :meth:`embeddings`."""
        ...

    def vae_files(self) -> list[VaeFile]:
        """The VAE folder's files and diffusers VAE folders (A1111's ``model_name``, ``filename``)."""
        ...

    def refresh_vae(self) -> list[VaeFile]:
        """Read the VAE folder again."""
        ...

    @property
    def sd_vae(self) -> str:
        """The "SD VAE" setting: ``Automatic``, ``None`` or a VAE file's name."""
        ...

    def set_sd_vae(self, choice: str) -> None:
        """Change the "SD VAE" setting; raises ``InvalidRequest`` (field ``sd_vae``) for an unknown name."""

    # Speed-ups that trade a little quality (issue 19): token merging and DeepCache, off by default
    @property
    def speedup_settings(self) -> SpeedupSettings:
        """The app's ``token_merging_ratio*`` and ``deepcache_*`` settings; a request's None fields take them."""
        ...

    def set_speedup_options(self, options: Mapping[str, Any]) -> None:
        """Change those of ``options`` that are speed-up settings; raises ``InvalidRequest`` naming a bad one."""

    # Upscalers (hires fix and the Extras tab, webui/upscalers)
    @property
    def upscalers(self) -> UpscalerRegistry:
        """The image upscalers: None, Lanczos, Nearest and the model files of the upscaler folder."""
        ...

    def run_extras(
        self, images: list[Image.Image], request: ExtrasRequest, *, save: bool = True
    ) -> list[tuple[Image.Image, str]]:
        """Upscale ``images`` as the Extras tab does (after the running job); ``(image, PNG parameters)`` each,
        saved under ``outputs/extras/<date>/`` when ``save``. Raises ``InvalidRequest`` naming a bad field."""
        ...


class WebUIService:
    """Models, samplers and the generation queue: the one object the UI and the API talk to (:class:`Service`).

    Args:
        registry_path: ``models.yaml``; ignored when ``manager`` is given.
        device, dtype: where and in which precision models run (``webui.devices`` picks them).
        outputs_dir: where images are saved (``<outputs>/<txt2img|img2img>/<date>/``); None saves nothing.
        samplers_dir: a folder of local sampler plugins (besides built-ins and entry points).
        upscaler_dir: the folder of model upscaler files (hires fix, Extras); None lists only the built-ins.
        manager, samplers: ready-made ModelManager / SamplerRegistry to use instead.
        version: ``Version`` written into infotexts.
        lora_dir: the LoRA folder (sub-folders included) that ``<lora:NAME:W>`` prompt tags use; None: none.
        styles_file: A1111's ``styles.csv``; default: next to ``models.yaml``.
        queue_db: the queue database (``--queue-db``): pending jobs in it run again, in their order; None
            keeps the queue in memory.
        queue_history: how many finished jobs the queue database keeps (``--queue-history``).
        allow_local_callbacks: let ``callback_url`` point at this machine or link-local addresses.
        devices: run one worker per device (``--device cuda:0,cuda:1``), each with its own model cache; the
            first is ``device``'s (given or not). Empty: one worker on ``device``.
        cluster: run the workers as Ray actors on this cluster (``auto`` or ``ray://host:10001``) instead of on
            ``devices``; ``cluster_workers`` caps their number (default: one per GPU, else per CPU core).
    """

    def __init__(
        self,
        registry_path: str | Path | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        outputs_dir: str | Path | None = None,
        samplers_dir: str | Path | None = None,
        *,
        manager: ModelManager | None = None,
        samplers: SamplerRegistry | None = None,
        version: str | None = None,
        lora_dir: str | Path | None = None,
        embeddings_dir: str | Path | None = None,
        vae_dir: str | Path | None = None,
        styles_file: str | Path | None = None,
        upscaler_dir: str | Path | None = None,
        queue_db: str | Path | None = None,
        queue_history: int = DEFAULT_HISTORY,
        allow_local_callbacks: bool = False,
        devices: Sequence[torch.device | str] = (),
        cluster: str | None = None,
        cluster_workers: int | None = None,
    ):
        self.registry_path = Path(registry_path) if registry_path is not None else None
        # Prompt styles (webui/pipeline/styles.py): read again on every use, so edits are picked up.
        self.styles_file = Path(styles_file) if styles_file is not None else default_styles_path(self.registry_path)
        self.device = torch.device(device)
        self.dtype = dtype if dtype is not None else torch.float32
        if manager is None:
            from webui.models.manager import ModelManager
            from webui.models.registry import load_registry

            if registry_path is None:
                raise ValueError("WebUIService needs registry_path (models.yaml) or a ready ModelManager")
            manager = ModelManager(load_registry(Path(registry_path)), self.device, self.dtype)
        if samplers is None:
            from webui.sampling import create_sampler_registry

            samplers = create_sampler_registry(Path(samplers_dir) if samplers_dir is not None else None)
        # The service is where both the sampler plugins and models.yaml are known: the entries'
        # sampler/schedule recommendations are checked here, and again on every reload_registry().
        manager.set_known_samplers(
            [s.name for s in samplers.samplers],
            samplers.schedule_names,
            [a for s in samplers.samplers for a in s.aliases],
        )
        self.models = manager
        self.samplers = samplers
        self.outputs_dir = Path(outputs_dir) if outputs_dir is not None else None
        self.version = version
        # Textual-inversion embeddings and VAE files (issue 15); models.yaml paths are relative to its folder.
        from webui.extra_networks.user_files import EmbeddingsAndVae

        self.extra_networks = EmbeddingsAndVae(
            Path(embeddings_dir) if embeddings_dir is not None else None,
            Path(vae_dir) if vae_dir is not None else None,
            self.registry_path.parent if self.registry_path is not None else Path.cwd(),
        )
        from webui.upscalers import UpscalerRegistry

        self.upscalers = UpscalerRegistry(upscaler_dir, device=self.device, dtype=self.dtype)
        self._speedups = SpeedupSettings()  # issue 19: token merging and DeepCache, off until set
        self._previews = PreviewMaps()  # each loaded model's fitted preview map, for every device
        self._hashes: dict[tuple[str, int, int], str] = {}
        # Held while a job runs and while models load or unload: a model switch waits for the
        # running generation instead of loading a second model next to it.
        self._device_lock = threading.RLock()
        self.lora_library: LoraLibrary | None = None  # LoRA (issue 15)
        if lora_dir is not None:
            from webui.extra_networks.lora_library import LoraLibrary

            self.lora_library = LoraLibrary(Path(lora_dir))
        # Seconds of one sampling step per latent pixel per image, measured on this service's device by the
        # last job that ran two steps or more; what the size warning's time estimate is made of.
        self._step_seconds_per_pixel: float | None = None
        # Finished queue API jobs with a callback_url upload their images from here (never holding the queue).
        self.callbacks = CallbackSender(allow_local=allow_local_callbacks)
        # Last: restoring a queue database starts its pending jobs at once.
        store = QueueStore.open(queue_db) if queue_db is not None else QueueStore.memory()
        self.callbacks.resume(store)  # callbacks kept in the database; those a crash left unsent go out now
        self._devices = [_Device(str(self.device), manager, self._device_lock)]
        for extra in list(devices)[1:]:
            self._devices.append(_Device(str(torch.device(extra)), manager.for_device(extra)))
        self._devices = [
            _Device(_unique_name(d.name, i, self._devices), d.manager, d.lock) for i, d in enumerate(self._devices)
        ]
        # Every device runs its jobs through a DeviceRunner, as the Ray actors do (webui/queue/device_runner.py).
        self._runners = {
            device.name: DeviceRunner(
                device.manager,
                self.extra_networks,
                self._previews,
                version,
                device.lock,
                entries=manager,
                current_model=lambda: self.models.current_name,  # every device uses the first one's current model
            )
            for device in self._devices
        }
        workers: list[Worker] = [DeviceWorker(self, device) for device in self._devices]
        if cluster is not None:
            from webui.queue import ray_workers

            ray_workers.connect_cluster(cluster)
            if self.registry_path is None:
                raise ValueError("--cluster needs the models.yaml path: the workers load the models from it")
            workers = list(
                ray_workers.start_workers(
                    self.registry_path,
                    dtype=str(self.dtype).rsplit(".", 1)[-1],
                    samplers_dir=Path(samplers_dir) if samplers_dir is not None else None,
                    version=version,
                    workers=cluster_workers,
                    save=self._save_images,
                    # The actors run jobs as a local device does (DeviceRunner), with the same folders.
                    embeddings_dir=Path(embeddings_dir) if embeddings_dir is not None else None,
                    vae_dir=Path(vae_dir) if vae_dir is not None else None,
                    upscaler_dir=Path(upscaler_dir) if upscaler_dir is not None else None,
                    current_model=lambda: self.models.current_name,
                )
            )
        self._queue = JobQueue(
            workers=workers,
            store=store,
            history=queue_history,
            decode=lambda text: decode_request(text, self.samplers, self.upscalers),
            listeners=[self.callbacks.job_finished],
        )

    # --- jobs -------------------------------------------------------------------------------

    def submit(
        self,
        request: GenerationRequest,
        model_name: str | None = None,
        *,
        save: bool = True,
        owner: str | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> Job:
        """Queue ``request``; raises :class:`InvalidRequest` at once for a bad request.

        This is the one place where a request is checked and resolved
        (:func:`webui.pipeline.resolve_request`): the job holds the immutable ``ResolvedRequest``, so a
        caller that reuses its request object cannot change a queued job, and a random seed is drawn
        once. A width or height left out becomes :meth:`_default_size`'s. ``model_name`` None uses the
        current (or default) model; ``save`` False keeps the images out of ``outputs_dir`` (the API's
        ``save_images``). ``owner`` is who asked, for the queue display (see :class:`Job`); ``meta`` is
        stored with the job (the queue API's ``callback_url`` and task name).
        """
        if request.sd_vae is None:  # the "SD VAE" setting as it is now, not when the job runs
            request = replace(request, sd_vae=self.sd_vae)
        request = self._speedups.filled(request)  # issue 19: the speed-up settings now, as sd_vae
        resolved = resolve_request(
            request, self.samplers, self._default_size(model_name), self.upscalers, loras=self.lora_library
        )
        self._check_vae_choice(resolved.sd_vae)
        return self._queue.submit(Job(resolved, model_name, save=save, owner=owner, meta=meta))

    # --- LoRA (issue 15) ---------------------------------------------------------------------

    def loras(self) -> list[LoraEntry]:
        return self.lora_library.entries if self.lora_library is not None else []

    def refresh_loras(self) -> list[LoraEntry]:
        return self.lora_library.refresh() if self.lora_library is not None else []

    def _default_size(self, model_name: str | None = None) -> tuple[int, int]:
        """``(width, height)`` for a request that leaves them out, known without loading anything.

        The rule: the model's ``models.yaml`` entry's ``width``/``height``; else the native size of the
        model if it is loaded; else SD 1.x's 512x512. An unknown model gets 512x512 here: its job fails
        when it runs, with the loader's error.
        """
        try:
            entry = self.models.entry(model_name)
        except LookupError:
            entry = None
        name = entry.name if entry is not None else model_name
        loaded = self._loaded_model(name) if name is not None else None
        fallback = native_size(loaded) if loaded is not None else SD1_NATIVE_SIZE
        if entry is None:
            return fallback
        return (entry.width or fallback[0], entry.height or fallback[1])

    def run(
        self,
        request: GenerationRequest,
        model_name: str | None = None,
        *,
        save: bool = True,
        timeout: float | None = None,
    ) -> GenerationResult:
        """Submit and wait for the result (re-raising the job's error)."""
        return self.submit(request, model_name, save=save).result(timeout)

    def get_job(self, job_id: str) -> Job:
        """The job with ``job_id`` (recent finished jobs are kept); KeyError if unknown."""
        return self._queue.get(job_id)

    def estimate_seconds(self, width: int, height: int, steps: int, images: int = 1) -> float | None:
        """About how long sampling ``images`` images of ``width`` x ``height`` takes on this device.

        Proportional to the latent pixels (attention grows faster, so large sizes are underestimated),
        from the last measured job; None before a job has run.
        """
        per_pixel = self._step_seconds_per_pixel
        if per_pixel is None:
            return None
        return per_pixel * latent_pixels(width, height) * steps * images

    @property
    def jobs(self) -> list[Job]:
        return self._queue.jobs

    @property
    def current_job(self) -> Job | None:
        return self._queue.running

    @property
    def waiting_jobs(self) -> list[Job]:
        return self._queue.waiting

    @property
    def queue(self) -> JobQueue:
        """The queue itself: order, pause, history (the queue API and the Queue tab)."""
        return self._queue

    def progress(self, job_id: str | None = None) -> ProgressSnapshot:
        """Progress of ``job_id``, or of the running job (``state="idle"`` when none)."""
        snapshot = self._queue.snapshot()  # running and waiting read together: never a job in neither
        job = self.get_job(job_id) if job_id is not None else snapshot.current
        waiting = len(snapshot.waiting)
        if job is None:
            return ProgressSnapshot(None, IDLE, None, waiting, 0.0, None)
        return ProgressSnapshot.of(job, waiting)

    def interrupt(self, job_id: str | None = None) -> bool:
        """Interrupt ``job_id`` or the running job; False if there was nothing to interrupt."""
        job = self.get_job(job_id) if job_id is not None else self._queue.running
        if job is None or job.done:
            return False
        job.interrupt()
        return True

    def skip(self, job_id: str | None = None) -> bool:
        """Skip the current batch of ``job_id`` or of the running job; False if nothing runs."""
        job = self.get_job(job_id) if job_id is not None else self._queue.running
        if job is None or job.done:
            return False
        job.skip()
        return True

    def close(self) -> None:
        """Interrupt everything and stop the worker thread (queued jobs stay in the queue database)."""
        self._queue.close()
        self.callbacks.close()
        self._queue.store.close()

    # --- models -----------------------------------------------------------------------------

    @property
    def registry(self) -> Registry:
        """The model registry (``models.yaml`` entries) the manager loads from."""
        return self.models.registry

    @property
    def current_model_name(self) -> str | None:
        return self.models.current_name

    def model_status(self) -> list[ModelStatus]:
        """One row per registry entry (the Models tab); never waits for a load in progress."""
        return self.models.status()

    def loaded_model_info(self) -> LoadedModelInfo | None:
        name = self.models.current_name
        model = self._loaded_model(name) if name is not None else None
        if model is None:
            return None
        return LoadedModelInfo(name=model.name, native_size=native_size(model), dtype=model.dtype, device=model.device)

    def precision_text(self) -> str:
        """``"UNet bf16, VAE bf16, text encoder fp32 (auto: ...)"``: what models load in (issue 19)."""
        from webui.models.precision import PrecisionPlan

        plan = self.models.precision or PrecisionPlan.uniform(self.models.dtype, "the service's dtype")
        return plan.describe()

    def reload_registry(self) -> Registry:
        """Re-read ``models.yaml`` (A1111's "refresh checkpoints"); loaded models stay loaded."""
        if self.registry_path is None:
            return self.registry
        from webui.models.registry import load_registry

        registry = load_registry(self.registry_path)
        self.models.set_registry(registry)
        return registry

    def model_sha256(self, name: str, *, max_bytes_to_hash: int = SMALL_MODEL_BYTES) -> str | None:
        """Full sha256 of a registry model's file, if known without a long read.

        Taken from the loaded model, else from a cache, else computed for files up to
        ``max_bytes_to_hash`` (A1111 likewise shows hashes only once it has computed them).
        """
        model = self._loaded_model(name)
        if model is not None and model.sha256:
            return model.sha256
        try:
            path = self.registry.get(name).path
        except LookupError:
            return None
        if path is None or not path.is_file():
            return None
        if self.models.hasher is not None:  # the app's persistent cache (issue 19): no read if known
            cached = self.models.hasher.cache.get(path)
            if cached is not None:
                return cached
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key not in self._hashes:
            if stat.st_size > max_bytes_to_hash:
                return None
            from webui.models.hashing import file_sha256

            self._hashes[key] = file_sha256(path)
        return self._hashes[key]

    def _loaded_model(self, name: str) -> StableDiffusionModel | None:
        return self.models.loaded().get(name)

    def download_plan(self, name: str) -> DownloadPlan | None:
        """What selecting ``name`` would download (None: its file is on disk); may ask the hub."""
        return self.models.download_plan(name)

    def select_model(
        self, name: str, progress: ProgressCallback | None = None, cancel: threading.Event | None = None
    ) -> None:
        """Make ``name`` the current model: download its file if needed, then load it.

        The download runs outside the device lock, so generations with the loaded model go on meanwhile;
        only the load waits for the running job.
        """
        self.models.ensure_downloaded(name, progress, cancel)
        with self._device_lock:
            self.models.get(name, download=False)

    def unload_model(self, name: str | None = None) -> None:
        """Free ``name`` (None: every model) on every device; waits for each device's running job first."""
        for device in self._devices:
            with device.lock:
                device.manager.unload(name)
                self._previews.clear()

    def default_request(self, model_name: str | None = None) -> GenerationRequest:
        """A1111's defaults with the model entry's own (``sampler``, ``steps``, ``cfg_scale``, size...).

        For filling a form; nothing loads. Fields the entry leaves out keep A1111's defaults.
        """
        entry = self.models.entry(model_name)
        suggested: dict[str, Any] = {
            "sampler_name": entry.sampler,
            "scheduler": entry.scheduler,
            "steps": entry.steps,
            "cfg_scale": entry.cfg_scale,
            "clip_skip": entry.clip_skip,
            "width": entry.width,
            "height": entry.height,
        }
        return GenerationRequest(**{field: value for field, value in suggested.items() if value is not None})

    def token_count(self, prompt: str, steps: int = 20, model_name: str | None = None) -> tuple[int, int] | None:
        """``(tokens, capacity)`` of ``prompt`` for the prompt box counter ("12/75"), or None when the
        model is not loaded (counting never loads a model)."""
        model = self._loaded_model(model_name or self.models.current_name or "")
        if model is None:
            return None
        from webui.extra_networks.prompt_tags import strip_tags
        from webui.pipeline.conditioning import count_tokens

        vocabulary = self.extra_networks.vocabulary(model.text_encoder)
        return count_tokens(model.text_encoder, strip_tags(prompt), steps, vocabulary)  # <lora:...> are no tokens

    def native_size(self, model_name: str | None = None) -> tuple[int, int]:
        """The (width, height) a request with width/height None gets for that model."""
        return native_size(self.models.get(model_name))

    def previewer(self, model: StableDiffusionModel) -> LatentPreview | None:
        """The model's fitted latent->RGB preview map, fitted once per loaded model (None if that failed)."""
        return self._previews.get(model)

    def _run_job(self, job: Job) -> GenerationResult:
        """Run ``job`` on the first device (what a single-device service does for every job)."""
        return self._generate_on(job, self._devices[0])

    def _save_images(
        self, job: Job, result: GenerationResult, script: RecordedScriptImages | None = None
    ) -> list[Path]:
        """Write a job's images (for workers in other processes, whose results come back here); a script's are
        the cells and grid its worker recorded."""
        if not job.save or self.outputs_dir is None:
            return []
        if script is not None:
            return script.replay(ScriptJobImages(self.outputs_dir, job))
        return save_job_images(self.outputs_dir, job, result)

    def _holds(self, device: _Device, model_name: str | None) -> bool:
        name = model_name or self.models.current_name
        if name is None:
            default = self.registry.default
            name = default.name if default is not None else None
        return name is not None and name in device.manager.loaded()

    def _generate_on(self, job: Job, device: _Device) -> GenerationResult:
        """Run ``job`` on ``device``: its request, or a script's cells in turn (webui/scripts/runner.py)."""
        outputs = self.outputs_dir if job.save else None

        def on_progress(progress: Progress) -> None:
            job.progress = progress

        return self._runners[device.name].run(
            job.request,
            job.model_name,
            job.control,
            on_progress,
            save=functools.partial(save_job_images, outputs, job) if outputs is not None else None,
            script_images=ScriptJobImages(outputs, job) if outputs is not None else None,
            on_step_seconds=self._note_step_seconds,
        )

    # --- textual-inversion embeddings and VAE files (issue 15) ---------------------------------

    def embeddings(self) -> EmbeddingFolder:
        model = self._loaded_model(self.models.current_name or "")
        return self.extra_networks.embeddings(model.text_encoder.hidden_size if model is not None else None)

    def refresh_embeddings(self) -> EmbeddingFolder:
        self.extra_networks.refresh_embeddings()
        return self.embeddings()

    def vae_files(self) -> list[VaeFile]:
        return self.extra_networks.vae_files()

    def refresh_vae(self) -> list[VaeFile]:
        return self.extra_networks.refresh_vae()

    @property
    def sd_vae(self) -> str:
        return self.extra_networks.sd_vae

    def set_sd_vae(self, choice: str) -> None:
        self._check_vae_choice(choice)
        self.extra_networks.set_sd_vae(choice)

    @property
    def speedup_settings(self) -> SpeedupSettings:  # issue 19
        return self._speedups

    def set_speedup_options(self, options: Mapping[str, Any]) -> None:
        self._speedups = self._speedups.updated(options)

    def _check_vae_choice(self, choice: str) -> None:
        from webui.extra_networks.vae_files import VaeError
        from webui.pipeline.errors import InvalidRequest

        try:
            self.extra_networks.check_vae_choice(choice)
        except VaeError as err:
            raise InvalidRequest("sd_vae", str(err)) from None

    def run_extras(
        self, images: list[Image.Image], request: ExtrasRequest, *, save: bool = True
    ) -> list[tuple[Image.Image, str]]:
        from webui.pipeline.outputs import save_image
        from webui.upscalers.postprocess import run_extras

        with self._device_lock:  # model upscalers run on the device: after the running generation
            results = run_extras(images, request, self.upscalers)
        if save and self.outputs_dir is not None:
            for image, text in results:
                save_image(image, self.outputs_dir, "extras", None, text)  # A1111: 00000.png, no seed
        return results

    def _note_step_seconds(self, seconds_per_pixel: float) -> None:
        """The last measured seconds of one sampling step per latent pixel per image (the size warning's estimate)."""
        self._step_seconds_per_pixel = seconds_per_pixel


@dataclass
class _Device:
    """One worker's device: its own model cache (a ``ModelManager``) and the lock its jobs and loads take."""

    name: str
    manager: ModelManager
    lock: threading.RLock = field(default_factory=threading.RLock)


def _unique_name(name: str, index: int, devices: Sequence[_Device]) -> str:
    """``cpu``, ``cpu#2``...: worker names stay distinct when a device is listed twice (tests, benches)."""
    same = [d for d in devices[:index] if d.name == name]
    return f"{name}#{len(same) + 1}" if same else name


class DeviceWorker:
    """A queue worker that generates on one device of this process (see :class:`webui.queue.workers.Worker`)."""

    def __init__(self, service: WebUIService, device: _Device):
        self._service = service
        self.device = device

    @property
    def name(self) -> str:
        return self.device.name

    def run(self, job: Job) -> GenerationResult:
        return self._service._generate_on(job, self.device)

    def holds(self, model_name: str | None) -> bool:
        return self._service._holds(self.device, model_name)

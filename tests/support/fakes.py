"""A stand-in for the app's service, and a check that a stand-in offers the whole service interface.

:class:`FakeService` implements :class:`webui.service.Service` (everything the UI and the REST API use) with
real :class:`~webui.jobs.Job` objects on a real :class:`~webui.jobs.JobQueue` (FIFO, one worker, queue
positions, interrupt), but its runner draws seeded random pixels instead of running a model, so that the UI,
launch and browser tests take about a second each.

Usage (pytest puts ``tests/`` on ``sys.path``)::

    from tests.support.fakes import FakeService
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from webui.extra_networks.embeddings import EmbeddingFolder
from webui.extra_networks.lora_library import LoraEntry, LoraLibrary
from webui.extra_networks.vae_files import VaeError, VaeFile
from webui.jobs import Job, JobQueue
from webui.models.download import DownloadCancelled, DownloadError, DownloadPlan, DownloadProgress, ProgressCallback
from webui.models.manager import ModelStatus
from webui.models.registry import SD1_NATIVE_SIZE, ModelEntry, Registry
from webui.pipeline import GenerationRequest, GenerationResult, Progress, resolve_request
from webui.pipeline.errors import InvalidRequest
from webui.pipeline.speedups import SpeedupSettings
from webui.sampling import create_sampler_registry
from webui.sampling.registry import SamplerRegistry
from webui.service import IDLE, LoadedModelInfo, ProgressSnapshot, Service
from webui.upscalers import UpscalerRegistry
from webui.upscalers.postprocess import ExtrasRequest, run_extras

FAKE_SAMPLERS = ("Euler a", "Euler", "DDIM")  # built-in samplers the fake offers, in this order
BROKEN_MODEL = "broken"  # the fake model that fails to load, as a checkpoint of another architecture would
FAILING_PROMPT = "explode"  # a job with this prompt fails, as a job whose VAE decodes NaNs would
FAKE_TEXT_WIDTH = 768  # the fake model's text-encoder width: embeddings of another width are "skipped"


def fake_models() -> list[ModelEntry]:
    """The fake's models.yaml: ``tiny`` (the default, with recommended settings), ``big`` and ``broken``."""
    return [
        ModelEntry("tiny", width=64, height=64, sampler="Euler", steps=6, scheduler="Karras", cfg_scale=5.5),
        ModelEntry("big", width=128, height=96),
        ModelEntry(BROKEN_MODEL, width=64, height=64),
    ]


class FakeService:
    """One worker, FIFO, random-pixel images whose seed decides the pixels; implements `webui.service.Service`.

    Args:
        step_seconds: how long each fake sampling step takes (read when a job runs, so tests may change it).

    Attributes for tests: ``submitted`` (every accepted job, in order), ``added_entries`` (models that the
    next :meth:`reload_registry` adds, as if someone had edited models.yaml), ``hub_sizes`` (model name ->
    bytes: these models "need a download" first, which :meth:`select_model` fakes in ``download_steps``
    progress updates ``download_step_seconds`` apart, or fails with ``download_error`` when that is set) and
    ``selects`` (every name passed to :meth:`select_model`, in order).
    """

    def __init__(self, step_seconds: float = 0.01, embeddings_dir: Path | None = None, vae_dir: Path | None = None):
        self.step_seconds = step_seconds
        self.submitted: list[Job] = []
        self.added_entries: list[ModelEntry] = []
        builtin = create_sampler_registry()
        self._samplers = SamplerRegistry(
            samplers=[builtin.get(name) for name in FAKE_SAMPLERS], schedules=builtin.schedules
        )
        self._registry = Registry(None, fake_models())
        self._current: str | None = None
        self._load_errors: dict[str, str] = {}
        self._queue = JobQueue(self._run, name="fake-generation")
        self.hub_sizes: dict[str, int] = {}
        self.download_steps = 4
        self.download_step_seconds = 0.05
        self.download_error: str | None = None
        self.selects: list[str] = []
        self.lora_library: LoraLibrary | None = None  # LoRA (issue 15): tests may set a folder's library
        # The real views of the embeddings and VAE folders (issue 15); the fake "model" is FAKE_TEXT_WIDTH wide.
        from webui.extra_networks.user_files import EmbeddingsAndVae

        self.extra_networks = EmbeddingsAndVae(embeddings_dir, vae_dir, Path.cwd())
        self.styles_file = Path("styles.csv")  # tests point it at a file of their own
        self.speedup_settings = SpeedupSettings()  # issue 19: token merging and DeepCache

    # --- models ---------------------------------------------------------------------------------

    @property
    def samplers(self) -> SamplerRegistry:
        return self._samplers

    @property
    def registry(self) -> Registry:
        return self._registry

    @property
    def current_model_name(self) -> str | None:
        return self._current

    def model_status(self) -> list[ModelStatus]:
        default = self._registry.default
        return [
            ModelStatus(
                name=e.name,
                loaded=e.name == self._current,
                current=e.name == self._current,
                default=default is not None and e.name == default.name,
                error=self._load_errors.get(e.name),
                short_hash=None,
                needs_download=e.name in self.hub_sizes,
            )
            for e in self._registry.entries
        ]

    def loaded_model_info(self) -> LoadedModelInfo | None:
        if self._current is None:
            return None
        entry = self._registry.get(self._current)
        return LoadedModelInfo(entry.name, entry.native_size, torch.float32, torch.device("cpu"))

    def model_sha256(self, name: str) -> str | None:
        return None  # no files behind the fake models

    def precision_text(self) -> str:
        return "UNet fp32, VAE fp32, text encoder fp32 (fake)"

    def download_plan(self, name: str) -> DownloadPlan | None:
        entry = self._registry.get(name)
        size = self.hub_sizes.get(entry.name)
        if size is None:
            return None
        url = f"https://huggingface.co/someone/{entry.name}/resolve/main/{entry.name}.safetensors"
        return DownloadPlan(entry.name, f"someone/{entry.name}", f"{entry.name}.safetensors", "main", url,
                            Path("/cache/huggingface/hub"), size)  # fmt: skip

    def select_model(
        self, name: str, progress: ProgressCallback | None = None, cancel: threading.Event | None = None
    ) -> None:
        entry = self._registry.get(name)
        self.selects.append(entry.name)
        if entry.name in self.hub_sizes:
            self._fake_download(entry.name, self.hub_sizes[entry.name], progress, cancel)
        if entry.name == BROKEN_MODEL:
            self._load_errors[entry.name] = "broken.safetensors: not a Stable Diffusion 1.x checkpoint"
            raise ValueError(self._load_errors[entry.name])
        self._current = entry.name

    def _fake_download(
        self, name: str, size: int, progress: ProgressCallback | None, cancel: threading.Event | None
    ) -> None:
        """Stands for ``ModelManager.ensure_downloaded``: progress updates, then the file is "on disk"."""
        if self.download_error is not None:
            self._load_errors[name] = self.download_error
            raise DownloadError(self.download_error)
        for i in range(1, self.download_steps + 1):
            if cancel is not None and cancel.wait(self.download_step_seconds):
                raise DownloadCancelled(f"model {name!r}: download cancelled")
            if cancel is None:
                time.sleep(self.download_step_seconds)
            elapsed = i * self.download_step_seconds
            done = size * i // self.download_steps
            if progress is not None:
                progress(DownloadProgress(name, f"{name}.safetensors", done, size, elapsed, done / elapsed,
                                          finished=i == self.download_steps))  # fmt: skip
        del self.hub_sizes[name]

    def unload_model(self, name: str | None = None) -> None:
        if name is None or self._registry.get(name).name == self._current:
            self._current = None

    def reload_registry(self) -> Registry:
        """Stands for re-reading models.yaml: picks up the entries queued in ``added_entries``."""
        self._registry.entries.extend(self.added_entries)
        self.added_entries = []
        return self._registry

    def token_count(self, prompt: str, steps: int = 20, model_name: str | None = None) -> tuple[int, int] | None:
        if self._current is None:
            return None
        return len(prompt.split()), 75

    # --- jobs -----------------------------------------------------------------------------------

    def submit(
        self, request: GenerationRequest, model_name: str | None = None, *, save: bool = True, owner: str | None = None
    ) -> Job:
        # Resolved as the real service does (a random seed is 1000 here, so that tests can predict pixels).
        entry = self._registry.get(model_name) if model_name else self._registry.default
        native = entry.native_size if entry is not None else SD1_NATIVE_SIZE
        fixed_seed = replace(request, seed=1000) if request.seed == -1 else request
        if fixed_seed.sd_vae is None:
            fixed_seed = replace(fixed_seed, sd_vae=self.sd_vae)
        fixed_seed = self.speedup_settings.filled(fixed_seed)  # issue 19
        resolved = resolve_request(fixed_seed, self._samplers, native, loras=self.lora_library)
        self._check_vae_choice(resolved.sd_vae)
        job = self._queue.submit(Job(resolved, model_name, save=save, owner=owner))
        self.submitted.append(job)
        return job

    # --- LoRA (issue 15) --------------------------------------------------------------------------

    def loras(self) -> list[LoraEntry]:
        return self.lora_library.entries if self.lora_library is not None else []

    def refresh_loras(self) -> list[LoraEntry]:
        return self.lora_library.refresh() if self.lora_library is not None else []

    def get_job(self, job_id: str) -> Job:
        return self._queue.get(job_id)

    @property
    def queue(self) -> JobQueue:
        return self._queue

    def estimate_seconds(self, width: int, height: int, steps: int, images: int = 1) -> float | None:
        """The fake's steps take ``step_seconds`` at 64x64 and grow with the pixels; unknown before a job ran."""
        if not any(job.done for job in self._queue.jobs):
            return None
        return self.step_seconds * width * height / 64**2 * steps * images

    def progress(self, job_id: str | None = None) -> ProgressSnapshot:
        snapshot = self._queue.snapshot()  # running and waiting read together, as the real service does
        job = self.get_job(job_id) if job_id is not None else snapshot.current
        waiting = len(snapshot.waiting)
        if job is None:
            return ProgressSnapshot(None, IDLE, None, waiting, 0.0, None)
        return ProgressSnapshot.of(job, waiting)

    def interrupt(self, job_id: str | None = None) -> bool:
        job = self.get_job(job_id) if job_id is not None else self._queue.running
        if job is None or job.done:
            return False
        job.interrupt()
        return True

    def skip(self, job_id: str | None = None) -> bool:
        job = self.get_job(job_id) if job_id is not None else self._queue.running
        if job is None or job.done:
            return False
        job.skip()
        return True

    def close(self) -> None:
        self._queue.close()

    # --- embeddings and VAE files (issue 15) ------------------------------------------------------

    def embeddings(self) -> EmbeddingFolder:
        return self.extra_networks.embeddings(FAKE_TEXT_WIDTH if self._current is not None else None)

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

    def set_speedup_options(self, options: Mapping[str, Any]) -> None:  # issue 19
        self.speedup_settings = self.speedup_settings.updated(options)

    def _check_vae_choice(self, choice: str) -> None:
        try:
            self.extra_networks.check_vae_choice(choice)
        except VaeError as err:
            raise InvalidRequest("sd_vae", str(err)) from None

    def _run(self, job: Job) -> GenerationResult:
        request, step_seconds = job.request, self.step_seconds
        if request.prompt == FAILING_PROMPT:
            time.sleep(step_seconds)
            raise RuntimeError("the VAE decoded NaNs; try --precision fp32")
        seed = request.seed
        images, seeds, infotexts = [], [], []
        total = request.steps * request.total_images
        for i in range(request.total_images):
            for s in range(request.steps):
                if job.control.interrupted:
                    break
                time.sleep(step_seconds)
                done = i * request.steps + s + 1
                job.progress = Progress(
                    step=done,
                    total_steps=total,
                    image_index=i,
                    images_total=request.total_images,
                    sampling_step=s + 1,
                    sampling_steps=request.steps,
                    eta_seconds=(total - done) * step_seconds,
                    elapsed_seconds=done * step_seconds,
                    preview=Image.new("RGB", (8, 8), (done * 10 % 256, 0, 0)),
                )
            if job.control.interrupted:
                break
            rng = np.random.default_rng(seed + i)
            pixels = rng.integers(0, 256, (request.height, request.width, 3), dtype=np.uint8)
            images.append(Image.fromarray(pixels))
            seeds.append(seed + i)
            infotexts.append(
                f"{request.prompt}\nSteps: {request.steps}, Sampler: {request.sampler_name}, "
                f"CFG scale: {request.cfg_scale:g}, Seed: {seed + i}, Size: {request.width}x{request.height}"
            )
        return GenerationResult(images, seeds, infotexts, [], job.control.interrupted, request)

    # --- upscalers (hires fix, Extras): the built-in ones, run for real (they need no model) -------------

    @property
    def upscalers(self) -> UpscalerRegistry:
        return UpscalerRegistry()

    def run_extras(
        self, images: list[Image.Image], request: ExtrasRequest, *, save: bool = True
    ) -> list[tuple[Image.Image, str]]:
        return run_extras(images, request, self.upscalers)


def interface_gaps(service: object) -> list[str]:
    """What ``service`` lacks of :class:`webui.service.Service`, or offers with other parameters; [] if nothing.

    Checks every public member of the protocol: properties must be there as non-method values, methods must
    take the protocol's parameters (same names, kinds and defaults) and may only add optional ones.
    """
    gaps = []
    for name, member in vars(Service).items():
        if name.startswith("_"):
            continue
        if not hasattr(service, name):
            gaps.append(f"{name}: missing")
            continue
        value = getattr(service, name)
        if isinstance(member, property):
            if inspect.ismethod(value):
                gaps.append(f"{name}: a method, not a property or attribute")
            continue
        if not callable(value):
            gaps.append(f"{name}: not a method")
            continue
        expected = list(inspect.signature(member).parameters.values())[1:]  # without self
        actual = inspect.signature(value).parameters
        for param in expected:
            given = actual.get(param.name)
            if given is None or given.kind != param.kind or given.default != param.default:
                gaps.append(f"{name}: parameter {param} is {given}")
        expected_names = {param.name for param in expected}
        for param in actual.values():
            if (
                param.name not in expected_names
                and param.default is param.empty
                and param.kind
                not in (
                    param.VAR_POSITIONAL,
                    param.VAR_KEYWORD,
                )
            ):
                gaps.append(f"{name}: extra required parameter {param}")
    return gaps

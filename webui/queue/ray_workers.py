"""Queue workers on a Ray cluster (``--cluster auto`` or ``ray://host:10001``): one actor per GPU (``num_gpus=1``),
or per ``cpus_per_worker`` CPU cores when the cluster has no GPU. The web front end, the UI, the API and the queue
database stay in the one process users connect to; only generation runs in the actors, which run jobs through
the same :class:`~webui.queue.device_runner.DeviceRunner` as a local device (scripts, embeddings, LoRAs, the VAE
choice; nothing about Ray reaches below the worker).

Each actor loads models from the same ``models.yaml`` paths as the front end, and its embeddings, VAE files,
upscaler models and LoRA files from the same folders (:class:`WorkerSetup`), so every node needs the same files
at the same paths (a shared filesystem, or a copy). A job travels as the queue's versioned JSON
(:mod:`webui.queue.codec`); the front end polls the actor for progress (with the preview) every
``POLL_SECONDS``, forwards Interrupt and Skip to the actor that runs the job, and writes the returned images
itself. An actor that dies (node lost, ``ray.kill``) makes :meth:`RayWorker.run` raise
:class:`~webui.queue.workers.WorkerLost`: the queue puts the job back in line for the other actors.

Ray is optional: ``pip install -e '.[cluster]'``. Without it, :func:`connect_cluster` says how to install it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from webui.queue.codec import encode_request
from webui.queue.workers import WorkerLost

if TYPE_CHECKING:
    from collections.abc import Callable

    from webui.jobs import Job
    from webui.pipeline import GenerationResult
    from webui.queue.device_runner import RecordedScriptImages

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.05
INSTALL_HINT = "--cluster needs Ray: pip install -e '.[cluster]' (or pip install 'ray>=2.40')"


class ClusterError(RuntimeError):
    """The cluster cannot be used (Ray missing, unreachable, no room for a worker); the message says why."""


@dataclass
class _Run:
    """A job running inside an actor."""

    control: Any
    thread: threading.Thread
    progress: Any = None
    outcome: dict[str, Any] | None = None


@dataclass(frozen=True)
class WorkerSetup:
    """What an actor needs to run jobs as the front end's own devices would: the same files and settings."""

    registry_path: Path  # models.yaml (its folder is where the entries' relative paths start)
    dtype: str = "float32"
    samplers_dir: Path | None = None
    upscaler_dir: Path | None = None  # a hires fix's model upscaler
    embeddings_dir: Path | None = None  # the prompt's textual-inversion words
    vae_dir: Path | None = None  # the VAE files a job may choose
    version: str | None = None  # the infotexts' Version


class GenerationActor:
    """The Ray actor: one model cache on its device, one job at a time (created with ``max_concurrency`` > 1
    so that :meth:`poll`, :meth:`interrupt` and :meth:`skip` are answered while a job runs)."""

    def __init__(self, setup: WorkerSetup, device: str):
        import torch

        from webui.extra_networks.user_files import EmbeddingsAndVae
        from webui.models.manager import ModelManager
        from webui.models.registry import load_registry
        from webui.queue.device_runner import DeviceRunner, PreviewMaps
        from webui.sampling import create_sampler_registry
        from webui.upscalers import UpscalerRegistry

        self.device = torch.device(device)
        dtype = getattr(torch, setup.dtype)
        self.manager = ModelManager(load_registry(setup.registry_path), self.device, dtype)
        self.samplers = create_sampler_registry(setup.samplers_dir)
        self.upscalers = UpscalerRegistry(setup.upscaler_dir, device=self.device, dtype=dtype)
        extra_networks = EmbeddingsAndVae(setup.embeddings_dir, setup.vae_dir, setup.registry_path.parent)
        self.runner = DeviceRunner(self.manager, extra_networks, PreviewMaps(), setup.version)
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()

    def pid(self) -> int:
        return os.getpid()

    def loaded(self) -> list[str]:
        return list(self.manager.loaded())

    def start(self, job_id: str, request_json: str, model_name: str | None) -> None:
        from webui.pipeline import GenerationControl

        control = GenerationControl()
        thread = threading.Thread(target=self._generate, args=(job_id, request_json, model_name), daemon=True)
        with self._lock:
            self._runs[job_id] = _Run(control, thread)
        thread.start()

    def _generate(self, job_id: str, request_json: str, model_name: str | None) -> None:
        from webui.queue.codec import decode_request
        from webui.queue.device_runner import RecordedScriptImages

        run = self._runs[job_id]
        try:
            request = decode_request(request_json, self.samplers, self.upscalers)

            def on_progress(progress: Any) -> None:
                run.progress = progress

            # The front end writes the images it gets back (a script's cells and grid as recorded here); nothing
            # is saved on the actor's node.
            script = RecordedScriptImages() if request.script is not None else None
            result = self.runner.run(request, model_name, run.control, on_progress, script_images=script)
            # The whole result (a field added to it can never be dropped on the way back), less its request:
            # the front end has that already, and the actor's copy holds resolved objects it need not ship.
            run.outcome = {"script": script, "result": replace(result, request=None, paths=[])}
        except BaseException as err:  # noqa: BLE001 - sent back to the front end, which stores it on the job
            run.outcome = {"error": err if _picklable(err) else RuntimeError(f"{type(err).__name__}: {err}")}

    def poll(self, job_id: str) -> tuple[Any, dict[str, Any] | None]:
        """``(latest progress, outcome or None while running)``; the outcome is handed out once."""
        with self._lock:
            run = self._runs[job_id]
            outcome = run.outcome
            if outcome is not None:
                del self._runs[job_id]
        return run.progress, outcome

    def interrupt(self, job_id: str) -> None:
        run = self._runs.get(job_id)
        if run is not None:
            run.control.interrupt()

    def skip(self, job_id: str) -> None:
        run = self._runs.get(job_id)
        if run is not None:
            run.control.skip()


def _picklable(err: BaseException) -> bool:
    import pickle

    try:
        pickle.loads(pickle.dumps(err))
    except Exception:  # noqa: BLE001 - any failure: send a plain RuntimeError instead
        return False
    return True


class RayWorker:
    """The front end's side of one actor (a :class:`~webui.queue.workers.Worker` for the queue).

    Args:
        actor: the actor handle.
        name: for logs and the queue display.
        save: ``save(job, result, script) -> paths`` writes the images in the front end (``script``: the cells and
            grid a script job recorded; None: nothing saved).
    """

    def __init__(
        self,
        actor: Any,
        name: str,
        save: Callable[[Job, GenerationResult, RecordedScriptImages | None], list[Path]] | None = None,
        current_model: Callable[[], str | None] | None = None,
    ):
        self.actor = actor
        self._name = name
        self._save = save
        self._current_model = current_model
        self._loaded: set[str] = set()

    @property
    def name(self) -> str:
        return self._name

    def holds(self, model_name: str | None) -> bool:
        return model_name in self._loaded if model_name is not None else bool(self._loaded)

    def close(self) -> None:
        """End the actor (its model cache with it)."""
        import ray

        ray.kill(self.actor)

    def run(self, job: Job) -> GenerationResult:
        import ray
        from ray.exceptions import RayActorError

        # A job without a model uses the front end's current one, as on a local device.
        model_name = job.model_name or (self._current_model() if self._current_model is not None else None)
        try:
            ray.get(self.actor.start.remote(job.id, encode_request(job.request), model_name))
            interrupted = skipped = False
            while True:
                if job.control.interrupted and not interrupted:
                    interrupted = True
                    self.actor.interrupt.remote(job.id)
                if job.control.skipped and not skipped:
                    skipped = True
                    self.actor.skip.remote(job.id)
                progress, outcome = ray.get(self.actor.poll.remote(job.id))
                if progress is not None:
                    job.progress = progress
                if outcome is not None:
                    break
                time.sleep(POLL_SECONDS)
            self._loaded = set(ray.get(self.actor.loaded.remote()))
        except RayActorError as err:
            raise WorkerLost(f"Ray actor {self._name} died: {type(err).__name__}") from err
        if "error" in outcome:
            raise outcome["error"]
        result = replace(outcome["result"], request=job.request)
        if self._save is not None:
            result.paths = self._save(job, result, outcome["script"])
        return result


def connect_cluster(address: str) -> None:
    """Join the Ray cluster at ``address`` (``auto``: the one ``ray start`` runs on this machine, or a
    ``ray://`` URL); nothing if this process already joined one."""
    try:
        import ray
    except ImportError:
        raise ClusterError(INSTALL_HINT) from None
    if ray.is_initialized():
        return
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise ClusterError(f"cannot join the Ray cluster at {address!r}: {err}") from None


def start_workers(
    registry_path: Path,
    *,
    dtype: str = "float32",
    samplers_dir: Path | None = None,
    version: str | None = None,
    workers: int | None = None,
    cpus_per_worker: int = 1,
    save: Callable[[Job, GenerationResult, RecordedScriptImages | None], list[Path]] | None = None,
    upscaler_dir: Path | None = None,
    embeddings_dir: Path | None = None,
    vae_dir: Path | None = None,
    current_model: Callable[[], str | None] | None = None,
) -> list[RayWorker]:
    """Start the generation actors on the joined cluster: one per GPU, else one per ``cpus_per_worker`` cores
    (``workers`` caps the count). Raises :class:`ClusterError` when there is no room for one.

    The folders are the front end's (``--upscaler-dir``, ``--embeddings-dir``, ``--vae-dir``); ``save`` writes a
    finished job's images on the front end; ``current_model`` names the model of a job that names none."""
    import ray

    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if gpus:
        count, options, device = gpus, {"num_gpus": 1}, "cuda"
    else:
        count = int(resources.get("CPU", 0)) // max(1, cpus_per_worker)
        options, device = {"num_cpus": cpus_per_worker}, "cpu"
    if workers is not None:
        count = min(count, workers)
    if count < 1:
        raise ClusterError(f"the Ray cluster has no room for a worker (resources: {resources})")
    as_actor: Any = ray.remote  # its overloads do not list the actor options
    remote = as_actor(max_concurrency=4, **options)(GenerationActor)
    setup = WorkerSetup(Path(registry_path), dtype, samplers_dir, upscaler_dir, embeddings_dir, vae_dir, version)
    actors = [remote.remote(setup, device) for _ in range(count)]
    pids = ray.get([actor.pid.remote() for actor in actors])  # waits until every actor is up
    logger.info("cluster: %d generation worker(s) on Ray (%s), pids %s", count, device, pids)
    return [RayWorker(actor, f"ray:{i + 1}", save, current_model) for i, actor in enumerate(actors)]

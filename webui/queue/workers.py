"""What runs a job: a worker. The queue hands each idle worker the next job and stores what comes back.

A worker is anything with a ``name``, ``run(job) -> GenerationResult`` and ``holds(model_name)``: a function
on this process's device (:class:`FunctionWorker`), one of several devices of this process
(``WebUIService`` builds one :class:`DeviceWorker`-like runner per ``--device``), or a Ray actor on another
machine (:mod:`webui.queue.ray_workers`). ``run`` raises :class:`WorkerLost` when the worker itself died
(its process, node or actor): the queue then puts the job back in line and stops using that worker; any
other error is the job's own and is stored on it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

    from webui.jobs import Job
    from webui.pipeline import GenerationResult


class WorkerLost(RuntimeError):
    """The worker running a job is gone (process killed, node lost); the job did not fail by itself."""


class Worker(Protocol):
    """Runs one job at a time for the queue."""

    @property
    def name(self) -> str:
        """For logs and the queue display ("cuda:0", "ray:actor-1")."""
        ...

    def run(self, job: Job) -> GenerationResult:
        """Generate ``job``'s result (progress goes to ``job.progress``, interrupt comes from ``job.control``)."""
        ...

    def holds(self, model_name: str | None) -> bool:
        """Whether this worker already has that model in memory (the queue prefers such a worker)."""
        ...


class FunctionWorker:
    """A worker that calls ``run(job)`` on the queue's thread (one device, or a test's fake runner)."""

    def __init__(
        self,
        run: Callable[[Job], GenerationResult],
        name: str = "worker",
        holds: Callable[[str | None], bool] | None = None,
    ):
        self._run = run
        self._holds = holds
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    def run(self, job: Job) -> GenerationResult:
        return self._run(job)

    def holds(self, model_name: str | None) -> bool:
        return self._holds(model_name) if self._holds is not None else False


def parse_device_list(text: str) -> str:
    """``--device``'s spelling with several devices: ``cuda:0,cuda:1`` or ``all`` (every CUDA GPU), each part as
    :func:`webui.devices.parse_device` accepts it; returns it normalised. ValueError names a bad part."""
    from webui.devices import parse_device

    choice = (text or "auto").strip().lower()
    if choice == "all":
        return choice
    return ",".join(parse_device(part) for part in choice.split(","))


def pick_devices(spec: str) -> list[torch.device]:
    """The devices of a ``--device`` value: one for a plain name, several for a list, every CUDA GPU for ``all``
    (the CPU when there is none). ValueError for a device this machine lacks."""
    import torch

    from webui.devices import pick_device

    if spec.strip().lower() == "all":
        count = torch.cuda.device_count()
        return [torch.device(f"cuda:{i}") for i in range(count)] if count else [torch.device("cpu")]
    return [pick_device(part) for part in spec.split(",")]

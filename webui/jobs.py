"""The generation queue: jobs run one at a time, in submission order, on one lazily started worker thread.

A :class:`Job` is one queued request with its state, latest :class:`~webui.pipeline.Progress` and, once
finished, its result or error. Its state changes only along :data:`TRANSITIONS`::

    queued --> running --> done | error | interrupted
       '--> interrupted                (withdrawn before it started, or the queue was closed)

and only through :meth:`Job._move`, called by the :class:`JobQueue` that owns the job. What the queue keeps
is three things, all guarded by its one lock: the FIFO of waiting jobs, the running job, and the index of
jobs by id (the waiting, the running and the last :data:`KEEP_FINISHED_JOBS` finished ones). A durable queue
stores exactly these and replays the same transitions.

Nothing here knows about models: the queue calls ``run(job)`` (``WebUIService`` passes a function that
generates on its device) and stores what it returns or raises. A failing job keeps its error; the queue goes on.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from enum import Enum

from webui.pipeline import GenerationControl, GenerationResult, Progress, ResolvedRequest

KEEP_FINISHED_JOBS = 64


class JobState(str, Enum):
    """Where a job is; the values are what the UI and the API show ("queued", "running", ...)."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    ERROR = "error"
    INTERRUPTED = "interrupted"

    def __str__(self) -> str:
        # The plain value in f-strings and str() on every Python version (3.10's str() would say "JobState.DONE").
        return self.value


ACTIVE_STATES = frozenset({JobState.QUEUED, JobState.RUNNING})
FINISHED_STATES = frozenset({JobState.DONE, JobState.ERROR, JobState.INTERRUPTED})
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.INTERRUPTED}),
    JobState.RUNNING: FINISHED_STATES,
    **{finished: frozenset() for finished in FINISHED_STATES},
}


def interrupting_text(decoding: bool) -> str:
    """The status between Interrupt and the job's end. Sampling stops within a moment, but decoding the
    image it keeps takes long at large sizes (about 90 s at 1024 px on the demo model here): say so."""
    return "Interrupting… decoding the current image" if decoding else "Interrupting…"


class Job:
    """One queued generation. Thread-safe to read from any thread; created by ``WebUIService.submit``.

    Args:
        request: what to generate, resolved and immutable (``WebUIService.submit`` makes it).
        model_name: the registry model to generate with; None: the current (or default) one.
        save: write the images to the service's outputs folder.
        job_id: the id to use; a fresh random one by default.
        owner: who submitted it, for the queue display: a user name, ``"API"``; None for an anonymous browser tab.
    """

    def __init__(
        self,
        request: ResolvedRequest,
        model_name: str | None = None,
        *,
        save: bool = True,
        job_id: str | None = None,
        owner: str | None = None,
    ):
        self.id = job_id or uuid.uuid4().hex
        self.request = request
        self.model_name = model_name
        self.save = save
        self.owner = owner
        self.progress: Progress | None = None  # set by the runner while the job runs
        self.error: BaseException | None = None
        self.created_at = time.time()
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.control = GenerationControl()
        self._state = JobState.QUEUED
        self._result: GenerationResult | None = None
        self._done = threading.Event()
        self._queue: JobQueue | None = None

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, state={self.state.value!r}, queue_position={self.queue_position!r})"

    @property
    def state(self) -> JobState:
        return self._state

    @property
    def queue_position(self) -> int | None:
        """1 for the next job to run, 2 for the one after...; 0 while running; None when finished."""
        if self._state == JobState.RUNNING:
            return 0
        if self._state != JobState.QUEUED or self._queue is None:
            return None
        return self._queue.position(self)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def interrupting(self) -> bool:
        """Interrupt was asked for and the job has not stopped yet (the UI says "Interrupting…")."""
        return self.control.interrupted and not self.done

    @property
    def error_message(self) -> str | None:
        return None if self.error is None else str(self.error) or type(self.error).__name__

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job has finished (any way); False on timeout."""
        return self._done.wait(timeout)

    def result(self, timeout: float | None = None) -> GenerationResult:
        """The job's result, waiting for it; re-raises the job's error; TimeoutError on timeout."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"job {self.id} still {self._state} after {timeout} s")
        if self.error is not None:
            raise self.error
        assert self._result is not None
        return self._result

    def interrupt(self) -> None:
        """Stop now: a queued job is dropped, a running one stops within one UNet block, keeping what it has."""
        self.control.interrupt()
        if self._queue is not None:
            self._queue.cancel(self)

    def skip(self) -> None:
        """Abandon the batch being sampled and go on with the job's next batch."""
        self.control.skip()

    def _move(self, state: JobState) -> None:
        """The one place a job changes state. Only the owning queue calls it, for a job it holds exclusively
        (popped from, or removed from, its waiting FIFO under its lock), so no two threads move one job."""
        if state not in TRANSITIONS[self._state]:
            raise RuntimeError(f"job {self.id}: no transition from {self._state} to {state}")
        self._state = state
        if state == JobState.RUNNING:
            self.started_at = time.time()

    def _finish(self, state: JobState, result: GenerationResult | None, error: BaseException | None) -> None:
        self._result, self.error = result, error
        self.finished_at = time.time()
        self._move(state)
        self._done.set()

    def _withdraw(self) -> None:
        """Finish a job that never started: interrupted, with an empty result."""
        self._finish(JobState.INTERRUPTED, GenerationResult(interrupted=True, request=self.request), None)


class JobQueue:
    """FIFO of jobs run by ``run(job)`` on one lazily started worker thread.

    Args:
        run: generates the job's result; may raise (the error is stored on the job and the queue goes on).
        name: the worker thread's name.
    """

    def __init__(self, run: Callable[[Job], GenerationResult], *, name: str = "webui-generation"):
        self._run = run
        self._name = name
        self._cond = threading.Condition()
        # The queue's whole state, guarded by _cond:
        self._waiting: deque[Job] = deque()  # queued jobs, next first
        self._running: Job | None = None
        self._jobs: OrderedDict[str, Job] = OrderedDict()  # by id, in submission order; old finished ones dropped
        self._closed = False
        self._thread: threading.Thread | None = None

    def submit(self, job: Job) -> Job:
        """Queue a new job (state queued); RuntimeError once the queue is closed."""
        with self._cond:
            if self._closed:
                raise RuntimeError("the generation queue is closed")
            if job.state != JobState.QUEUED or job._queue is not None:
                raise ValueError(f"job {job.id} was submitted before")
            job._queue = self
            self._waiting.append(job)
            self._jobs[job.id] = job
            self._forget_old()
            if self._thread is None or not self._thread.is_alive():
                # (Re)start the worker: lazily, and again should a fatal error ever have ended it.
                self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return job

    def position(self, job: Job) -> int | None:
        """1 for the next job to run, 2 for the one after...; None if ``job`` is not waiting."""
        with self._cond:
            for i, waiting in enumerate(self._waiting, start=1):
                if waiting is job:
                    return i
        return None

    def cancel(self, job: Job) -> bool:
        """Drop a job that has not started (it becomes interrupted); True if it was waiting."""
        with self._cond:
            try:
                self._waiting.remove(job)
            except ValueError:
                return False
        job._withdraw()
        return True

    @property
    def running(self) -> Job | None:
        with self._cond:
            return self._running

    @property
    def waiting(self) -> list[Job]:
        with self._cond:
            return list(self._waiting)

    def get(self, job_id: str) -> Job:
        """The job with ``job_id`` (recent finished jobs are kept); KeyError if unknown."""
        with self._cond:
            try:
                return self._jobs[job_id]
            except KeyError:
                raise KeyError(f"no job with id {job_id!r}") from None

    @property
    def jobs(self) -> list[Job]:
        with self._cond:
            return list(self._jobs.values())

    def close(self, timeout: float | None = 10.0) -> None:
        """Drop waiting jobs, interrupt the running one and stop the worker."""
        with self._cond:
            self._closed = True
            waiting, self._waiting = list(self._waiting), deque()
            running = self._running
            self._cond.notify_all()
        for job in waiting:
            job.control.interrupt()
            job._withdraw()
        if running is not None:
            running.control.interrupt()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _forget_old(self) -> None:
        finished = [jid for jid, job in self._jobs.items() if job.done]
        for jid in finished[: max(0, len(finished) - KEEP_FINISHED_JOBS)]:
            del self._jobs[jid]

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if not self._waiting:
                    return
                job = self._waiting.popleft()
                self._running = job
                job._move(JobState.RUNNING)
            try:
                result = self._run(job)
            except BaseException as err:  # noqa: BLE001 - stored on the job; the queue must go on
                job._finish(JobState.ERROR, None, err)
            else:
                job._finish(JobState.INTERRUPTED if result.interrupted else JobState.DONE, result, None)
            finally:
                with self._cond:
                    self._running = None
                    self._cond.notify_all()

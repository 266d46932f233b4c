"""The generation queue: jobs run in submission order on workers (one per device), and every job is a row of
the queue database, so that a restart or a crash loses none.

A :class:`Job` is one queued request with its state, latest :class:`~webui.pipeline.Progress` and, once
finished, its result or error. Its state changes only along :data:`TRANSITIONS`::

    queued --> running --> done | error | interrupted
       |          '--> queued          (its worker was lost: it runs again, from the start)
       '--> interrupted                (withdrawn before it started)

and only through :meth:`Job._move`, called by the :class:`JobQueue` that owns the job. What the queue keeps
in memory is guarded by its one lock: the waiting jobs (next first), the running ones (one per worker), and
the index of jobs by id (the waiting, the running and the last :data:`KEEP_FINISHED_JOBS` finished ones).
Every transition is also written to its :class:`~webui.queue.store.QueueStore` (the states there are
AUTOMATIC1111 agent-scheduler's: pending, running, done, failed, interrupted), from which a new queue
restores the pending jobs in their order.

Nothing here knows about models: a worker's ``run(job)`` (``WebUIService`` gives one per device) generates,
and the queue stores what it returns or raises. A failing job keeps its error; the queue goes on.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from webui.pipeline import GenerationControl, GenerationResult, Progress, ResolvedRequest
from webui.queue import store as stored
from webui.queue.codec import UnstorableValue, encode_request
from webui.queue.store import QueueStore, StoredJob
from webui.queue.workers import FunctionWorker, Worker, WorkerLost

logger = logging.getLogger(__name__)

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

    @property
    def stored(self) -> str:
        """The name in the queue database and the agent-scheduler API."""
        return _STORED_NAMES[self]

    @classmethod
    def from_stored(cls, name: str) -> JobState:
        return {value: state for state, value in _STORED_NAMES.items()}[name]


_STORED_NAMES = {
    JobState.QUEUED: stored.PENDING,
    JobState.RUNNING: stored.RUNNING,
    JobState.DONE: stored.DONE,
    JobState.ERROR: stored.FAILED,
    JobState.INTERRUPTED: stored.INTERRUPTED,
}
ACTIVE_STATES = frozenset({JobState.QUEUED, JobState.RUNNING})
FINISHED_STATES = frozenset({JobState.DONE, JobState.ERROR, JobState.INTERRUPTED})
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.INTERRUPTED}),
    JobState.RUNNING: FINISHED_STATES | {JobState.QUEUED},
    **{finished: frozenset() for finished in FINISHED_STATES},
}


def interrupting_text(decoding: bool, decoded: float | None = None) -> str:
    """The status between Interrupt and the job's end. Sampling stops within a moment, but decoding the
    image it keeps takes long at large sizes (about 90 s at 1024 px on the demo model here): say so, and how
    far it is where the VAE reports it (``decoded``, 0..1)."""
    if not decoding:
        return "Interrupting…"
    return "Interrupting… decoding the current image" + ("" if decoded is None else f" ({decoded:.0%})")


def decoding_text(decoded: float | None) -> str:
    """The status while a batch's images are decoded, with how much is done where the VAE reports it."""
    return "decoding" if decoded is None else f"decoding {decoded:.0%}"


class Job:
    """One queued generation. Thread-safe to read from any thread; created by ``WebUIService.submit``.

    Args:
        request: what to generate, as ``resolve_request`` made it (immutable: no caller can change a queued job).
        model_name: the registry model to generate with; None: the current (or default) one.
        save: write the images to the service's outputs folder.
        job_id: the id to use; a fresh random one by default.
        owner: who submitted it, for the queue display: a user name, ``"API"``; None for an anonymous browser tab.
        meta: JSON-able extras stored with the job (``callback_url``, ``name``, ``source``).
        created_at: when it was first submitted (kept when a job is restored after a restart).
    """

    def __init__(
        self,
        request: ResolvedRequest,
        model_name: str | None = None,
        *,
        save: bool = True,
        job_id: str | None = None,
        owner: str | None = None,
        meta: Mapping[str, Any] | None = None,
        created_at: float | None = None,
    ):
        self.id = job_id or uuid.uuid4().hex
        self.request = request
        self.model_name = model_name
        self.save = save
        self.owner = owner
        self.progress: Progress | None = None  # set by the runner while the job runs
        self.error: BaseException | None = None
        self.meta: dict[str, Any] = dict(meta or {})
        self.created_at = created_at if created_at is not None else time.time()
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.control = GenerationControl()
        self._state = JobState.QUEUED
        self._result: GenerationResult | None = None
        self._done = threading.Event()
        self._queue: JobQueue | None = None
        self._user_interrupted = False  # Interrupt came from a user, not from the queue closing
        self.worker: str | None = None  # the name of the worker running it

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

    @property
    def runs_again(self) -> bool:
        """Stopped by the queue closing, not by a user: it runs again from the start at the next start, so what
        it made so far is not saved (image i of a job is written once, by name: the re-run's would be skipped)."""
        return self.control.interrupted and not self._user_interrupted

    def interrupt(self) -> None:
        """Stop now: a queued job is dropped, a running one stops within one UNet block, keeping what it has."""
        self._user_interrupted = True
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
        if state == JobState.QUEUED:  # back in line after its worker was lost: a fresh start
            self.started_at, self.progress, self.control = None, None, GenerationControl()

    def _finish(self, state: JobState, result: GenerationResult | None, error: BaseException | None) -> None:
        self._result, self.error = result, error
        self.finished_at = time.time()
        self._move(state)
        self._done.set()

    def _withdraw(self) -> None:
        """Finish a job that never started: interrupted, with an empty result."""
        self._finish(JobState.INTERRUPTED, GenerationResult(interrupted=True, request=self.request), None)


@dataclass(frozen=True)
class QueueSnapshot:
    """The running and the waiting jobs, read together under the queue's lock (never a job in neither)."""

    running: tuple[Job, ...]
    waiting: tuple[Job, ...]
    paused: bool = False

    @property
    def current(self) -> Job | None:
        """The job that started first among the running ones."""
        return self.running[0] if self.running else None


class _Slot:
    """A worker and the job it runs (None: idle); guarded by the queue's lock."""

    def __init__(self, worker: Worker):
        self.worker = worker
        self.job: Job | None = None
        self.thread: threading.Thread | None = None
        self.lost = False


class JobQueue:
    """Jobs run by workers in submission order, each written through to a :class:`QueueStore`.

    Args:
        run: one worker's ``run(job)`` (the single-device service and the test fakes); or give ``workers``.
        name: the worker threads' name prefix.
        workers: the workers (one per device or Ray actor); an idle worker that already holds a job's model
            is preferred for it.
        store: where jobs are kept; an in-memory store by default. Pending jobs found in it are restored
            (``decode`` turns a stored request back into a ``ResolvedRequest``) and run in their order.
        history: how many finished jobs the store keeps (older ones are pruned).
        decode: ``decode(request_json) -> ResolvedRequest`` for restoring jobs; required with a store that
            holds pending jobs.
        listeners: called with each job that finishes (see :meth:`add_listener`).
    """

    def __init__(
        self,
        run: Callable[[Job], GenerationResult] | None = None,
        *,
        name: str = "webui-generation",
        workers: Sequence[Worker] = (),
        store: QueueStore | None = None,
        history: int = stored.DEFAULT_HISTORY,
        decode: Callable[[str], ResolvedRequest] | None = None,
        listeners: Sequence[Callable[[Job], None]] = (),
    ):
        if run is not None:
            workers = [FunctionWorker(run, name), *workers]
        if not workers:
            raise ValueError("a JobQueue needs run or at least one worker")
        self._name = name
        self._cond = threading.Condition()
        self.store = store if store is not None else QueueStore.memory()
        self.history_size = history
        self._decode = decode
        self._listeners: list[Callable[[Job], None]] = list(listeners)  # before restoring: they see those jobs too
        # The queue's whole state, guarded by _cond:
        self._slots = [_Slot(worker) for worker in workers]
        self._waiting: list[Job] = []  # queued jobs, next first
        self._jobs: OrderedDict[str, Job] = OrderedDict()  # by id, in submission order; old finished ones dropped
        self._closed = False
        self._paused = bool(self.store.setting("paused", False))
        self._restore()

    # --- submitting and ordering -----------------------------------------------------------------

    def submit(self, job: Job) -> Job:
        """Queue a new job (state queued, stored as pending); RuntimeError once the queue is closed."""
        with self._cond:
            if self._closed:
                raise RuntimeError("the generation queue is closed")
            if job.state != JobState.QUEUED or job._queue is not None:
                raise ValueError(f"job {job.id} was submitted before")
            self.store.add(self._row(job))
            job._queue = self
            self._waiting.append(job)
            self._jobs[job.id] = job
            self._forget_old()
            self._dispatch()
        return job

    def _row(self, job: Job) -> StoredJob:
        meta = dict(job.meta)
        try:
            request: str | None = encode_request(job.request)
        except UnstorableValue as err:
            # It still runs now; only a restart cannot bring it back (restoring it fails with this message).
            logger.warning("queue: job %s is kept in memory only: %s", job.id, err)
            request, meta["unstorable"] = None, str(err)
        return StoredJob(
            id=job.id,
            kind=job.request.mode,
            state=job.state.stored,
            priority=job.created_at,
            request=request,
            model_name=job.model_name,
            save=job.save,
            owner=job.owner,
            meta=meta,
            created_at=job.created_at,
        )

    def position(self, job: Job) -> int | None:
        """1 for the next job to run, 2 for the one after...; None if ``job`` is not waiting."""
        with self._cond:
            for i, waiting in enumerate(self._waiting, start=1):
                if waiting is job:
                    return i
        return None

    def move(self, job_id: str, over: str) -> bool:
        """Move a waiting job to ``"top"``, ``"bottom"`` or the place of the waiting job ``over`` (which then
        comes after it); False if either is not waiting."""
        with self._cond:
            job = next((j for j in self._waiting if j.id == job_id), None)
            if job is None:
                return False
            rest = [j for j in self._waiting if j is not job]
            if over == "top":
                index = 0
            elif over == "bottom":
                index = len(rest)
            else:
                index = next((i for i, j in enumerate(rest) if j.id == over), -1)
                if index < 0:
                    return False
            rest.insert(index, job)
            self._waiting = rest
            # Running jobs first, so that one interrupted by a crash still runs before all waiting ones.
            running = sorted((s.job for s in self._slots if s.job is not None), key=lambda j: j.started_at or 0)
            self.store.set_priorities((j.id, float(i)) for i, j in enumerate([*running, *self._waiting]))
            return True

    def cancel(self, job: Job) -> bool:
        """Drop a job that has not started (it becomes interrupted); True if it was waiting."""
        with self._cond:
            if job not in self._waiting:
                return False
            self._waiting.remove(job)
            self._finish_stored(job, JobState.INTERRUPTED, None, None)
        job._withdraw()
        return True

    def clear(self, owner: str | None = None) -> int:
        """Cancel every waiting job (only ``owner``'s when given); returns how many."""
        with self._cond:
            dropped = [j for j in self._waiting if owner is None or j.owner == owner]
        return sum(self.cancel(job) for job in dropped)

    def requeue(self, job_id: str) -> Job:
        """A new job with the request of job ``job_id`` (finished, possibly before a restart), at the end of
        the queue; KeyError if unknown, ValueError if its request cannot be read back."""
        row = self.store.get(job_id)
        if row is None:
            raise KeyError(f"no job with id {job_id!r}")
        with self._cond:
            known = self._jobs.get(job_id)
        request = known.request if known is not None else self._decoded(row)
        return self.submit(Job(request, row.model_name, save=row.save, owner=row.owner, meta=row.meta))

    def pause(self) -> None:
        """Start no new job (the running ones finish); remembered across restarts."""
        with self._cond:
            self._paused = True
            self.store.set_setting("paused", True)

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self.store.set_setting("paused", False)
            self._dispatch()

    @property
    def paused(self) -> bool:
        return self._paused

    def add_listener(self, listener: Callable[[Job], None]) -> None:
        """Call ``listener(job)`` after each job finishes (on the worker's thread; errors are logged)."""
        self._listeners.append(listener)

    # --- reading -----------------------------------------------------------------------------------

    def snapshot(self) -> QueueSnapshot:
        with self._cond:
            running = sorted((s.job for s in self._slots if s.job is not None), key=lambda j: j.started_at or 0)
            return QueueSnapshot(tuple(running), tuple(self._waiting), self._paused)

    def job_or_running(self, job_id: str | None) -> Job | None:
        """The job ``job_id`` (KeyError if unknown), or the running one (None when idle)."""
        return self.get(job_id) if job_id is not None else self.running

    @property
    def running(self) -> Job | None:
        return self.snapshot().current

    @property
    def waiting(self) -> list[Job]:
        with self._cond:
            return list(self._waiting)

    @property
    def workers(self) -> list[Worker]:
        with self._cond:
            return [s.worker for s in self._slots if not s.lost]

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

    # --- workers -----------------------------------------------------------------------------------

    def add_worker(self, worker: Worker) -> None:
        """One more worker (a replacement for a lost one, a new Ray actor); it takes the next job."""
        with self._cond:
            self._slots.append(_Slot(worker))
            self._dispatch()

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop: waiting jobs end (as interrupted) in memory but stay pending in the store, and the running
        ones are interrupted and stored as pending, so that the next start runs them all."""
        with self._cond:
            self._closed = True
            waiting, self._waiting = list(self._waiting), []
            running = [s.job for s in self._slots if s.job is not None]
            threads = [s.thread for s in self._slots if s.thread is not None]
            self._cond.notify_all()
        for job in waiting:
            job.control.interrupt()
            job._withdraw()
        for job in running:
            job.control.interrupt()
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(timeout)
        for slot in self._slots:
            close = getattr(slot.worker, "close", None)  # workers in other processes (Ray actors) end here
            if close is not None and not slot.lost:
                close()

    def _restore(self) -> None:
        for row in self.store.pending():
            try:
                request = self._decoded(row)
            except ValueError as err:
                logger.error("queue: job %s cannot run again: %s", row.id, err)
                self.store.finish(row.id, stored.FAILED, time.time(), f"cannot be restored: {err}", None)
                continue
            job = Job(
                request,
                row.model_name,
                save=row.save,
                job_id=row.id,
                owner=row.owner,
                meta=row.meta,
                created_at=row.created_at,
            )
            job._queue = self
            self._waiting.append(job)
            self._jobs[job.id] = job
        if self._waiting:
            logger.info("queue: %d pending job(s) restored from %s", len(self._waiting), self.store.path)
            with self._cond:
                self._dispatch()

    def _decoded(self, row: StoredJob) -> ResolvedRequest:
        if row.request is None:
            raise ValueError(row.meta.get("unstorable", "its request was not stored"))
        if self._decode is None:
            raise ValueError("this queue cannot read stored requests")
        return self._decode(row.request)

    def _dispatch(self) -> None:
        """Hand waiting jobs to idle workers, in order; called with the lock held."""
        if self._paused or self._closed:
            return
        while self._waiting:
            idle = [s for s in self._slots if s.job is None and not s.lost]
            if not idle:
                return
            job = self._waiting.pop(0)
            slot = next((s for s in idle if s.worker.holds(job.model_name)), idle[0])
            slot.job = job
            job.worker = slot.worker.name
            job._move(JobState.RUNNING)
            self.store.mark_running(job.id, job.started_at or time.time())
            if slot.thread is None or not slot.thread.is_alive():
                slot.thread = threading.Thread(
                    target=self._work, args=(slot,), name=f"{self._name}-{slot.worker.name}", daemon=True
                )
                slot.thread.start()
            self._cond.notify_all()

    def _forget_old(self) -> None:
        finished = [jid for jid, job in self._jobs.items() if job.done]
        for jid in finished[: max(0, len(finished) - KEEP_FINISHED_JOBS)]:
            del self._jobs[jid]

    def _work(self, slot: _Slot) -> None:
        while True:
            with self._cond:
                while slot.job is None and not self._closed:
                    self._cond.wait()
                job = slot.job
                if job is None:
                    return
            result: GenerationResult | None = None
            error: BaseException | None = None
            try:
                result = slot.worker.run(job)
            except WorkerLost as err:
                if self._requeue_lost(slot, job, err):
                    return
                error = err
            except BaseException as err:  # noqa: BLE001 - stored on the job; the queue must go on
                error = err
            if error is not None:
                state = JobState.ERROR
            else:
                assert result is not None
                state = JobState.INTERRUPTED if result.interrupted else JobState.DONE
            with self._cond:
                # The job is finished in memory first (what waiting callers see at once), then in the store.
                slot.job = None
                job._finish(state, result, error)
                self._finish_stored(job, state, result, error)
            self._notify(job)
            with self._cond:
                self._dispatch()
                self._cond.notify_all()

    def _requeue_lost(self, slot: _Slot, job: Job, err: WorkerLost) -> bool:
        """Put the job of a lost worker back first in line; False if it should end instead (interrupted by a
        user, or no worker is left to run it)."""
        with self._cond:
            slot.lost = True
            slot.job = None
            alive = any(not s.lost for s in self._slots)
            if job._user_interrupted or self._closed or not alive:
                return False
            logger.warning("queue: worker %s lost (%s); job %s goes back in line", slot.worker.name, err, job.id)
            job._move(JobState.QUEUED)
            job.worker = None
            self.store.mark_pending(job.id)
            self._waiting.insert(0, job)
            self._dispatch()
            self._cond.notify_all()
            return True

    def _finish_stored(
        self, job: Job, state: JobState, result: GenerationResult | None, error: BaseException | None
    ) -> None:
        """Write the end of ``job`` to the store (with the lock held). A job stopped by :meth:`close` rather
        than by a user stays pending there: the next start runs it again."""
        if self._closed and not job._user_interrupted and state == JobState.INTERRUPTED:
            self.store.mark_pending(job.id)
            return
        summary = None
        if result is not None:
            summary = {
                "images": [str(p) for p in result.paths],
                "infotexts": list(result.infotexts),
                "seeds": list(result.seeds),
            }
        message = None if error is None else str(error) or type(error).__name__
        self.store.finish(job.id, state.stored, time.time(), message, summary)
        self.store.prune(self.history_size)

    def _notify(self, job: Job) -> None:
        for listener in list(self._listeners):
            try:
                listener(job)
            except Exception:  # noqa: BLE001 - a listener (a callback upload) must never stop the queue
                logger.exception("queue: a finished-job listener failed for job %s", job.id)

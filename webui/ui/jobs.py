"""Follow a service job from the UI: queue position, step/total/ETA, live preview, then the result.

No gradio here. `JobTracker.follow` is a generator: the Gradio event handler yields one UI update per
`JobUpdate` while the job runs in the service's worker, so the page stays responsive and the preview
updates in place. The tracker also remembers which job each browser session started, so that the
Interrupt and Skip buttons act on *that* job rather than on whichever job happens to be running.
"""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from PIL import Image

from webui.jobs import ACTIVE_STATES, Job, JobState, decoding_text, interrupting_text
from webui.pipeline import GenerationRequest, GenerationResult, Progress
from webui.service import Service


@dataclass
class JobUpdate:
    """One snapshot of a job for the UI; ``result`` is set on the last one."""

    state: str
    html: str
    preview: Image.Image | None = None
    step_key: tuple | None = None
    result: GenerationResult | None = None


def format_seconds(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    minutes, secs = divmod(seconds, 60)
    return f"{minutes}:{secs:02d}" if minutes else f"{secs} s"


def describe(job: Job, queue: str = "") -> JobUpdate:
    """Turn the job's state and latest pipeline `Progress` into an HTML status line (and the preview image).

    ``queue``: a line about the shared queue (`queue_text`) shown under the status.
    """
    update = _describe(job, queue)
    update.step_key = (update.step_key, queue)
    return update


def _describe(job: Job, queue: str) -> JobUpdate:
    state = job.state
    if state == JobState.QUEUED:
        position = job.queue_position
        text = f"In queue: position {position}" if position else "In queue"
        return JobUpdate(state, _status_html(text, None, state, queue), step_key=(state, position))
    progress = job.progress
    if state == JobState.RUNNING and job.interrupting:
        # Acknowledged at once: the job stops within one UNet module, then decodes what it has.
        fraction = progress.fraction if progress is not None else 0.0
        decoding, decoded = (progress.decoding, progress.decoded) if progress is not None else (False, None)
        text = interrupting_text(decoding, decoded)
        return JobUpdate(state, _status_html(text, fraction, state, queue), step_key=("interrupting", text))
    if state == JobState.RUNNING and progress is not None:
        parts = [f"Step {progress.step}/{progress.total_steps}"]
        if progress.images_total > 1:
            index = min(progress.image_index + 1, progress.images_total)
            parts.append(f"{progress.unit} {index}/{progress.images_total}")  # "cell k/n" in an X/Y/Z plot
        eta = f"ETA {format_seconds(progress.eta_seconds)}"
        parts.append(decoding_text(progress.decoded) if progress.decoding else eta)
        return JobUpdate(
            state,
            _status_html(" · ".join(parts), progress.fraction, state, queue),
            preview=progress.preview,
            step_key=(state, progress.step, progress.image_index, progress.preview is not None, parts[-1]),
        )
    if state == JobState.RUNNING:
        return JobUpdate(state, _status_html("Starting…", 0.0, state, queue), step_key=("starting",))
    return JobUpdate(state, _status_html(state, None, state, queue), step_key=(state,))


def _status_html(text: str, fraction: float | None, state: str, queue: str = "") -> str:
    bar = ""
    if fraction is not None:
        bar = f'<progress max="100" value="{fraction * 100:.0f}" style="width:100%"></progress>'
    line = f'<div class="sd-queue">{html.escape(queue)}</div>' if queue else ""
    return f'<div class="sd-job-status" data-state="{html.escape(state)}">{html.escape(text)}{bar}{line}</div>'


def owner_label(job: Job, mine: Job | None) -> str:
    """Who a job is for, as the viewer of ``mine`` sees it: a user name, "API", "this tab" or "another tab"."""
    if job.owner:
        return job.owner
    return "this tab" if job is mine else "another tab"


def queue_text(service: Service, mine: Job | None) -> str:
    """The shared queue in one line: the running job, whom it is for, and how many wait."""
    snapshot = service.progress()
    running = None
    if snapshot.job_id is not None:
        try:
            running = service.get_job(snapshot.job_id)
        except KeyError:  # finished and forgotten since
            running = None
    waiting = f"{snapshot.queue_size} waiting"
    if running is None:
        return f"Queue: nothing running · {waiting}"
    req = running.request
    return f"Running: {req.width}x{req.height}, {req.steps} steps for {owner_label(running, mine)} · {waiting}"


def display_preview(preview: Image.Image | None, request: GenerationRequest, longest: int = 512) -> Image.Image | None:
    """The latent preview (one pixel per latent pixel) enlarged towards the requested size for display."""
    if preview is None:
        return None
    width = request.width or preview.width * 8
    height = request.height or preview.height * 8
    scale = min(longest / max(width, height), 1.0)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size[0] <= preview.width:
        return preview
    return preview.resize(size, Image.Resampling.BILINEAR)


def done_html(result: GenerationResult, seconds: float, progress: Progress | None = None) -> str:
    count = len(result.images)
    if result.interrupted:
        where = f" at step {progress.step}/{progress.total_steps}" if progress is not None else ""
        text = f"Interrupted{where} after {format_seconds(seconds)} ({count} image{'s' if count != 1 else ''} kept)"
        return _status_html(text, None, JobState.INTERRUPTED)
    return _status_html(f"Done: {count} image{'s' if count != 1 else ''} in {seconds:.1f} s", None, JobState.DONE)


class JobTracker:
    """Submit requests to the service and follow them; remembers the job of each browser session."""

    def __init__(self, service: Service, poll_interval: float = 0.1):
        self.service = service
        self.poll_interval = poll_interval
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def follow(
        self, request: GenerationRequest, model_name: str | None, session: str | None, owner: str | None = None
    ) -> Iterator[JobUpdate]:
        """Submit ``request`` and yield a `JobUpdate` whenever something visible changes.

        ``owner``: the session's user name when the app has a login (shown to others in the queue line).

        The last update carries the `GenerationResult`. Errors from validation or generation propagate
        (the UI turns them into readable `gr.Error`s). If the browser goes away (the generator is
        closed) a job that is still queued is withdrawn; a running one finishes and is saved.
        """
        started = time.monotonic()
        job = self.service.submit(request, model_name=model_name or None, owner=owner)
        key = session or f"job-{id(job)}"
        with self._lock:
            self._jobs[key] = job
        finished = False
        try:
            last_key = None
            while job.state in ACTIVE_STATES:
                update = describe(job, queue_text(self.service, job))
                if update.step_key != last_key:
                    last_key = update.step_key
                    update.preview = display_preview(update.preview, request)
                    yield update
                job.wait(self.poll_interval)
            result = job.result()
            finished = True
            summary = done_html(result, time.monotonic() - started, job.progress)
            yield JobUpdate(job.state, summary, result=result)
        finally:
            with self._lock:
                if self._jobs.get(key) is job:
                    del self._jobs[key]
            if not finished and job.state == JobState.QUEUED:
                job.interrupt()

    def job_of(self, session: str | None) -> Job | None:
        with self._lock:
            return self._jobs.get(session) if session else None

    def interrupt(self, session: str | None) -> bool:
        """Interrupt the session's job (stops within one sampling step). Returns whether there was one."""
        job = self.job_of(session)
        if job is None:
            return False
        job.interrupt()
        return True

    def skip(self, session: str | None) -> bool:
        """Skip the image the session's job is working on (the rest of the batch goes on)."""
        job = self.job_of(session)
        if job is None:
            return False
        job.skip()
        return True

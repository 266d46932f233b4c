"""The "Queue" tab: running and pending jobs (in order) and the history, with Cancel, Requeue and Move to top;
and :func:`enqueue`, what the "Enqueue" button beside Generate does (queue the job and return at once).

With a login (``--gradio-auth``) a user sees and changes only the jobs they queued; without one, every tab sees
every job. The rows come from the queue (``service.queue``): memory for what is waiting or running, the queue
database for the history, so the history survives restarts.
"""

from __future__ import annotations

import datetime as dt
import html
from dataclasses import dataclass
from typing import Any

import gradio as gr

from webui.jobs import Job, JobQueue, JobState
from webui.pipeline.errors import InvalidRequest
from webui.pipeline.requests import GenerationRequest
from webui.queue.codec import plain_params
from webui.service import Service

HEADERS = ["#", "Task", "Status", "Owner", "Prompt", "Size", "Steps", "Queued at", "Worker / error"]
HISTORY_ROWS = 50


def _time(timestamp: float | None) -> str:
    return dt.datetime.fromtimestamp(timestamp).strftime("%H:%M:%S") if timestamp else ""


def _job_row(position: str, job: Job) -> list[Any]:
    r = job.request
    return [position, job.id, job.state.stored, job.owner or "", r.prompt[:80], f"{r.width}x{r.height}", r.steps,
            _time(job.created_at), job.worker or ""]  # fmt: skip


def queue_rows(queue: JobQueue, owner: str | None) -> list[list[Any]]:
    """Running jobs ("running"), then waiting ones (1, 2, ...), then the latest finished ones."""
    snapshot = queue.snapshot()
    mine = [j for j in snapshot.running if owner is None or j.owner == owner]
    rows = [_job_row("running", j) for j in mine]
    waiting = [j for j in snapshot.waiting if owner is None or j.owner == owner]
    rows += [_job_row(str(i), j) for i, j in enumerate(waiting, start=1)]
    for row in queue.store.history(limit=HISTORY_ROWS, owner=owner):
        params = plain_params(row.request)
        size = f"{params.get('width', '?')}x{params.get('height', '?')}"
        rows.append(["", row.id, row.state, row.owner or "", str(params.get("prompt", ""))[:80], size,
                     params.get("steps", ""), _time(row.created_at), row.error or ""])  # fmt: skip
    return rows


def _owned(queue: JobQueue, task_id: str, owner: str | None) -> str:
    task_id = (task_id or "").strip()
    row = queue.store.get(task_id) if task_id else None
    if row is None or (owner is not None and row.owner != owner):
        raise gr.Error(f"No task {task_id!r} in your queue: click a row of the table first.")
    return task_id


def cancel(queue: JobQueue, task_id: str, owner: str | None) -> str:
    """Withdraw a pending job or interrupt a running one."""
    task_id = _owned(queue, task_id, owner)
    try:
        job = queue.get(task_id)
    except KeyError:
        return f"Task {task_id} is already finished."
    if job.done:
        return f"Task {task_id} is already {job.state.stored}."
    running = job.state == JobState.RUNNING
    job.interrupt()
    return f"Task {task_id} {'interrupted' if running else 'cancelled'}."


def requeue(queue: JobQueue, task_id: str, owner: str | None) -> str:
    task_id = _owned(queue, task_id, owner)
    try:
        job = queue.requeue(task_id)
    except (KeyError, ValueError) as err:
        raise gr.Error(f"Task {task_id} cannot be requeued: {err}") from None
    return f"Task {task_id} queued again as {job.id}."


def move_to_top(queue: JobQueue, task_id: str, owner: str | None) -> str:
    task_id = _owned(queue, task_id, owner)
    if not queue.move(task_id, "top"):
        raise gr.Error(f"Task {task_id} is not waiting: only pending tasks can move.")
    return f"Task {task_id} runs next."


def enqueue(service: Service, request: GenerationRequest, model_name: str | None, owner: str | None) -> str:
    """Queue ``request`` without waiting for it; the HTML line that says so (or why not)."""
    try:
        job = service.submit(request, model_name or None, owner=owner)
    except InvalidRequest as exc:
        raise gr.Error(f"Invalid settings: {exc}") from exc
    position = job.queue_position
    where = "running now" if position == 0 else f"position {position}" if position else job.state.stored
    return (
        f"<div class='queue-enqueued'>Queued as task <code>{html.escape(job.id)}</code> ({where}); "
        "follow it in the <b>Queue</b> tab.</div>"
    )


@dataclass
class QueueTab:
    table: gr.Dataframe
    task_id: gr.Textbox
    message: gr.Markdown


def _user(request: gr.Request | None) -> str | None:
    return request.username if request is not None else None


def build_queue_tab(service: Service) -> QueueTab:
    """Lay out the tab (inside the caller's ``gr.Tab``) and wire its buttons."""
    queue = service.queue
    table = gr.Dataframe(
        value=queue_rows(queue, None),
        headers=HEADERS,
        interactive=False,
        label="Running, pending (in order) and finished tasks",
        elem_id="queue_table",
        wrap=True,
        type="array",
    )
    with gr.Row():
        task_id = gr.Textbox(label="Task", placeholder="click a row", elem_id="queue_task_id", scale=3)
        cancel_button = gr.Button("Cancel", variant="stop", elem_id="queue_cancel", scale=1)
        requeue_button = gr.Button("Requeue", elem_id="queue_requeue", scale=1)
        top_button = gr.Button("Move to top", elem_id="queue_move_top", scale=1)
        refresh = gr.Button("Refresh", elem_id="queue_refresh", scale=1)
    message = gr.Markdown(elem_id="queue_message")

    def rows(request: gr.Request) -> list[list[Any]]:
        return queue_rows(queue, _user(request))

    def pick(evt: gr.SelectData, table_rows: list[list[Any]]) -> str:
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        return str(table_rows[row][1]) if 0 <= row < len(table_rows) else ""

    def action(do: Any) -> Any:
        def handler(task: str, request: gr.Request) -> tuple[list[list[Any]], str]:
            text = do(queue, task, _user(request))
            return queue_rows(queue, _user(request)), text

        return handler

    table.select(pick, [table], [task_id], queue=False)
    for button, do in ((cancel_button, cancel), (requeue_button, requeue), (top_button, move_to_top)):
        button.click(action(do), [task_id], [table, message], queue=False)
    refresh.click(rows, None, [table], queue=False)
    return QueueTab(table, task_id, message)


def wire_queue_tab(service: Service, view: QueueTab, tab: gr.Tab, timer: gr.Timer) -> None:
    """Fresh rows when the tab is opened and on each tick of the page's status timer."""

    def rows(request: gr.Request) -> list[list[Any]]:
        return queue_rows(service.queue, _user(request))

    tab.select(rows, None, [view.table], queue=False)
    timer.tick(rows, None, [view.table], queue=False, show_progress="hidden")

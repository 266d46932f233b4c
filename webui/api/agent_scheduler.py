"""The queue API of AUTOMATIC1111's sd-webui-agent-scheduler extension (``/agent-scheduler/v1/*``), so that its
clients work here: queue a txt2img/img2img job and get its id at once, list the queue and the history, read a
task and its results (base64 or a zip), cancel, requeue, move, pause, resume and clear.

Routes, parameters and response shapes follow agent-scheduler's ``api.py``; task statuses are its ``pending,
running, done, failed, interrupted``. Answers about a task that does not exist (or that belongs to another user,
see below) are ``{"success": false, "message": "Task not found"}`` with HTTP 200, as there. Request bodies are
the ``/sdapi/v1`` ones plus ``checkpoint`` (a model name from ``/sdapi/v1/sd-models``), ``callback_url`` and
``name``, and are checked exactly as ``/sdapi/v1`` checks them (422 naming the field).

The same ``--api-auth`` protects these routes. With per-user queues (the server passes ``per_user=True`` when
``--gradio-auth`` is set) a user sees, cancels, moves and requeues only the jobs they queued (their Basic auth
user name is the owner, the name they log into the UI with); without it every client sees every job.
"""

from __future__ import annotations

import base64
import io
import json
import zipfile
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import anyio
from fastapi import FastAPI, Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field

from webui.api.errors import field_error
from webui.api.explore import with_script
from webui.api.extra_networks import vae_option
from webui.api.images import encode_png
from webui.api.models import StableDiffusionImg2ImgProcessingAPI, StableDiffusionTxt2ImgProcessingAPI
from webui.api.routes import SdApi
from webui.api.security import AsciiJSONResponse, parse_basic_authorization
from webui.jobs import Job, JobQueue, JobState
from webui.pipeline.errors import InvalidRequest
from webui.pipeline.requests import GenerationRequest
from webui.queue.callbacks import CallbackRefused, CallbackSender
from webui.queue.codec import plain_params
from webui.queue.store import FINISHED, PENDING, RUNNING, StoredJob

PREFIX = "/agent-scheduler/v1"
API_OWNER = "API"  # the owner of queue API jobs when no user name is known


class QueueFields(BaseModel):
    """What agent-scheduler adds to the ``/sdapi/v1`` bodies."""

    checkpoint: str | None = Field(default=None, description="Model to use (a name from /sdapi/v1/sd-models).")
    vae: str | None = Field(default=None, description="VAE to use (a name from /sdapi/v1/sd-vae, Automatic or None).")
    callback_url: str | None = Field(default=None, description="Where the images are POSTed when the task ends.")
    name: str | None = Field(default=None, description="A name for the task, shown in the queue.")


class QueueTxt2ImgArgs(StableDiffusionTxt2ImgProcessingAPI, QueueFields):
    pass


class QueueImg2ImgArgs(StableDiffusionImg2ImgProcessingAPI, QueueFields):
    pass


class QueueService(Protocol):
    """What these routes need of the service: ``WebUIService`` has it."""

    @property
    def queue(self) -> JobQueue: ...

    callbacks: CallbackSender

    def submit(
        self,
        request: GenerationRequest,
        model_name: str | None = None,
        *,
        save: bool = True,
        owner: str | None = None,
        meta: Any = None,
    ) -> Job: ...


def _ms(timestamp: float | None) -> int | None:
    return None if timestamp is None else int(timestamp * 1000)


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class AgentSchedulerApi:
    """The route handlers (one instance per mounted app)."""

    def __init__(self, service: QueueService, sdapi: SdApi, *, per_user: bool):
        self.service = service
        self.queue = service.queue
        self.sdapi = sdapi
        self.per_user = per_user

    # --- who asks --------------------------------------------------------------------------------

    @staticmethod
    def _user(request: Request) -> str:
        given = parse_basic_authorization(request.headers.get("authorization"))
        return given[0] if given else API_OWNER

    def _visible_owner(self, request: Request) -> str | None:
        """The owner whose jobs this caller may see; None: everyone's."""
        return self._user(request) if self.per_user else None

    def _row(self, task_id: str, request: Request) -> StoredJob | None:
        row = self.queue.store.get(task_id)
        owner = self._visible_owner(request)
        if row is None or (owner is not None and row.owner != owner):
            return None
        return row

    # --- queueing --------------------------------------------------------------------------------

    async def queue_txt2img(self, body: QueueTxt2ImgArgs, request: Request) -> dict[str, Any]:
        generation = self.sdapi._generation_request(body, GenerationRequest)
        return self._enqueue(body, generation, request)

    async def queue_img2img(self, body: QueueImg2ImgArgs, request: Request) -> dict[str, Any]:
        generation = await anyio.to_thread.run_sync(self.sdapi._img2img_request, body)
        return self._enqueue(body, generation, request)

    def _enqueue(
        self, body: QueueTxt2ImgArgs | QueueImg2ImgArgs, generation: GenerationRequest, request: Request
    ) -> dict[str, Any]:
        if body.checkpoint:
            model_name: str | None = self.sdapi._model_name(body.checkpoint, "checkpoint")
        else:
            model_name = self.sdapi._request_model(body)
        # As /sdapi/v1 does: the X/Y/Z or prompt-list script planned now (422 for a bad axis), and
        # agent-scheduler's own VAE field as the request's sd_vae.
        generation = with_script(self.sdapi.service, body.script_name, body.script_args, generation, model_name)
        if body.vae:
            generation = replace(generation, sd_vae=vae_option(body.vae, "vae"))
        meta: dict[str, Any] = {"source": "queue-api"}
        if body.callback_url:
            try:
                self.service.callbacks.check(body.callback_url)
            except CallbackRefused as err:
                raise field_error("callback_url", str(err)) from err
            meta["callback_url"] = body.callback_url
        if body.name:
            meta["name"] = body.name
        try:
            job = self.service.submit(generation, model_name, save=True, owner=self._user(request), meta=meta)
        except InvalidRequest as exc:
            raise field_error(exc.field, exc.message) from exc
        return {"task_id": job.id}

    # --- reading ---------------------------------------------------------------------------------

    def _task(self, row: StoredJob, position: int | None = None, *, iso: bool = False) -> dict[str, Any]:
        stamp: Callable[[float | None], Any] = _iso if iso else _ms
        params = plain_params(row.request)
        params["checkpoint"] = row.model_name
        return {
            "id": row.id,
            "api_task_id": None,
            "api_task_callback": row.meta.get("callback_url"),
            "name": row.meta.get("name"),
            "type": row.kind,
            "status": row.state,
            "params": params,
            "priority": int(row.priority * 1000) if row.priority > 1e6 else int(row.priority),
            "position": position,
            "result": None if row.result is None else json.dumps(row.result),
            "bookmarked": False,
            "created_at": stamp(row.created_at),
            "updated_at": stamp(row.finished_at or row.started_at or row.created_at),
            "error": row.error,
            "owner": row.owner,
        }

    async def queue_status(self, request: Request, limit: int = 20, offset: int = 0) -> dict[str, Any]:
        snapshot = self.queue.snapshot()
        owner = self._visible_owner(request)
        mine = [j for j in (*snapshot.running, *snapshot.waiting) if owner is None or j.owner == owner]
        tasks = []
        for position, job in enumerate(mine[offset : offset + max(0, limit)], start=offset):
            row = self.queue.store.get(job.id)
            if row is not None:
                row.state = job.state.stored  # memory is ahead of the store for an instant
                tasks.append(self._task(row, position))
        current = snapshot.current
        return {
            "current_task_id": current.id
            if current is not None and (owner is None or current.owner == owner)
            else None,
            "pending_tasks": tasks,
            "total_pending_tasks": sum(1 for j in snapshot.waiting if owner is None or j.owner == owner),
            "paused": snapshot.paused,
        }

    async def history(
        self, request: Request, status: str | None = None, limit: int = 20, offset: int = 0
    ) -> dict[str, Any]:
        states = FINISHED if status in (None, "", "all", "bookmarked") else (status,)
        owner = self._visible_owner(request)
        rows = self.queue.store.history(limit=max(0, limit), offset=max(0, offset), owner=owner, states=states)
        total = self.queue.store.count(states, owner=owner)
        return {"tasks": [self._task(row) for row in rows], "total": total}

    def _position(self, task_id: str) -> int | None:
        snapshot = self.queue.snapshot()
        order = [j.id for j in (*snapshot.running, *snapshot.waiting)]
        return order.index(task_id) if task_id in order else None

    def _live_state(self, row: StoredJob) -> str:
        try:
            return self.queue.get(row.id).state.stored
        except KeyError:
            return row.state

    async def task(self, task_id: str, request: Request) -> dict[str, Any]:
        row = self._row(task_id, request)
        if row is None:
            return {"success": False, "message": "Task not found"}
        row.state = self._live_state(row)
        position = self._position(task_id) if row.state in (PENDING, RUNNING) else None
        return {"success": True, "data": self._task(row, position, iso=True)}

    async def task_position(self, task_id: str, request: Request) -> dict[str, Any]:
        row = self._row(task_id, request)
        if row is None:
            return {"success": False, "message": "Task not found"}
        state = self._live_state(row)
        position = self._position(task_id) if state == PENDING else None
        return {"success": True, "data": {"status": state, "position": position}}

    async def results(self, task_id: str, request: Request, zip: bool = False) -> Any:  # noqa: A002 - their name
        row = self._row(task_id, request)
        if row is None:
            return {"success": False, "message": "Task not found"}
        state = self._live_state(row)
        if state != "done":
            return {"success": False, "message": f"Task is {state}"}
        images = await anyio.to_thread.run_sync(self._result_images, row)
        if images is None:
            return {"success": False, "message": "Task result is not available"}
        if zip:
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w") as archive:
                for name, png_bytes, _ in images:
                    archive.writestr(name, png_bytes)
            return Response(
                buffer.getvalue(),
                media_type="application/zip",
                headers={"Content-Disposition": f"attachment; filename=results-{task_id}.zip"},
            )
        data = [{"image": base64.b64encode(png).decode("ascii"), "infotext": text} for _, png, text in images]
        return {"success": True, "data": data}

    def _result_images(self, row: StoredJob) -> list[tuple[str, bytes, str]] | None:
        """(file name, PNG bytes, infotext) of each image: from disk, else from a job still in memory."""
        result = row.result or {}
        texts: list[str] = list(result.get("infotexts", []))
        paths = [Path(p) for p in result.get("images", [])]
        if paths:
            return [
                (path.name, path.read_bytes(), texts[i] if i < len(texts) else "")
                for i, path in enumerate(paths)
                if path.is_file()
            ]
        try:
            job_result = self.queue.get(row.id).result(0)
        except (KeyError, TimeoutError, Exception):  # noqa: BLE001 - any failure: not available
            return None
        out = []
        for i, image in enumerate(job_result.images):
            text = job_result.infotexts[i] if i < len(job_result.infotexts) else ""
            out.append((f"{row.id}-{i}.png", base64.b64decode(encode_png(image, text)), text))
        return out

    # --- changing --------------------------------------------------------------------------------

    async def delete(self, task_id: str, request: Request) -> dict[str, Any]:
        row = self._row(task_id, request)
        if row is None:
            return {"success": False, "message": "Task not found"}
        try:
            job = self.queue.get(task_id)
        except KeyError:
            return {"success": False, "message": f"Task is {row.state}"}
        state = job.state
        if state not in (JobState.RUNNING, JobState.QUEUED):
            return {"success": False, "message": f"Task is {state.stored}"}
        job.interrupt()  # a pending job is withdrawn (interrupted), a running one stops within a step
        return {"success": True, "message": "Task interrupted" if state == JobState.RUNNING else "Task deleted"}

    async def requeue(self, task_id: str, request: Request) -> dict[str, Any]:
        row = self._row(task_id, request)
        if row is None:
            return {"success": False, "message": "Task not found"}
        try:
            job = self.queue.requeue(task_id)
        except (KeyError, ValueError) as err:
            return {"success": False, "message": f"Task cannot be requeued: {err}"}
        return {"success": True, "message": "Task requeued", "task_id": job.id}

    async def move(self, task_id: str, over_id: str, request: Request) -> dict[str, Any]:
        row = self._row(task_id, request)
        if row is None or (over_id not in ("top", "bottom") and self._row(over_id, request) is None):
            return {"success": False, "message": "Task not found"}
        if not self.queue.move(task_id, over_id):
            return {"success": False, "message": "Only pending tasks can be moved"}
        return {
            "success": True,
            "message": f"Task moved to {over_id}" if over_id in ("top", "bottom") else "Task moved",
        }

    async def pause(self) -> dict[str, Any]:
        self.queue.pause()
        return {"success": True, "message": "Queue paused."}

    async def resume(self) -> dict[str, Any]:
        self.queue.resume()
        return {"success": True, "message": "Queue resumed."}

    async def clear(self, request: Request) -> dict[str, Any]:
        count = self.queue.clear(owner=self._visible_owner(request))
        return {"success": True, "message": f"Queue cleared ({count} tasks)."}


def mount_agent_scheduler(
    app: FastAPI, service: QueueService, sdapi: SdApi, route_class: type[APIRoute], *, per_user: bool = False
) -> AgentSchedulerApi:
    """Add the ``/agent-scheduler/v1/*`` routes to ``app``, guarded by ``route_class`` (the API's auth and
    body limit, from :func:`webui.api.security.guarded_route_class`)."""
    api = AgentSchedulerApi(service, sdapi, per_user=per_user)
    post, get, delete = ["POST"], ["GET"], ["DELETE"]
    table: list[tuple[str, Callable[..., Any], list[str]]] = [
        ("/queue/txt2img", api.queue_txt2img, post),
        ("/queue/img2img", api.queue_img2img, post),
        ("/queue", api.queue_status, get),
        ("/queue/pause", api.pause, post),
        ("/queue/resume", api.resume, post),
        ("/queue/clear", api.clear, post),
        ("/history", api.history, get),
        ("/task/{task_id}", api.task, get),
        ("/task/{task_id}", api.delete, delete),
        ("/task/{task_id}/position", api.task_position, get),
        ("/task/{task_id}/results", api.results, get),
        ("/task/{task_id}/requeue", api.requeue, post),
        ("/task/{task_id}/move/{over_id}", api.move, post),
    ]
    for path, endpoint, methods in table:
        app.router.add_api_route(
            PREFIX + path,
            endpoint,
            methods=methods,
            response_class=AsciiJSONResponse,
            route_class_override=route_class,
        )
    return api


__all__ = ["AgentSchedulerApi", "mount_agent_scheduler"]

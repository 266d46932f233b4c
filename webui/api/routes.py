"""The AUTOMATIC1111-compatible REST API (``/sdapi/v1/*``), mounted on the server that serves the Gradio UI.

Every route calls only the service (:class:`webui.service.Service`), so API jobs wait in the same FIFO queue as the
UI's.
A generation request is checked (pydantic types, :class:`ApiLimits`, sampler, schedule and model names, then the
pipeline's own validation inside ``service.submit``) before it is queued, so that bad input is answered with a 422
naming the field and never leaves a job behind. Waiting for a job happens in a worker thread, so the event loop
keeps answering ``/progress``, ``/interrupt`` and the UI meanwhile.

Usage (``webui/server.py`` does this when ``--api`` is given)::

    app, local_url, share_url = demo.launch(prevent_thread_lock=True, ...)
    mount_api(app, service, api_auth=[("user", "pass")])
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import anyio
from fastapi import FastAPI, HTTPException, Query
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse

from webui.api.errors import field_error
from webui.api.explore import explore_routes, scripts_list, styled_prompts, with_script
from webui.api.extra_networks import add_extra_network_routes, set_vae_option, vae_option
from webui.api.extras import extras_routes, hires_request
from webui.api.images import decode_image, encode_png
from webui.api.limits import ApiLimits
from webui.api.loras import lora_routes
from webui.api.models import (
    GenerationFields,
    ImageToImageResponse,
    PNGInfoRequest,
    PNGInfoResponse,
    ProgressResponse,
    SamplerItem,
    SchedulerItem,
    ScriptsList,
    SDModelItem,
    StableDiffusionImg2ImgProcessingAPI,
    StableDiffusionTxt2ImgProcessingAPI,
    TextToImageResponse,
)
from webui.api.security import SECURITY_SCHEME, AsciiJSONResponse, guarded_route_class
from webui.jobs import ACTIVE_STATES, FINISHED_STATES, Job, JobState
from webui.models.errors import CheckpointError
from webui.models.registry import ModelEntry
from webui.pipeline.errors import InvalidRequest
from webui.pipeline.infotext import parse_infotext
from webui.pipeline.outputs import INFOTEXT_KEY, read_text_chunks
from webui.pipeline.requests import GenerationRequest, Img2ImgRequest
from webui.pipeline.speedups import overrides as speedup_overrides
from webui.sampling.schedules import KARRAS_RHO, SCHEDULES
from webui.sampling.types import Sampler
from webui.service import ProgressSnapshot, Service

API_PREFIX = "/sdapi/v1"
DOCS_PATHS = ("/docs", "/openapi.json")
HOST_DOCS_PATHS = (*DOCS_PATHS, "/docs/oauth2-redirect", "/redoc")  # FastAPI's defaults, replaced by ours
MAX_REMEMBERED_TASKS = 1000
MAX_CONCURRENT_WAITS = 64


class SdApi:
    """The route handlers; one instance per mounted app, holding the job ids it handed out."""

    def __init__(self, service: Service, limits: ApiLimits):
        self.service = service
        self.limits = limits
        self._forced_ids: OrderedDict[str, str] = OrderedDict()  # client's force_task_id -> service job id
        # Threads that wait for a job's result: their own pool, so that many waiting clients never hold the
        # threads that Gradio and the short API calls (image decoding, png-info, model switching) run in.
        self._waits = anyio.CapacityLimiter(MAX_CONCURRENT_WAITS)

    # ---------------------------------------------------------------- generation

    async def txt2img(self, req: StableDiffusionTxt2ImgProcessingAPI) -> dict[str, Any]:
        request = self._generation_request(req, GenerationRequest, hires=hires_request(req))
        return await self._run(req, request, self._parameters(req))

    async def img2img(self, req: StableDiffusionImg2ImgProcessingAPI) -> dict[str, Any]:
        request = await anyio.to_thread.run_sync(self._img2img_request, req)
        parameters = self._parameters(req)
        if not req.include_init_images:
            parameters["init_images"] = None
            parameters["mask"] = None
        return await self._run(req, request, parameters)

    def _img2img_request(self, req: StableDiffusionImg2ImgProcessingAPI) -> Img2ImgRequest:
        max_pixels = self.limits.max_image_pixels
        images = [decode_image(d, f"init_images.{i}", max_pixels=max_pixels) for i, d in enumerate(req.init_images)]
        mask = decode_image(req.mask, "mask", max_pixels=max_pixels) if req.mask else None
        return self._generation_request(
            req,
            Img2ImgRequest,
            init_images=images,
            denoising_strength=req.denoising_strength,
            resize_mode=req.resize_mode,
            mask=mask,
            mask_blur=req.mask_blur if req.mask_blur is not None else req.mask_blur_x,
            inpainting_fill=req.inpainting_fill,
            inpainting_mask_invert=req.inpainting_mask_invert,
        )

    def _generation_request(self, req: GenerationFields, kind: type[GenerationRequest], **extra: Any) -> Any:
        """The pipeline request for ``req`` (``service.submit`` validates it); 422 for what the API itself checks:
        its limits, the sampler, schedule and model names."""
        self._check_limits(req)
        settings = req.override_settings or {}
        clip_skip = settings.get("CLIP_stop_at_last_layers", 1)
        if isinstance(clip_skip, bool) or not isinstance(clip_skip, int):
            raise field_error("override_settings.CLIP_stop_at_last_layers", f"must be an integer, got {clip_skip!r}")
        sampler = self._sampler(req.sampler_name or req.sampler_index)
        # eta and k-diffusion's s_* options are sampler options: they reach the samplers that declare them (others
        # ignore them, as in A1111); values equal to the sampler's defaults are dropped so that infotexts list only
        # what was changed.
        given = {k: getattr(req, k) for k in ("s_churn", "s_tmin", "s_tmax", "s_noise", "eta")}
        options = {k: v for k, v in given.items() if v is not None and k in sampler.options and v != sampler.options[k]}
        prompt, negative_prompt = styled_prompts(self.service, req.prompt, req.negative_prompt or "", req.styles)
        return kind(
            prompt=prompt,
            negative_prompt=negative_prompt,
            sampler_name=sampler.name,
            scheduler=self._schedule_name(req.scheduler),
            steps=req.steps,
            cfg_scale=req.cfg_scale,
            width=req.width,
            height=req.height,
            seed=req.seed,
            batch_size=req.batch_size,
            n_iter=req.n_iter,
            clip_skip=clip_skip,
            sampler_options=options,
            subseed=req.subseed,
            subseed_strength=req.subseed_strength,
            seed_resize_from_w=req.seed_resize_from_w,
            seed_resize_from_h=req.seed_resize_from_h,
            **extra,
            # issue 15: A1111's sd_vae override setting; None leaves the app's "SD VAE" setting in force
            sd_vae=vae_option(settings["sd_vae"], "override_settings.sd_vae") if "sd_vae" in settings else None,
            **speedup_overrides(settings),  # issue 19: token_merging_ratio(_hr), deepcache_interval/branch
        )

    def _check_limits(self, req: GenerationFields) -> None:
        limits = self.limits
        bounds: list[tuple[str, Any, float]] = [
            ("batch_size", req.batch_size, limits.max_batch_size),
            ("n_iter", req.n_iter, limits.max_n_iter),
            ("steps", req.steps, limits.max_steps),
            ("width", req.width, limits.max_width),
            ("height", req.height, limits.max_height),
            ("cfg_scale", req.cfg_scale, limits.max_cfg_scale),
            ("prompt", len(req.prompt), limits.max_prompt_chars),
            ("negative_prompt", len(req.negative_prompt or ""), limits.max_prompt_chars),
        ]
        for name, value, highest in bounds:
            if value is not None and value > highest:
                what = "length" if name.endswith("prompt") else "value"
                raise field_error(name, f"{what} {value} is above this server's limit of {highest:g}")

    def _sampler(self, name: str) -> Sampler:
        try:
            return self.service.samplers.get(name)
        except ValueError as exc:
            raise field_error("sampler_name", str(exc)) from exc

    def _schedule_name(self, name: str | None) -> str:
        if name is None or name == "":
            return SCHEDULES[0]
        try:
            return self.service.samplers.normalize_schedule(name)
        except ValueError as exc:
            raise field_error("scheduler", str(exc)) from exc

    @staticmethod
    def _parameters(req: GenerationFields) -> dict[str, Any]:
        return req.model_dump(mode="json")

    async def _run(
        self, req: GenerationFields, request: GenerationRequest, parameters: dict[str, Any]
    ) -> dict[str, Any]:
        model_name = self._request_model(req)
        self._check_task_id(req.force_task_id)
        request = with_script(self.service, req.script_name, req.script_args, request, model_name)
        try:
            job = self.service.submit(request, model_name, save=req.save_images, owner="API")
        except InvalidRequest as exc:
            raise field_error(exc.field, exc.message) from exc
        task_id = job.id
        if req.force_task_id:
            task_id = req.force_task_id
            self._forced_ids[task_id] = job.id
            while len(self._forced_ids) > MAX_REMEMBERED_TASKS:
                self._forced_ids.popitem(last=False)
        return await anyio.to_thread.run_sync(
            self._finish, job, task_id, req.send_images, parameters, limiter=self._waits
        )

    def _finish(self, job: Job, task_id: str, send_images: bool, parameters: dict[str, Any]) -> dict[str, Any]:
        """Wait for ``job`` (in a worker thread) and build A1111's response body."""
        try:
            result = job.result()
        except InvalidRequest as exc:
            raise field_error(exc.field, exc.message) from exc
        except (CheckpointError, LookupError) as exc:
            raise field_error("override_settings.sd_model_checkpoint", f"cannot load the model: {exc}") from exc
        except Exception as exc:  # a failure of the server, not of the request: say what it was
            raise HTTPException(500, detail=f"generation failed: {type(exc).__name__}: {exc}") from exc
        images = [encode_png(image, text) for image, text in zip(result.images, result.infotexts, strict=False)]
        info = {**result.info, "id_task": task_id}
        return {"images": images if send_images else [], "parameters": parameters, "info": json.dumps(info)}

    def _request_model(self, req: GenerationFields) -> str | None:
        name = (req.override_settings or {}).get("sd_model_checkpoint")
        if name is None:
            return None
        return self._model_name(name, "override_settings.sd_model_checkpoint")

    def _check_task_id(self, forced: str | None) -> None:
        """A client may choose its job id (A1111's ``force_task_id``), but not one that is still in use."""
        if not forced:
            return
        job_id = self._forced_ids.get(forced, forced)
        try:
            state = self.service.get_job(job_id).state
        except KeyError:
            return
        if state in ACTIVE_STATES:
            raise field_error("force_task_id", f"task {forced!r} is still {state}")

    # ---------------------------------------------------------------- progress and control

    async def progress(
        self,
        id_task: str | None = Query(default=None, max_length=200, description="A job id from a generation's info."),
        skip_current_image: bool = Query(default=False, description="Leave out the preview image."),
    ) -> dict[str, Any]:
        job_id = None if id_task is None else self._forced_ids.get(id_task, id_task)
        try:
            snapshot = self.service.progress(job_id)
        except KeyError as exc:
            message = f"unknown or expired task {id_task!r}"
            raise field_error("id_task", message, status_code=404, where="query") from exc
        task_id = id_task or next((t for t, j in self._forced_ids.items() if j == snapshot.job_id), snapshot.job_id)
        return progress_body(snapshot, task_id, skip_current_image)

    async def interrupt(self) -> dict[str, Any]:
        self.service.interrupt()
        return {}

    async def skip(self) -> dict[str, Any]:
        self.service.skip()
        return {}

    # ---------------------------------------------------------------- models, samplers, options

    async def samplers(self) -> list[dict[str, Any]]:
        return [
            {"name": s.name, "aliases": list(s.aliases), "options": dict(s.options)}
            for s in self.service.samplers.samplers
        ]

    async def schedulers(self) -> list[dict[str, Any]]:
        samplers = self.service.samplers
        return [
            {
                "name": name.lower().replace(" ", "_"),  # A1111's API names: "sgm_uniform", "align_your_steps"
                "label": name,
                "aliases": list(aliases) or None,
                "default_rho": KARRAS_RHO if name == "Karras" else None,
                "need_inner_model": False,
            }
            for name, aliases in [(n, ()) for n in SCHEDULES] + [(s.name, s.aliases) for s in samplers.schedules]
        ]

    async def sd_models(self) -> list[dict[str, Any]]:
        # In a thread: the service may read a small model file once to hash it.
        return await anyio.to_thread.run_sync(lambda: [self._model_item(e) for e in self.service.registry.entries])

    def _model_item(self, entry: ModelEntry) -> dict[str, Any]:
        sha256 = self._sha256(entry.name)
        return {
            "title": entry.name,
            "model_name": entry.name,
            "hash": sha256[:10] if sha256 else None,
            "sha256": sha256,
            "filename": entry.filename,
            "config": None,
        }

    def _sha256(self, name: str) -> str | None:
        return self.service.model_sha256(name)

    def _model_name(self, given: Any, field: str) -> str:
        """The registry name a client means (a name or A1111 title ``name [hash]``, any case, or a file name)."""
        if not isinstance(given, str) or not given.strip():
            raise field_error(field, f"expected a model name from GET {API_PREFIX}/sd-models, got {given!r}")
        try:
            return self.service.registry.get(given).name
        except LookupError as exc:
            raise field_error(field, str(exc).strip("'\"")) from exc

    async def get_options(self) -> dict[str, Any]:
        default = self.service.registry.default
        name = self.service.current_model_name or (default.name if default is not None else None)
        sha256 = await anyio.to_thread.run_sync(self._sha256, name) if name else None
        return {
            "sd_model_checkpoint": name,
            "sd_checkpoint_hash": sha256,
            "samples_format": "png",
            "sd_vae": self.service.sd_vae,  # issue 15
            **self.service.speedup_settings.options(),  # issue 19: token merging and DeepCache
        }

    async def set_options(self, options: dict[str, Any]) -> None:
        """Apply ``sd_model_checkpoint`` (loads the model now); other A1111 options are ignored, as A1111 does
        with options it does not know."""
        if "sd_model_checkpoint" in options:
            name = self._model_name(options["sd_model_checkpoint"], "sd_model_checkpoint")
            try:
                await anyio.to_thread.run_sync(self.service.select_model, name)
            except (CheckpointError, LookupError) as exc:
                raise field_error("sd_model_checkpoint", f"cannot load {name!r}: {exc}") from exc
        if "sd_vae" in options:  # issue 15
            set_vae_option(self.service, options["sd_vae"])
        try:  # issue 19: token merging and DeepCache settings
            self.service.set_speedup_options(options)
        except InvalidRequest as exc:
            raise field_error(exc.field, exc.message) from exc
        return None

    async def refresh_checkpoints(self) -> None:
        await anyio.to_thread.run_sync(self.service.reload_registry)
        return None

    async def scripts(self) -> dict[str, list[str]]:
        return scripts_list()

    # ---------------------------------------------------------------- png-info

    async def png_info(self, req: PNGInfoRequest) -> dict[str, Any]:
        return await anyio.to_thread.run_sync(self._png_info, req.image)

    def _png_info(self, data: str) -> dict[str, Any]:
        image = decode_image(data, "image", max_pixels=self.limits.max_image_pixels)
        items = read_text_chunks(image)
        info = items.pop(INFOTEXT_KEY, "")
        return {"info": info, "items": items, "parameters": parse_infotext(info) if info else {}}


def progress_body(snapshot: ProgressSnapshot, task_id: str | None, skip_current_image: bool) -> dict[str, Any]:
    """A1111's ``ProgressResponse`` from the service's ``ProgressSnapshot`` (``state`` "idle" when nothing runs)."""
    state = snapshot.state
    running = state == JobState.RUNNING
    preview = snapshot.preview if running and not skip_current_image else None
    return {
        "progress": float(snapshot.progress),
        "eta_relative": float(snapshot.eta_seconds or 0.0),
        # The keys of A1111's shared.state.dict(), which clients such as webuiapi.util_wait_for_ready read.
        "state": {
            "skipped": False,
            # A1111 sets both the moment Interrupt is clicked, before the job has stopped.
            "interrupted": state == JobState.INTERRUPTED or snapshot.interrupting,
            "stopping_generation": snapshot.interrupting,
            # The job's id; in an X/Y/Z plot A1111's "k out of n" (the cell), and job_count = cells, job_no = cells
            # done, as A1111 fills them (issue 17).
            "job": f"{snapshot.image_index + 1} out of {snapshot.images_total}"
            if running and snapshot.unit == "cell"
            else snapshot.job_id or "",
            "job_count": snapshot.queue_size
            + (snapshot.images_total if running and snapshot.unit == "cell" else int(running)),
            "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
            "job_no": snapshot.image_index,
            "sampling_step": snapshot.step,
            "sampling_steps": snapshot.total_steps,
        },
        "current_image": encode_png(preview) if preview is not None else None,
        "textinfo": snapshot.textinfo,
        "id_task": task_id,
        "queued": state == JobState.QUEUED,
        "active": running,
        "completed": state in FINISHED_STATES,
        "queue_position": snapshot.queue_position,
    }


def build_openapi(routes: Sequence[Any], *, secured: bool) -> dict[str, Any]:
    """The OpenAPI document of the API routes only (not Gradio's), with HTTP Basic declared when secured."""
    schema = get_openapi(
        title="Stable Diffusion web UI API",
        version="1",
        description="AUTOMATIC1111-compatible REST API (`/sdapi/v1/*`).",
        routes=list(routes),
    )
    if secured:
        schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEME
        schema["security"] = [{"HTTPBasic": []}]
    return schema


def mount_api(
    app: FastAPI,
    service: Service,
    *,
    api_auth: Sequence[tuple[str, str]] | None = None,
    limits: ApiLimits | None = None,
) -> SdApi:
    """Add the ``/sdapi/v1/*`` routes, ``/docs`` and ``/openapi.json`` to ``app``.

    Works on an app that is already serving (Gradio's, after ``launch(prevent_thread_lock=True)``): it only adds
    routes. With ``api_auth`` every one of them, the docs included, answers 401 without one of those
    ``(user, password)`` pairs. The app's own ``/docs``, ``/redoc`` and ``/openapi.json`` (FastAPI's defaults;
    Gradio keeps ``/openapi.json``) are replaced by the API's, so that the schema is never served without the
    password.

    Raises:
        ValueError: the API is already mounted on ``app``.
    """
    limits = limits or ApiLimits()
    if any(getattr(r, "path", "").startswith(API_PREFIX) for r in app.routes):
        raise ValueError(f"the API is already mounted on this app ({API_PREFIX} routes exist)")
    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) not in HOST_DOCS_PATHS]
    app.openapi_schema = None
    api = SdApi(service, limits)
    route_class = guarded_route_class(api_auth, limits.max_body_bytes)
    post, get = ["POST"], ["GET"]
    table: list[tuple[str, Callable[..., Any], list[str], Any]] = [
        ("/txt2img", api.txt2img, post, TextToImageResponse),
        ("/img2img", api.img2img, post, ImageToImageResponse),
        ("/png-info", api.png_info, post, PNGInfoResponse),
        ("/progress", api.progress, get, ProgressResponse),
        ("/interrupt", api.interrupt, post, None),
        ("/skip", api.skip, post, None),
        ("/options", api.get_options, get, dict[str, Any]),
        ("/options", api.set_options, post, None),
        ("/samplers", api.samplers, get, list[SamplerItem]),
        ("/schedulers", api.schedulers, get, list[SchedulerItem]),
        ("/sd-models", api.sd_models, get, list[SDModelItem]),
        ("/refresh-checkpoints", api.refresh_checkpoints, post, None),
        ("/scripts", api.scripts, get, ScriptsList),
        *explore_routes(service),  # prompt styles and scripts: webui/api/explore.py
    ]
    table += lora_routes(service)  # LoRA (issue 15)
    table += extras_routes(service, limits)  # upscalers, latent modes, extra-single-image, extra-batch-images
    for path, endpoint, methods, response_model in table:
        app.router.add_api_route(
            API_PREFIX + path,
            endpoint,
            methods=methods,
            response_model=response_model,
            response_class=AsciiJSONResponse,
            route_class_override=route_class,
        )
    add_extra_network_routes(app, service, API_PREFIX, route_class)  # embeddings and VAE files (issue 15)
    api_routes = [r for r in app.routes if getattr(r, "path", "").startswith(API_PREFIX)]
    schema: dict[str, Any] = {}

    async def openapi() -> JSONResponse:
        if not schema:
            schema.update(build_openapi(api_routes, secured=bool(api_auth)))
        return JSONResponse(schema)

    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="Stable Diffusion web UI API")

    for path, endpoint in (("/openapi.json", openapi), ("/docs", docs)):
        app.router.add_api_route(path, endpoint, methods=get, include_in_schema=False, route_class_override=route_class)
    return api


__all__ = ["ApiLimits", "SdApi", "mount_api", "progress_body"]

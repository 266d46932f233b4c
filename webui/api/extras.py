"""A1111's upscaler routes: ``GET /upscalers``, ``GET /latent-upscale-modes``, ``POST /extra-single-image`` and
``POST /extra-batch-images`` (shapes of A1111's ``modules/api/models.py``), and the txt2img hires-fix fields.

:func:`extras_routes` gives the route table rows that :func:`webui.api.routes.mount_api` registers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
from pydantic import BaseModel, Field

from webui.api.errors import field_error
from webui.api.images import decode_image, encode_png
from webui.api.limits import ApiLimits
from webui.api.models import NOT_SUPPORTED, StableDiffusionTxt2ImgProcessingAPI, _Body
from webui.pipeline.errors import InvalidRequest
from webui.pipeline.hires import DEFAULT_HR_UPSCALER, LATENT_UPSCALE_MODES, HiresRequest
from webui.service import Service
from webui.upscalers.base import UpscalerError
from webui.upscalers.postprocess import MAX_RESIZE, ExtrasRequest
from webui.upscalers.registry import UpscalerRegistry

# A1111's "Use same checkpoint": a second-pass model other than the first pass's is not supported.
SAME_CHECKPOINT = ("", "Use same checkpoint")
DEFAULT_HIRES_STRENGTH = 0.7


class ExtrasBaseRequest(_Body):
    resize_mode: int = Field(default=0, ge=0, le=1, description="0 scale by upscaling_resize, 1 scale to w x h.")
    show_extras_results: bool = Field(default=True, description="Return the images.")
    gfpgan_visibility: float = Field(default=0, ge=0, le=0, description=f"Face restoration {NOT_SUPPORTED}: 0.")
    codeformer_visibility: float = Field(default=0, ge=0, le=0, description=f"CodeFormer {NOT_SUPPORTED}: 0.")
    codeformer_weight: float = Field(default=0, ge=0, le=1)
    upscaling_resize: float = Field(default=2, gt=0, le=MAX_RESIZE, description="Factor of resize_mode 0.")
    upscaling_resize_w: int = Field(default=512, ge=1, description="Target width of resize_mode 1.")
    upscaling_resize_h: int = Field(default=512, ge=1, description="Target height of resize_mode 1.")
    upscaling_crop: bool = Field(default=True, description="resize_mode 1: crop the centre to exactly w x h.")
    upscaler_1: str = Field(default="None", description="A name from GET /sdapi/v1/upscalers.")
    upscaler_2: str = Field(default="None", description="Blended over upscaler_1's result.")
    extras_upscaler_2_visibility: float = Field(default=0, ge=0, le=1, description="Blend weight of upscaler_2.")
    upscale_first: bool = Field(default=False, description="Order against face restoration (none here).")

    def extras_request(self) -> ExtrasRequest:
        return ExtrasRequest(
            resize_mode=self.resize_mode,
            upscaling_resize=self.upscaling_resize,
            upscaling_resize_w=self.upscaling_resize_w,
            upscaling_resize_h=self.upscaling_resize_h,
            upscaling_crop=self.upscaling_crop,
            upscaler_1=self.upscaler_1,
            upscaler_2=self.upscaler_2,
            extras_upscaler_2_visibility=self.extras_upscaler_2_visibility,
        )


class ExtrasSingleImageRequest(ExtrasBaseRequest):
    image: str = Field(description="Base64 image (PNG, JPEG, WebP; a data: URL works too).")


class FileData(BaseModel):
    data: str = Field(description="Base64 image.")
    name: str = Field(default="", description="File name (A1111 uses it for saving).")


class ExtrasBatchImagesRequest(ExtrasBaseRequest):
    imageList: list[FileData] = Field(min_length=1, description="The images, base64.")  # noqa: N815 (A1111's name)


class ExtrasSingleImageResponse(BaseModel):
    image: str | None = Field(default=None, description="The upscaled image, base64 PNG with its parameters.")
    html_info: str = Field(description="The postprocessing parameters of the image.")


class ExtrasBatchImagesResponse(BaseModel):
    images: list[str] = Field(description="The upscaled images, base64 PNG with their parameters.")
    html_info: str


class UpscalerItem(BaseModel):
    model_config = {"protected_namespaces": ()}

    name: str
    model_name: str | None = None
    model_path: str | None = None
    model_url: str | None = None
    scale: float | None = None


class LatentUpscalerModeItem(BaseModel):
    name: str


def hires_request(req: StableDiffusionTxt2ImgProcessingAPI) -> HiresRequest | None:
    """The pipeline's hires settings of a txt2img body; None when ``enable_hr`` is false. 422 for a second-pass
    checkpoint (not supported)."""
    if not req.enable_hr:
        return None
    if req.hr_checkpoint_name not in (None, *SAME_CHECKPOINT):
        raise field_error("hr_checkpoint_name", f"a second-pass checkpoint {NOT_SUPPORTED}: leave it empty")
    strength = req.denoising_strength
    return HiresRequest(
        hr_scale=req.hr_scale,
        hr_resize_x=req.hr_resize_x,
        hr_resize_y=req.hr_resize_y,
        hr_upscaler=req.hr_upscaler or DEFAULT_HR_UPSCALER,
        hr_second_pass_steps=req.hr_second_pass_steps,
        denoising_strength=DEFAULT_HIRES_STRENGTH if strength is None else strength,
        hr_sampler_name=req.hr_sampler_name or "",
        hr_scheduler=req.hr_scheduler or "",
        hr_prompt=req.hr_prompt or "",
        hr_negative_prompt=req.hr_negative_prompt or "",
        hr_cfg=req.hr_cfg,
    )


class ExtrasApi:
    """The handlers; images are decoded and upscaled in worker threads (a model upscale takes seconds)."""

    def __init__(self, service: Service, limits: ApiLimits):
        self.service, self.limits = service, limits

    async def upscalers(self) -> list[dict[str, Any]]:
        registry: UpscalerRegistry = self.service.upscalers
        return [
            {
                "name": u.name,
                "model_name": None if u.model_path is None else u.model_path.stem,
                "model_path": None if u.model_path is None else str(u.model_path),
                "model_url": None,
                "scale": u.scale,
            }
            for u in registry.upscalers
        ]

    async def latent_upscale_modes(self) -> list[dict[str, str]]:
        return [{"name": name} for name in LATENT_UPSCALE_MODES]

    async def single_image(self, req: ExtrasSingleImageRequest) -> dict[str, Any]:
        results = await anyio.to_thread.run_sync(self._run, req, [("image", req.image)])
        image, text = results[0]
        return {"image": encode_png(image, text) if req.show_extras_results else None, "html_info": text}

    async def batch_images(self, req: ExtrasBatchImagesRequest) -> dict[str, Any]:
        items = [(f"imageList.{i}.data", item.data) for i, item in enumerate(req.imageList)]
        results = await anyio.to_thread.run_sync(self._run, req, items)
        images = [encode_png(image, text) for image, text in results] if req.show_extras_results else []
        return {"images": images, "html_info": results[0][1] if results else ""}

    def _run(self, req: ExtrasBaseRequest, items: list[tuple[str, str]]) -> list[tuple[Any, str]]:
        images = [decode_image(data, name, max_pixels=self.limits.max_image_pixels) for name, data in items]
        try:
            return self.service.run_extras(images, req.extras_request(), save=False)
        except InvalidRequest as exc:
            raise field_error(exc.field, exc.message) from exc
        except UpscalerError as exc:  # a model file spandrel cannot identify or read: its message names the file
            raise field_error("upscaler_1", str(exc)) from exc


def extras_routes(service: Service, limits: ApiLimits) -> list[tuple[str, Callable[..., Any], list[str], Any]]:
    """``(path, endpoint, methods, response model)`` rows for :func:`webui.api.routes.mount_api`'s table."""
    api = ExtrasApi(service, limits)
    return [
        ("/upscalers", api.upscalers, ["GET"], list[UpscalerItem]),
        ("/latent-upscale-modes", api.latent_upscale_modes, ["GET"], list[LatentUpscalerModeItem]),
        ("/extra-single-image", api.single_image, ["POST"], ExtrasSingleImageResponse),
        ("/extra-batch-images", api.batch_images, ["POST"], ExtrasBatchImagesResponse),
    ]

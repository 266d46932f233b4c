"""The Extras tab (A1111's): upscale one image or a batch of uploaded images with Upscaler 1 and a blended
Upscaler 2; results are saved to ``outputs/extras/<date>/`` with their parameters in the PNG."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr
from PIL import Image

from webui.pipeline.errors import InvalidRequest
from webui.service import Service
from webui.upscalers.base import UpscalerError
from webui.upscalers.postprocess import RESIZE_BY, RESIZE_TO, ExtrasRequest

RESIZE_MODE_LABELS = ("Scale by", "Scale to")


def extras_handler(service: Service) -> Callable[..., tuple[list[Image.Image], str]]:
    """The Upscale button's function: ``(single image, batch files, widget values...) -> (gallery, info)``."""

    def run(
        image: Image.Image | None,
        files: list[Any] | None,
        resize_mode: str,
        resize: float,
        width: float,
        height: float,
        crop: bool,
        upscaler_1: str,
        upscaler_2: str,
        visibility: float,
    ) -> tuple[list[Image.Image], str]:
        images: list[Image.Image] = [Image.open(getattr(f, "name", f)) for f in files or []]
        if image is not None:
            images.insert(0, image)
        if not images:
            raise gr.Error("Upload an image (Single image) or some images (Batch) first.")
        request = ExtrasRequest(
            resize_mode=RESIZE_TO if resize_mode == RESIZE_MODE_LABELS[1] else RESIZE_BY,
            upscaling_resize=float(resize),
            upscaling_resize_w=int(width),
            upscaling_resize_h=int(height),
            upscaling_crop=bool(crop),
            upscaler_1=upscaler_1,
            upscaler_2=upscaler_2,
            extras_upscaler_2_visibility=float(visibility),
        )
        try:
            results = service.run_extras(images, request, save=True)
        except (InvalidRequest, UpscalerError) as exc:
            raise gr.Error(str(exc)) from exc
        return [result for result, _ in results], results[0][1]

    return run


def build_extras_tab(service: Service) -> None:
    """Lay out the tab (inside the caller's ``gr.Tab``) and wire Upscale to the service."""
    names = service.upscalers.names
    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            with gr.Tabs():
                with gr.Tab("Single image"):
                    image = gr.Image(type="pil", label="Source", elem_id="extras_image")
                with gr.Tab("Batch"):
                    files = gr.File(file_count="multiple", file_types=["image"], label="Images", elem_id="extras_batch")
            resize_mode = gr.Radio(list(RESIZE_MODE_LABELS), value=RESIZE_MODE_LABELS[0], label="Resize")
            with gr.Row():
                resize = gr.Slider(1.0, 8.0, value=2.0, step=0.05, label="Resize by", elem_id="extras_upscaling_resize")
                width = gr.Number(512, label="Scale to width", precision=0, elem_id="extras_upscaling_resize_w")
                height = gr.Number(512, label="Scale to height", precision=0, elem_id="extras_upscaling_resize_h")
                crop = gr.Checkbox(True, label="Crop to fit", elem_id="extras_upscaling_crop")
            with gr.Row():
                upscaler_1 = gr.Dropdown(names, value="Lanczos", label="Upscaler 1", elem_id="extras_upscaler_1")
                upscaler_2 = gr.Dropdown(names, value="None", label="Upscaler 2", elem_id="extras_upscaler_2")
                visibility = gr.Slider(0.0, 1.0, value=0.0, step=0.05, label="Upscaler 2 visibility")
            run = gr.Button("Upscale", variant="primary", elem_id="extras_generate")
        with gr.Column(scale=1):
            gallery = gr.Gallery(label="Result", elem_id="extras_gallery", format="png")
            info = gr.Textbox(label="Parameters", interactive=False, elem_id="extras_info")
    inputs = [image, files, resize_mode, resize, width, height, crop, upscaler_1, upscaler_2, visibility]
    run.click(extras_handler(service), inputs, [gallery, info], api_name="extras", concurrency_id="generate")

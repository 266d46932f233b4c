"""The img2img tab, with an Inpaint sub-tab (draw the mask on the image, or upload one); API ``/img2img``.

Mask convention (AUTOMATIC1111's): white = repaint. A drawn mask is every pixel the brush touched.
"""

from __future__ import annotations

from collections.abc import Iterator

import gradio as gr
from PIL import Image, ImageChops

from webui.pipeline.requests import INPAINTING_FILLS, MASK_MODES, RESIZE_MODES, Img2ImgRequest
from webui.service import Service
from webui.ui import backend
from webui.ui.common import (
    GenerationTab,
    build_outputs,
    build_prompts,
    build_settings,
    generation_fields,
    run_generation,
    wire_common,
    wire_token_counter,
)
from webui.ui.jobs import JobTracker

MODES = ("img2img", "inpaint")


def drawn_mask(editor_value: dict | None) -> Image.Image | None:
    """The mask painted in a `gr.ImageMask`: white wherever any layer has paint (alpha > 0), else None."""
    if not editor_value:
        return None
    layers = [layer for layer in editor_value.get("layers") or [] if layer is not None]
    if not layers:
        return None
    mask = None
    for layer in layers:
        alpha = layer.convert("RGBA").getchannel("A").point(lambda a: 255 if a > 0 else 0)
        mask = alpha if mask is None else ImageChops.lighter(mask, alpha)
    if mask is None or mask.getbbox() is None:
        return None
    return mask


def inpaint_inputs(
    editor_value: dict | None, uploaded_mask: Image.Image | None, fallback_image: Image.Image | None
) -> tuple[Image.Image | None, Image.Image | None]:
    """(image, mask) for inpainting: the editor's background (else the img2img image) and the uploaded mask
    (else the drawn one)."""
    image = (editor_value or {}).get("background") or fallback_image
    mask = uploaded_mask.convert("L") if uploaded_mask is not None else drawn_mask(editor_value)
    return image, mask


def img2img_request(
    mode: str, init_image: Image.Image | None, inpaint_image: dict | None, inpaint_mask: Image.Image | None,
    prompt: str, negative_prompt: str, sampler_name: str, scheduler: str, steps: float, cfg_scale: float,
    width: float, height: float, seed: float | None, n_iter: float, batch_size: float,
    denoising_strength: float, resize_mode: int | None, mask_blur: float, mask_mode: int | None,
    inpainting_fill: int | None,
) -> Img2ImgRequest:
    """The request the img2img widgets describe; in ``inpaint`` mode it carries the mask."""
    mask = None
    image = init_image
    if mode == "inpaint":
        image, mask = inpaint_inputs(inpaint_image, inpaint_mask, init_image)
    return Img2ImgRequest(
        **generation_fields(prompt, negative_prompt, sampler_name, scheduler, steps, cfg_scale, width, height, seed,
                            n_iter, batch_size),
        init_images=[image.convert("RGB")] if image is not None else [],
        denoising_strength=float(denoising_strength),
        resize_mode=int(resize_mode or 0),
        mask=mask,
        mask_blur=int(mask_blur),
        inpainting_mask_invert=int(mask_mode or 0),
        inpainting_fill=int(1 if inpainting_fill is None else inpainting_fill),
    )


def build_img2img_tab(service: Service, tracker: JobTracker, model: gr.Dropdown) -> tuple[GenerationTab, gr.Image]:
    """Lay out the tab (inside the caller's ``gr.Tab``); returns it and its init image (a Send-to target)."""
    name = "img2img"
    prompt, negative, generate, interrupt, skip, tokens = build_prompts(name)
    mode = gr.Radio(list(MODES), value=MODES[0], label="Mode", visible=False, elem_id="img2img_mode")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            with gr.Tabs(elem_id="img2img_mode_tabs"):
                with gr.Tab("img2img", id="img2img_sub") as plain_tab:
                    init_image = gr.Image(label="Image", type="pil", sources=["upload", "clipboard"],
                                          elem_id="img2img_image", height=360)
                with gr.Tab("Inpaint", id="inpaint_sub") as inpaint_tab:
                    inpaint_image = gr.ImageMask(
                        label="Image and mask (paint over what to repaint)", type="pil",
                        sources=["upload", "clipboard"], elem_id="img2img_inpaint", height=360,
                        brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"),
                    )
                    inpaint_mask = gr.Image(label="Mask (optional upload; white = repaint)", type="pil",
                                            image_mode="L", sources=["upload"], elem_id="img2img_mask", height=160)
                    with gr.Row():
                        mask_blur = gr.Slider(0, 64, value=4, step=1, label="Mask blur", elem_id="img2img_mask_blur")
                        mask_mode = gr.Radio(list(MASK_MODES), value=MASK_MODES[0], type="index", label="Mask mode")
                    inpainting_fill = gr.Radio(list(INPAINTING_FILLS), value=INPAINTING_FILLS[1], type="index",
                                               label="Masked content")
            plain_tab.select(lambda: MODES[0], None, mode, queue=False, api_visibility="undocumented")
            inpaint_tab.select(lambda: MODES[1], None, mode, queue=False, api_visibility="undocumented")
            resize_mode = gr.Radio(list(RESIZE_MODES), value=RESIZE_MODES[0], type="index", label="Resize mode")
            settings = build_settings(name, service, backend.find_model(service, model.value))
            denoising_strength = gr.Slider(0.0, 1.0, value=0.75, step=0.01, label="Denoising strength",
                                           elem_id="img2img_denoising_strength")
        with gr.Column(scale=1):
            outputs = build_outputs(name)
    tab = GenerationTab(name=name, prompt=prompt, negative_prompt=negative, generate=generate,
                        interrupt=interrupt, skip=skip, tokens=tokens, denoising_strength=denoising_strength,
                        **settings, **outputs)

    def img2img(
        model_name: str, mode: str, init_image: Image.Image | None, inpaint_image: dict | None,
        inpaint_mask: Image.Image | None, prompt: str, negative_prompt: str, sampler_name: str, scheduler: str,
        steps: float, cfg_scale: float, width: float, height: float, seed: float, n_iter: float,
        batch_size: float, denoising_strength: float, resize_mode: int, mask_blur: float, mask_mode: int,
        inpainting_fill: int, request: gr.Request,
    ) -> Iterator[tuple]:
        """Generate from an image (mode "img2img") or repaint its masked part (mode "inpaint": pass the image
        as init_image and a white-on-black inpaint_mask)."""
        try:
            gen_request = img2img_request(
                mode, init_image, inpaint_image, inpaint_mask, prompt, negative_prompt, sampler_name, scheduler,
                steps, cfg_scale, width, height, seed, n_iter, batch_size, denoising_strength, resize_mode,
                mask_blur, mask_mode, inpainting_fill,
            )
        except (TypeError, ValueError) as exc:
            raise gr.Error(f"Invalid settings: {exc}") from exc
        if not gen_request.init_images:
            raise gr.Error("Upload an image first (img2img needs a starting image).", title="No image")
        if mode == "inpaint" and gen_request.mask is None:
            raise gr.Error("Paint the area to repaint on the image, or upload a mask.", title="No mask")
        yield from run_generation(tracker, gen_request, model_name, request.session_hash if request else None)

    inputs = [model, mode, init_image, inpaint_image, inpaint_mask, prompt, negative, tab.sampler, tab.scheduler,
              tab.steps, tab.cfg_scale, tab.width, tab.height, tab.seed, tab.batch_count, tab.batch_size,
              denoising_strength, resize_mode, mask_blur, mask_mode, inpainting_fill]
    generate.click(img2img, inputs, tab.outputs(), api_name="img2img", show_progress="minimal",
                   concurrency_id="generate", concurrency_limit=8)
    wire_common(tab, tracker)
    wire_token_counter(tab, service, model)
    return tab, init_image

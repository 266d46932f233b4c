"""The img2img tab, with an Inpaint sub-tab (draw the mask on the image, or upload one); API ``/img2img``.

Mask convention (AUTOMATIC1111's): white = repaint. A drawn mask is every pixel the brush touched: the
brush paints a semi-transparent colour so that the image stays visible under it, and the mask is read
from the layers' alpha channel, never from their colour.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image, ImageChops

from webui.pipeline.requests import INPAINTING_FILLS, MASK_MODES, RESIZE_MODES, Img2ImgRequest
from webui.service import Service
from webui.ui import backend, queue_tab
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
from webui.ui.embeddings_vae import build_textual_inversion_panel
from webui.ui.explore import ExploreWidgets, amend_request, build_script, build_styles, build_variation
from webui.ui.jobs import JobTracker
from webui.ui.lora_panel import build_lora_panel

MODES = ("img2img", "inpaint")
PLAIN_TAB, INPAINT_TAB = "img2img_sub", "inpaint_sub"  # ids of the two sub-tabs (Send to selects one)

# The mask brush: Photoshop's quick-mask red at half opacity by default (visible on most images, and the image
# shows through it), white at half opacity for red images. Only the alpha of the paint makes the mask.
MASK_COLORS: list[str | tuple[str, float]] = [("#ff0000", 0.5), ("#ffffff", 0.5)]
MAX_BRUSH_RADIUS = 100  # the editor's brush size slider goes from 1 to 100

# gradio 6's ImageEditor initialises its canvas asynchronously after it is mounted (the Inpaint sub-tab
# mounts it when first shown), and a file chosen or dropped before that is lost: its upload handler calls
# the unfinished editor and fails ("Cannot read properties of undefined (reading 'reset_layers')"), leaving
# the "Upload an image" prompt up. On a busy machine the canvas needs seconds. This page script holds such
# a file back and hands it to the editor as a drop once it is ready (its toolbar, drawn only then, is there),
# or after a minute regardless, so that a gradio whose editor looks different is never worse off.
UPLOAD_GUARD_JS = """
() => {
  const GIVE_UP_MS = 60000;
  const editorOf = (node) => node instanceof Element ? node.closest('#img2img_inpaint [data-testid="image"]') : null;
  const isReady = (editor) => {
    if (editor.dataset.sdReady !== "1" && editor.querySelector(".toolbar-wrap")) editor.dataset.sdReady = "1";
    return editor.dataset.sdReady === "1";
  };
  const deliverWhenReady = (editor) => {
    if (!editor.isConnected) return;
    if (!isReady(editor) && performance.now() - editor.sdHeldSince < GIVE_UP_MS) {
      setTimeout(() => deliverWhenReady(editor), 100);
      return;
    }
    const data = new DataTransfer();
    for (const file of editor.sdHeldFiles) data.items.add(file);
    editor.sdHeldFiles = null;
    editor.sdDelivering = true;  // dispatchEvent is synchronous: lets this drop past hold()
    try {
      editor.dispatchEvent(new DragEvent("drop", { dataTransfer: data, bubbles: true, cancelable: true }));
    } finally {
      editor.sdDelivering = false;
    }
  };
  const hold = (event, files) => {
    const editor = editorOf(event.target);
    if (!editor || editor.sdDelivering || !files || !files.length || isReady(editor)) return;
    event.preventDefault();
    event.stopImmediatePropagation();
    const waiting = Boolean(editor.sdHeldFiles);
    editor.sdHeldFiles = Array.from(files);  // the last file given wins, as it would once ready
    if (!waiting) {
      editor.sdHeldSince = performance.now();
      deliverWhenReady(editor);
    }
  };
  // Capture phase on the document: runs before the editor's own listeners on its file input and drop zone.
  document.addEventListener("change", (event) => hold(event, event.target.files), true);
  document.addEventListener("drop", (event) => hold(event, event.dataTransfer && event.dataTransfer.files), true);
}
"""


def brush_radius(width: int, height: int) -> int:
    """The mask brush's default radius in image pixels for a ``width`` x ``height`` image.

    A twentieth of the shorter side, so that one dab is a tenth of the image across, within the 1/16 to 1/10
    of AUTOMATIC1111's inpaint brush: 3 px on a 64 px image, 26 px on 512 px. Small enough to mask one object
    among several, large enough that a few strokes cover a big one; gradio's fixed default (25 px) covered
    most of a 64 px image in two strokes. Clamped to the editor's brush size slider (1-100).
    """
    return max(1, min(MAX_BRUSH_RADIUS, round(min(width, height) / 20)))


def mask_brush(size: tuple[int, int] | None) -> gr.Brush:
    """The mask brush for an image of ``size`` (width, height); gradio's own default size when unknown."""
    return gr.Brush(
        default_size=brush_radius(*size) if size else "auto",
        colors=MASK_COLORS,
        default_color=MASK_COLORS[0],
        color_mode="fixed",
    )


def image_size(image: Image.Image | str | Path | None) -> tuple[int, int] | None:
    """(width, height) of an image or image file, or None."""
    if image is None:
        return None
    if isinstance(image, Image.Image):
        return image.size
    try:
        with Image.open(image) as opened:
            return opened.size
    except OSError:
        return None


def background_only(image: Image.Image | str | Path | None) -> dict | None:
    """The mask editor's value with ``image`` as its background and no paint on it."""
    return {"background": image, "layers": [], "composite": None} if image is not None else None


def editor_update(image: Image.Image | str | Path | None) -> gr.ImageMask:
    """Put ``image`` into the mask editor (earlier paint is dropped) and size the brush to it."""
    # gradio types ImageMask(value=) as an image only, but it takes the editor's dict value too (its own docs).
    return gr.ImageMask(value=background_only(image), brush=mask_brush(image_size(image)))  # type: ignore[arg-type]


def fitted_brush(editor: dict | None) -> gr.ImageMask:
    """Only the brush of the mask editor, sized to the image in it (its value is left alone)."""
    return gr.ImageMask(brush=mask_brush(image_size((editor or {}).get("background"))))


@dataclass
class Img2ImgInputs:
    """The img2img tab's image inputs: what "Send to img2img" / "Send to inpaint" fill in."""

    init_image: gr.Image
    inpaint_image: gr.ImageMask
    inpaint_mask: gr.Image
    mode: gr.Radio  # hidden; which sub-tab generates ("img2img" or "inpaint")
    mode_tabs: gr.Tabs  # the img2img / Inpaint sub-tabs


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
    mode: str,
    init_image: Image.Image | None,
    inpaint_image: dict | None,
    inpaint_mask: Image.Image | None,
    prompt: str,
    negative_prompt: str,
    sampler_name: str,
    scheduler: str,
    steps: float,
    cfg_scale: float,
    width: float,
    height: float,
    seed: float | None,
    n_iter: float,
    batch_size: float,
    denoising_strength: float,
    resize_mode: int | None,
    mask_blur: float,
    mask_mode: int | None,
    inpainting_fill: int | None,
) -> Img2ImgRequest:
    """The request the img2img widgets describe; in ``inpaint`` mode it carries the mask."""
    mask = None
    image = init_image
    if mode == "inpaint":
        image, mask = inpaint_inputs(inpaint_image, inpaint_mask, init_image)
    return Img2ImgRequest(
        **generation_fields(
            prompt, negative_prompt, sampler_name, scheduler, steps, cfg_scale, width, height, seed, n_iter, batch_size
        ),
        init_images=[image.convert("RGB")] if image is not None else [],
        denoising_strength=float(denoising_strength),
        resize_mode=int(resize_mode or 0),
        mask=mask,
        mask_blur=int(mask_blur),
        inpainting_mask_invert=int(mask_mode or 0),
        inpainting_fill=int(1 if inpainting_fill is None else inpainting_fill),
    )


def build_img2img_tab(service: Service, tracker: JobTracker, model: gr.Dropdown) -> tuple[GenerationTab, Img2ImgInputs]:
    """Lay out the tab (inside the caller's ``gr.Tab``); returns it and its image inputs (Send-to targets)."""
    name = "img2img"
    prompt, negative, generate, interrupt, skip, tokens, enqueue = build_prompts(name)
    build_lora_panel(service, prompt, name)  # LoRA (issue 15)
    build_textual_inversion_panel(name, service)  # issue 15
    styles, _ = build_styles(name, service, prompt, negative)  # styles, variation seeds, scripts: ui/explore.py
    mode = gr.Radio(list(MODES), value=MODES[0], label="Mode", visible=False, elem_id="img2img_mode")
    entry = backend.find_model(service, model.value)
    native = (entry.width, entry.height) if entry and entry.width and entry.height else None
    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            with gr.Tabs(elem_id="img2img_mode_tabs") as mode_tabs:
                with gr.Tab("img2img", id=PLAIN_TAB) as plain_tab:
                    init_image = gr.Image(
                        label="Image", type="pil", sources=["upload", "clipboard"], elem_id="img2img_image", height=360
                    )
                with gr.Tab("Inpaint", id=INPAINT_TAB) as inpaint_tab:
                    # PNG, not gradio's default WebP: the background comes back lossless, so that the
                    # unmasked part of the result is exactly the image that was sent here.
                    inpaint_image = gr.ImageMask(
                        label="Image and mask (paint over what to repaint)",
                        type="pil",
                        sources=["upload", "clipboard"],
                        elem_id="img2img_inpaint",
                        height=360,
                        brush=mask_brush(native),
                        format="png",
                    )
                    inpaint_mask = gr.Image(
                        label="Mask (optional upload; white = repaint)",
                        type="pil",
                        image_mode="L",
                        sources=["upload"],
                        elem_id="img2img_mask",
                        height=160,
                    )
                    with gr.Row():
                        mask_blur = gr.Slider(0, 64, value=4, step=1, label="Mask blur", elem_id="img2img_mask_blur")
                        mask_mode = gr.Radio(list(MASK_MODES), value=MASK_MODES[0], type="index", label="Mask mode")
                    inpainting_fill = gr.Radio(
                        list(INPAINTING_FILLS), value=INPAINTING_FILLS[1], type="index", label="Masked content"
                    )
            plain_tab.select(lambda: MODES[0], None, mode, queue=False, api_visibility="undocumented")
            inpaint_tab.select(lambda: MODES[1], None, mode, queue=False, api_visibility="undocumented")
            resize_mode = gr.Radio(list(RESIZE_MODES), value=RESIZE_MODES[0], type="index", label="Resize mode")
            settings = build_settings(name, service, entry)
            denoising_strength = gr.Slider(
                0.0, 1.0, value=0.75, step=0.01, label="Denoising strength", elem_id="img2img_denoising_strength"
            )
            explore = ExploreWidgets(*build_variation(name), styles, *build_script(name))
        with gr.Column(scale=1):
            outputs = build_outputs(name)
    tab = GenerationTab(
        name=name,
        prompt=prompt,
        negative_prompt=negative,
        generate=generate,
        interrupt=interrupt,
        skip=skip,
        tokens=tokens,
        denoising_strength=denoising_strength,
        **settings,
        **outputs,
    )

    def checked_request(model_name: str, explore_values: list[Any] | None, mode: str, *widgets: Any) -> Img2ImgRequest:
        """The request Generate and Enqueue both send: the widgets checked, then styles, variation and script."""
        try:
            gen_request = img2img_request(mode, *widgets)
        except (TypeError, ValueError) as exc:
            raise gr.Error(f"Invalid settings: {exc}") from exc
        if not gen_request.init_images:
            raise gr.Error("Upload an image first (img2img needs a starting image).", title="No image")
        if mode == "inpaint" and gen_request.mask is None:
            raise gr.Error("Paint the area to repaint on the image, or upload a mask.", title="No mask")
        return amend_request(service, gen_request, model_name, explore_values)

    def img2img(
        model_name: str,
        mode: str,
        init_image: Image.Image | None,
        inpaint_image: dict | None,
        inpaint_mask: Image.Image | None,
        prompt: str,
        negative_prompt: str,
        sampler_name: str,
        scheduler: str,
        steps: float,
        cfg_scale: float,
        width: float,
        height: float,
        seed: float,
        n_iter: float,
        batch_size: float,
        denoising_strength: float,
        resize_mode: int,
        mask_blur: float,
        mask_mode: int,
        inpainting_fill: int,
        explore_values: list[Any] | None,
        request: gr.Request,
    ) -> Iterator[tuple]:
        """Generate from an image (mode "img2img") or repaint its masked part (mode "inpaint": pass the image
        as init_image and a white-on-black inpaint_mask)."""
        gen_request = checked_request(
            model_name, explore_values, mode, init_image, inpaint_image, inpaint_mask, prompt, negative_prompt,
            sampler_name, scheduler, steps, cfg_scale, width, height, seed, n_iter, batch_size, denoising_strength,
            resize_mode, mask_blur, mask_mode, inpainting_fill,
        )  # fmt: skip
        session, owner = (request.session_hash, request.username) if request else (None, None)
        yield from run_generation(tracker, gen_request, model_name, session, owner)

    inputs = [
        model,
        mode,
        init_image,
        inpaint_image,
        inpaint_mask,
        prompt,
        negative,
        tab.sampler,
        tab.scheduler,
        tab.steps,
        tab.cfg_scale,
        tab.width,
        tab.height,
        tab.seed,
        tab.batch_count,
        tab.batch_size,
        denoising_strength,
        resize_mode,
        mask_blur,
        mask_mode,
        inpainting_fill,
        explore.collect(),
    ]
    generate.click(
        img2img,
        inputs,
        tab.outputs(),
        api_name="img2img",
        show_progress="minimal",
        concurrency_id="generate",
        concurrency_limit=8,
    )
    wire_common(tab, tracker)
    tab.explore = explore  # issue 17: Reuse and Send to fill its variation seeds (explore.wire_variation_...)
    wire_token_counter(tab, service, model)
    wire_mask_editor(inpaint_image)

    # Enqueue (#20): the same checks and request as Generate, queued without waiting for it.
    def img2img_enqueue(
        model_name: str,
        mode: str,
        init_image: Image.Image | None,
        inpaint_image: dict | None,
        inpaint_mask: Image.Image | None,
        prompt: str,
        negative_prompt: str,
        sampler_name: str,
        scheduler: str,
        steps: float,
        cfg_scale: float,
        width: float,
        height: float,
        seed: float,
        n_iter: float,
        batch_size: float,
        denoising_strength: float,
        resize_mode: int,
        mask_blur: float,
        mask_mode: int,
        inpainting_fill: int,
        explore_values: list[Any] | None,
        request: gr.Request,
    ) -> str:
        gen_request = checked_request(
            model_name, explore_values, mode, init_image, inpaint_image, inpaint_mask, prompt, negative_prompt,
            sampler_name, scheduler, steps, cfg_scale, width, height, seed, n_iter, batch_size, denoising_strength,
            resize_mode, mask_blur, mask_mode, inpainting_fill,
        )  # fmt: skip
        return queue_tab.enqueue(service, gen_request, model_name, request.username if request else None)

    enqueue.click(img2img_enqueue, inputs, [tab.progress], queue=False)
    return tab, Img2ImgInputs(init_image, inpaint_image, inpaint_mask, mode, mode_tabs)


def wire_mask_editor(editor: gr.ImageMask) -> None:
    """Size the brush to each image put into the editor, and install the page script that keeps uploads."""
    # Fires for uploads and for images sent here; updates only the brush, never the value (no loop).
    editor.upload(
        fitted_brush,
        editor,
        editor,
        queue=False,
        show_progress="hidden",
        trigger_mode="always_last",
        api_visibility="undocumented",
    )
    gr.on(triggers=None, fn=None, js=UPLOAD_GUARD_JS, queue=False, api_visibility="undocumented")

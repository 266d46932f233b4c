"""`build_ui(service)`: the whole page. A header with the model status line; the model dropdown with the model's
description and example prompts; then the tabs txt2img, img2img (+ Inpaint), PNG Info, Models."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import gradio as gr

from webui.pipeline.infotext import request_from_infotext
from webui.pipeline.requests import GenerationRequest, Img2ImgRequest
from webui.service import Service
from webui.ui import backend, model_info
from webui.ui.common import QUIET, GenerationTab, ShownResult, request_widget_values
from webui.ui.embeddings_vae import CSS as EMBEDDINGS_VAE_CSS
from webui.ui.embeddings_vae import build_vae_dropdown, wire_vae_paste
from webui.ui.explore import wire_variation_reuse_and_paste
from webui.ui.extras import build_extras_tab
from webui.ui.hires import wire_hires_paste
from webui.ui.img2img import INPAINT_TAB, MODES, PLAIN_TAB, Img2ImgInputs, build_img2img_tab, editor_update
from webui.ui.jobs import JobTracker
from webui.ui.models_tab import build_models_tab
from webui.ui.pnginfo import PngInfoTab, build_pnginfo_tab
from webui.ui.queue_tab import build_queue_tab, wire_queue_tab
from webui.ui.speedups_panel import build_speedups_panel
from webui.ui.txt2img import build_txt2img_tab

TITLE = "Stable Diffusion web UI"
TAGLINE = "Make images from text on this machine: Stable Diffusion 1.x text-to-image, image-to-image and inpainting."
HEADER_HTML = f'<div class="sd-header"><h1>{TITLE}</h1><p>{TAGLINE}</p></div>'
STATUS_REFRESH_SECONDS = 2.0  # the status line and the Models table follow the service this often

# Tooltips by elem_id; gradio 6 buttons take no title, so JS sets it (see JS).
TOOLTIPS = {
    f"{tab}_{button}": text
    for tab in ("txt2img", "img2img")
    for button, text in (
        ("random_seed", "Use a random seed for the next run (sets Seed to -1)"),
        ("reuse_seed", "Reuse the seed (and variation seed) of the image selected in the gallery"),
    )
}
# Images that are shown larger than their own pixels are drawn with nearest-neighbour scaling (JS marks them).
PIXELATED = "#txt2img_gallery img, #img2img_gallery img, #img2img_image img"

CSS = """
/* passed to launch(css=...): gradio 6 takes page-level CSS there */
.sd-job-status { font-variant-numeric: tabular-nums; padding: 4px 0; }
.sd-job-status progress { height: 6px; display: block; margin-top: 4px; }
#model_status progress { width: 100%; height: 6px; display: block; }
.sd-problems { border: 1px solid #d97706; border-radius: 6px; padding: 4px 10px; background: rgba(217,119,6,.08); }
.sd-problems summary { cursor: pointer; }
.sd-header h1 { font-size: 1.4rem; margin: 0; }
.sd-header p { margin: 2px 0 0; opacity: 0.8; }
#sd_status_line { text-align: right; }
.sd-status-line { display: inline-block; font-variant-numeric: tabular-nums; padding: 4px 10px; border-radius: 6px;
                  background: var(--block-background-fill); border: 1px solid var(--border-color-primary); }
.sd-status-line[data-loaded="false"] { opacity: 0.75; }
.sd-token-counter { cursor: help; text-decoration: underline dotted; }
.sd-token-counter[data-chunked="true"] { font-weight: 600; }
img.sd-pixelated { image-rendering: pixelated; }
/* A small input image fills its box (scaled up crisply by .sd-pixelated) instead of sitting tiny in a corner. */
#img2img_image img { width: 100%; height: 100%; object-fit: contain; }
/* Gallery thumbnails: the seed caption goes under the image instead of covering its bottom. */
#txt2img_gallery .thumbnail-item, #img2img_gallery .thumbnail-item { display: flex; flex-direction: column; }
#txt2img_gallery .thumbnail-item img, #img2img_gallery .thumbnail-item img { flex: 1 1 0; min-height: 0; }
#txt2img_gallery .thumbnail-item .caption-label, #img2img_gallery .thumbnail-item .caption-label {
  position: static; flex: none; max-width: none; border: none; border-radius: 0; text-align: center; opacity: 0.8;
}
#model_description { font-size: var(--text-sm); }
/* Models table: fixed column widths, long sources and errors wrap inside their cells. */
#models_table table { table-layout: fixed; width: 100%; }
#models_table th, #models_table td { overflow-wrap: anywhere; white-space: normal; vertical-align: top; }
@media (max-width: 900px) { #models_table th, #models_table td { font-size: var(--text-sm); } }
"""
CSS += EMBEDDINGS_VAE_CSS  # issue 15: the Textual Inversion panel

# Passed to launch(js=...): Ctrl+Enter (Cmd+Enter) in a prompt box clicks that tab's Generate, as in A1111;
# tooltips on buttons; nearest-neighbour display of images shown larger than their pixels.
JS = """
() => {
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Enter" || !(event.ctrlKey || event.metaKey) || !event.target.closest) return;
    const box = event.target.closest("#txt2img_prompt, #txt2img_neg_prompt, #img2img_prompt, #img2img_neg_prompt");
    if (!box) return;
    const button = document.getElementById(box.id.split("_")[0] + "_generate");
    if (button) {
      event.preventDefault();
      button.click();
    }
  });
  const tooltips = __TOOLTIPS__;
  const pixelated = __PIXELATED__;
  const markPixelated = (img) => {
    const shown = img.naturalWidth > 0 && (img.clientWidth > img.naturalWidth || img.clientHeight > img.naturalHeight);
    img.classList.toggle("sd-pixelated", shown);
  };
  const update = () => {
    for (const [id, text] of Object.entries(tooltips)) {
      const element = document.getElementById(id);
      if (element && element.title !== text) element.title = text;
    }
    document.querySelectorAll(pixelated).forEach(markPixelated);
  };
  document.addEventListener("load", (event) => {
    if (event.target.tagName === "IMG" && event.target.matches(pixelated)) markPixelated(event.target);
  }, true);
  new MutationObserver(update).observe(document.body, {childList: true, subtree: true});
  window.addEventListener("resize", update);
  update();
}
""".replace("__TOOLTIPS__", json.dumps(TOOLTIPS)).replace("__PIXELATED__", json.dumps(PIXELATED))


def build_ui(service: Service, *, poll_interval: float = 0.1) -> gr.Blocks:
    """Build the Gradio app for ``service`` (a `webui.service.WebUIService`). Nothing runs until launched.

    Named API endpoints (usable from ``gradio_client``): ``/txt2img``, ``/img2img`` and ``/png_info``.
    """
    tracker = JobTracker(service, poll_interval=poll_interval)
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        with gr.Row(equal_height=True, elem_id="sd_header_row"):
            gr.HTML(HEADER_HTML, elem_id="sd_header")
            status_line = gr.HTML(model_info.status_html(service), elem_id="sd_status_line")
        banner_html = backend.problems_banner(service)
        banner = gr.HTML(banner_html, visible=bool(banner_html), elem_id="models_problems")
        with gr.Row(equal_height=False):  # a long message under the dropdown must not stretch its neighbours
            names = [m.name for m in backend.model_choices(service)]
            selected = backend.default_model(service)
            with gr.Column(scale=2, min_width=320):
                with gr.Row(equal_height=False):
                    model = gr.Dropdown(
                        names, value=selected, label="Stable Diffusion checkpoint", elem_id="model_checkpoint", scale=3
                    )
                    cancel_download = gr.Button(
                        "Cancel download", visible=False, elem_id="model_cancel", size="sm", scale=0, min_width=140
                    )
                    sd_vae, _ = build_vae_dropdown(service)  # issue 15: "SD VAE" beside the checkpoint
                model_status = gr.Markdown(elem_id="model_status")
                description = gr.Markdown(model_info.description(service, selected), elem_id="model_description")
            with gr.Column(scale=3, min_width=320):
                prompts = model_info.example_prompts(service, selected)
                examples = gr.Dataset(
                    components=["textbox"],
                    samples=[[p] for p in prompts],
                    samples_per_page=12,
                    label="Example prompts for this model (click one to use it)",
                    visible=bool(prompts),
                    elem_id="model_examples",
                )
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("txt2img", id="txt2img"):
                txt2img = build_txt2img_tab(service, tracker, model)
            with gr.Tab("img2img", id="img2img"):
                img2img, img2img_inputs = build_img2img_tab(service, tracker, model)
            with gr.Tab("Extras", id="extras"):
                build_extras_tab(service)
            with gr.Tab("PNG Info", id="pnginfo"):
                pnginfo = build_pnginfo_tab()
            with gr.Tab("Models", id="models") as models_tab:
                models = build_models_tab(service, model, banner)
                build_speedups_panel(service)  # issue 19: token merging and DeepCache settings
            with gr.Tab("Queue", id="queue") as queue_tab_:  # pending/running/history (#20)
                queue_view = build_queue_tab(service)
        timer = gr.Timer(STATUS_REFRESH_SECONDS)
        wire_queue_tab(service, queue_view, queue_tab_, timer)

        _wire_model_dropdown(service, model, model_status, cancel_download, [txt2img, img2img])
        _wire_send_to(service, tabs, txt2img, img2img, img2img_inputs, pnginfo)
        send = [pnginfo.send_to_txt2img, pnginfo.send_to_img2img, pnginfo.send_to_inpaint]
        wire_vae_paste(service, sd_vae, send, pnginfo.parameters)  # issue 15: pasting restores the VAE
        wire_variation_reuse_and_paste(txt2img, img2img, pnginfo)  # issue 17: Reuse / Send to: variation seeds
        wire_hires_paste(service, txt2img.hires, pnginfo.send_to_txt2img, pnginfo.parameters)  # issue 16
        _wire_model_info(service, model, status_line, description, examples, tabs, txt2img, [txt2img, img2img], timer)
        models.wire_live_status(models_tab, timer, [txt2img.gallery, img2img.gallery])
    return demo


def _wire_model_info(
    service: Service,
    model: gr.Dropdown,
    status_line: gr.HTML,
    description: gr.Markdown,
    examples: gr.Dataset,
    tabs: gr.Tabs,
    txt2img: GenerationTab,
    generation_tabs: list[GenerationTab],
    timer: gr.Timer,
) -> None:
    """Keep the status line current (timer, model change, after each generation); the selected model's
    description and example prompts follow the dropdown; an example fills the txt2img prompt."""

    def refresh_status(shown: str) -> Any:
        current = model_info.status_html(service)
        return gr.skip() if current == shown else current

    timer.tick(refresh_status, status_line, status_line, **QUIET)
    for tab in generation_tabs:
        tab.gallery.change(refresh_status, status_line, status_line, **QUIET)

    def selected(name: str | None, shown: str) -> tuple[Any, str, Any]:
        prompts = model_info.example_prompts(service, name)
        return (
            refresh_status(shown),
            model_info.description(service, name),
            gr.Dataset(samples=[[p] for p in prompts], visible=bool(prompts)),
        )

    model.change(selected, [model, status_line], [status_line, description, examples], **QUIET)

    def use_example(sample: list[str]) -> tuple[Any, str]:
        return gr.Tabs(selected="txt2img"), sample[0]

    examples.click(use_example, examples, [tabs, txt2img.prompt], **QUIET)


def _wire_model_dropdown(
    service: Service, model: gr.Dropdown, status: gr.Markdown, cancel: gr.Button, tabs: list[GenerationTab]
) -> None:
    """Choosing a checkpoint downloads it if needed (said first, with progress and a Cancel button), loads it
    and sets its width/height; on failure the dropdown goes back to the model still loaded, sizes untouched.

    Wired to ``select`` (one event per pick: gradio 6's Dropdown also fires ``input`` on the blur after a
    pick), without a concurrency limit shared with anything else: a download holds no slot and no lock that
    generation or the Models tab need, and each session runs its own selection (the service shares one
    download between sessions that pick the same model).
    """
    switcher = backend.ModelSwitcher(service)

    def outputs_of(update: backend.SelectionUpdate) -> list[Any]:
        value: Any = gr.skip()
        sizes: list[Any] = [gr.skip()] * (2 * len(tabs))
        if update.done:
            value = update.model
            if update.size is not None:
                width, height = update.size
                sizes = [width or gr.skip(), height or gr.skip()] * len(tabs)
        return [value, update.message, gr.Button(visible=update.cancellable), *sizes]

    def choose(name: str | None, request: gr.Request) -> Iterator[list[Any]]:
        updated = False
        for update in switcher.select(name, request.session_hash or ""):
            updated = True
            yield outputs_of(update)
        if not updated:  # nothing to do (the current model, or a repeat event of a pick already running)
            yield [gr.skip()] * len(outputs)

    def stop(request: gr.Request) -> Any:
        switcher.cancel(request.session_hash or "")
        return gr.Button(visible=False)

    outputs: list[Any] = [model, status, cancel]
    for tab in tabs:
        outputs += [tab.width, tab.height]
    model.select(choose, model, outputs, concurrency_limit=None, api_visibility="undocumented", show_progress="hidden")
    cancel.click(stop, None, cancel, **QUIET)  # not queued: it must act even while the queue is busy


def _wire_send_to(
    service: Service,
    tabs: gr.Tabs,
    txt2img: GenerationTab,
    img2img: GenerationTab,
    inputs: Img2ImgInputs,
    pnginfo: PngInfoTab,
) -> None:
    """Send to img2img / inpaint (from a gallery or PNG Info) and Send to txt2img (from PNG Info).

    Sending switches to the img2img tab and its img2img or Inpaint sub-tab (and the hidden mode with it, since
    selecting a tab from the server does not fire its select event), puts the image in, and fills in the
    settings from the image's infotext. An image sent to inpaint becomes the mask editor's background with
    no paint on it, and a mask uploaded for an earlier image is cleared.
    """
    samplers = backend.sampler_names(service)
    parameters = img2img.parameter_components()

    def destination(inpaint: bool, image: Any) -> list[Any]:
        """Updates for `targets(inpaint)`, less the parameters."""
        if inpaint:
            return [gr.Tabs(selected="img2img"), gr.Tabs(selected=INPAINT_TAB), MODES[1], editor_update(image), None]
        return [gr.Tabs(selected="img2img"), gr.Tabs(selected=PLAIN_TAB), MODES[0], image]

    def targets(inpaint: bool) -> list[Any]:
        images = [inputs.inpaint_image, inputs.inpaint_mask] if inpaint else [inputs.init_image]
        return [tabs, inputs.mode_tabs, inputs.mode, *images, *parameters]

    def gallery_to(inpaint: bool) -> Any:
        def send(shown: ShownResult, index: int) -> list[Any]:
            image = shown.image(index)
            if image is None:
                raise gr.Error("Generate an image first.")
            infotext = shown.infotext(index)
            values = (
                request_widget_values(request_from_infotext(infotext, Img2ImgRequest()), samplers)
                if infotext
                else [gr.skip()] * len(parameters)
            )
            return [*destination(inpaint, image), *values]

        return send

    for source in (txt2img, img2img):
        source.send_to_img2img.click(gallery_to(False), [source.results, source.selected], targets(False), **QUIET)
        source.send_to_inpaint.click(gallery_to(True), [source.results, source.selected], targets(True), **QUIET)

    def png_to_img2img(inpaint: bool) -> Any:
        def send(path: str | None, text: str) -> list[Any]:
            if not text:
                raise gr.Error("Drop a PNG with generation parameters first.")
            values = request_widget_values(request_from_infotext(text, Img2ImgRequest()), samplers)
            return [*destination(inpaint, path), *values]

        return send

    def png_to_txt2img(text: str) -> list[Any]:
        if not text:
            raise gr.Error("Drop a PNG with generation parameters first.")
        return [
            gr.Tabs(selected="txt2img"),
            *request_widget_values(request_from_infotext(text, GenerationRequest()), samplers),
        ]

    png = [pnginfo.image, pnginfo.parameters]
    pnginfo.send_to_txt2img.click(png_to_txt2img, pnginfo.parameters, [tabs, *txt2img.parameter_components()], **QUIET)
    pnginfo.send_to_img2img.click(png_to_img2img(False), png, targets(False), **QUIET)
    pnginfo.send_to_inpaint.click(png_to_img2img(True), png, targets(True), **QUIET)

"""`build_ui(service)`: the whole page. Model dropdown on top; txt2img, img2img (+ Inpaint), PNG Info, Models."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr

from webui.pipeline.infotext import request_from_infotext
from webui.pipeline.requests import GenerationRequest, Img2ImgRequest
from webui.service import Service
from webui.ui import backend
from webui.ui.common import QUIET, GenerationTab, ShownResult, request_widget_values
from webui.ui.img2img import INPAINT_TAB, MODES, PLAIN_TAB, Img2ImgInputs, build_img2img_tab, editor_update
from webui.ui.jobs import JobTracker
from webui.ui.models_tab import build_models_tab
from webui.ui.pnginfo import PngInfoTab, build_pnginfo_tab
from webui.ui.txt2img import build_txt2img_tab

TITLE = "Stable Diffusion web UI"
CSS = """
/* passed to launch(css=...): gradio 6 takes page-level CSS there */
.sd-job-status { font-variant-numeric: tabular-nums; padding: 4px 0; }
.sd-job-status progress { height: 6px; display: block; margin-top: 4px; }
#model_status progress { width: 100%; height: 6px; display: block; }
.sd-problems { border: 1px solid #d97706; border-radius: 6px; padding: 4px 10px; background: rgba(217,119,6,.08); }
.sd-problems summary { cursor: pointer; }
"""

# Passed to launch(js=...): Ctrl+Enter (Cmd+Enter) in a prompt box clicks that tab's Generate, as in A1111.
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
}
"""


def build_ui(service: Service, *, poll_interval: float = 0.1) -> gr.Blocks:
    """Build the Gradio app for ``service`` (a `webui.service.WebUIService`). Nothing runs until launched.

    Named API endpoints (usable from ``gradio_client``): ``/txt2img``, ``/img2img`` and ``/png_info``.
    """
    tracker = JobTracker(service, poll_interval=poll_interval)
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        banner_html = backend.problems_banner(service)
        banner = gr.HTML(banner_html, visible=bool(banner_html), elem_id="models_problems")
        with gr.Row(equal_height=False):  # a long error next to the dropdown must not stretch it
            names = [m.name for m in backend.model_choices(service)]
            model = gr.Dropdown(
                names,
                value=backend.default_model(service),
                label="Stable Diffusion checkpoint",
                elem_id="model_checkpoint",
                scale=3,
            )
            cancel_download = gr.Button(
                "Cancel download", visible=False, elem_id="model_cancel", size="sm", scale=0, min_width=140
            )
            model_status = gr.Markdown(elem_id="model_status")
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("txt2img", id="txt2img"):
                txt2img = build_txt2img_tab(service, tracker, model)
            with gr.Tab("img2img", id="img2img"):
                img2img, img2img_inputs = build_img2img_tab(service, tracker, model)
            with gr.Tab("PNG Info", id="pnginfo"):
                pnginfo = build_pnginfo_tab()
            with gr.Tab("Models", id="models"):
                build_models_tab(service, model, banner)

        _wire_model_dropdown(service, model, model_status, cancel_download, [txt2img, img2img])
        _wire_send_to(service, tabs, txt2img, img2img, img2img_inputs, pnginfo)
    return demo


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

"""The PNG Info tab: drop a PNG, read its ``parameters`` chunk, send the settings to txt2img or img2img."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from webui.pipeline.infotext import parse_infotext
from webui.pipeline.outputs import read_infotext


def read_parameters(path: str | Path | None) -> str:
    """The generation parameters stored in an image (PNG ``parameters`` text chunk), or ``""`` when there are
    none or the file cannot be read as an image."""
    if not path:
        return ""
    try:
        return read_infotext(path) or ""
    except OSError:
        return ""


@dataclass
class PngInfoTab:
    image: gr.Image
    parameters: gr.Textbox
    fields: gr.JSON
    send_to_txt2img: gr.Button
    send_to_img2img: gr.Button
    send_to_inpaint: gr.Button


def build_pnginfo_tab() -> PngInfoTab:
    with gr.Row(equal_height=False):
        with gr.Column():
            image = gr.Image(
                label="Source", type="filepath", sources=["upload", "clipboard"], elem_id="pnginfo_image", height=400
            )
        with gr.Column():
            parameters = gr.Textbox(
                label="Parameters", lines=6, interactive=False, elem_id="pnginfo_parameters", buttons=["copy"]
            )
            fields = gr.JSON(label="Fields", open=True, elem_id="pnginfo_fields")
            with gr.Row():
                send_to_txt2img = gr.Button("Send to txt2img", elem_id="pnginfo_send_to_txt2img")
                send_to_img2img = gr.Button("Send to img2img", elem_id="pnginfo_send_to_img2img")
                send_to_inpaint = gr.Button("Send to inpaint", elem_id="pnginfo_send_to_inpaint")

    def show(path: str | None) -> tuple[str, dict]:
        """Read an image's generation parameters (AUTOMATIC1111 infotext) and their parsed fields."""
        text = read_parameters(path)
        if path and not text:
            gr.Info("This image has no generation parameters.")
        return text, (parse_infotext(text) if text else {})

    # Not .change: gradio 6 fires it twice with the same file when a new image replaces the shown one (two
    # identical toasts); .upload fires once per dropped, chosen or pasted image, .clear once on removal.
    image.upload(show, image, [parameters, fields], api_name="png_info", show_progress="hidden")
    image.clear(
        lambda: ("", {}), None, [parameters, fields], queue=False, api_visibility="undocumented", show_progress="hidden"
    )
    return PngInfoTab(image, parameters, fields, send_to_txt2img, send_to_img2img, send_to_inpaint)

"""txt2img's "Hires. fix" accordion (A1111's layout): Upscaler, Hires steps, Denoising strength, Upscale by /
Resize width to / Resize height to, and the final size it gives."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from webui.pipeline.hires import (
    DEFAULT_HR_UPSCALER,
    LATENT_UPSCALE_MODES,
    HiresRequest,
    hires_from_infotext,
    hires_target,
)
from webui.pipeline.infotext import parse_infotext
from webui.pipeline.requests import MAX_SIZE, MAX_STEPS
from webui.service import Service


@dataclass
class HiresWidgets:
    accordion: gr.Accordion
    enable: gr.Checkbox
    upscaler: gr.Dropdown
    steps: gr.Slider
    denoising_strength: gr.Slider
    scale: gr.Slider
    resize_x: gr.Slider
    resize_y: gr.Slider
    size_note: gr.Markdown

    def inputs(self) -> list[gr.components.Component]:
        """The widgets :func:`hires_from_widgets` takes, in its order."""
        return [
            self.enable,
            self.upscaler,
            self.steps,
            self.denoising_strength,
            self.scale,
            self.resize_x,
            self.resize_y,
        ]


def hires_from_widgets(
    enable: bool, upscaler: str, steps: float, denoising: float, scale: float, resize_x: float, resize_y: float
) -> HiresRequest | None:
    """The request's hires settings; None when the accordion's checkbox is off."""
    if not enable:
        return None
    return HiresRequest(
        hr_upscaler=upscaler or DEFAULT_HR_UPSCALER,
        hr_second_pass_steps=int(steps),
        denoising_strength=float(denoising),
        hr_scale=float(scale),
        hr_resize_x=int(resize_x),
        hr_resize_y=int(resize_y),
    )


def size_note(scale: float, resize_x: float, resize_y: float, width: float | None, height: float | None) -> str:
    """ "from 512x512 to 1024x1024" (A1111's note), for the current Width/Height."""
    if not width or not height:
        return ""
    hires = HiresRequest(hr_scale=float(scale), hr_resize_x=int(resize_x), hr_resize_y=int(resize_y))
    up_w, up_h, tx, ty = hires_target(int(width), int(height), hires)
    return f"from {int(width)}x{int(height)} to {up_w - tx}x{up_h - ty}"


def build_hires_accordion(service: Service, width: gr.Slider, height: gr.Slider) -> HiresWidgets:
    """Lay out the accordion (inside the caller's column) and keep its size note up to date."""
    names = [*LATENT_UPSCALE_MODES, *service.upscalers.names]
    with gr.Accordion("Hires. fix", open=False, elem_id="txt2img_hires_fix") as accordion:
        enable = gr.Checkbox(label="Enable hires. fix", value=False, elem_id="txt2img_enable_hr")
        with gr.Row():
            upscaler = gr.Dropdown(names, value=DEFAULT_HR_UPSCALER, label="Upscaler", elem_id="txt2img_hr_upscaler")
            steps = gr.Slider(0, MAX_STEPS, value=0, step=1, label="Hires steps", elem_id="txt2img_hires_steps")
            denoising = gr.Slider(
                0.0, 1.0, value=0.7, step=0.01, label="Denoising strength", elem_id="txt2img_denoising_strength"
            )
        with gr.Row():
            scale = gr.Slider(1.0, 4.0, value=2.0, step=0.05, label="Upscale by", elem_id="txt2img_hr_scale")
            resize_x = gr.Slider(0, MAX_SIZE, value=0, step=8, label="Resize width to", elem_id="txt2img_hr_resize_x")
            resize_y = gr.Slider(0, MAX_SIZE, value=0, step=8, label="Resize height to", elem_id="txt2img_hr_resize_y")
        note = gr.Markdown(size_note(2.0, 0, 0, width.value, height.value), elem_id="txt2img_hires_size")
    for widget in (scale, resize_x, resize_y, width, height):
        widget.change(size_note, [scale, resize_x, resize_y, width, height], note, show_progress="hidden")
    return HiresWidgets(accordion, enable, upscaler, steps, denoising, scale, resize_x, resize_y, note)


def pasted_hires_values(text: str, upscalers: list[str]) -> list[Any]:
    """Updates of ``[accordion, *HiresWidgets.inputs()]`` from an infotext, as A1111's paste: hires fix on and the
    accordion open when the text has ``Hires upscale`` or ``Hires resize``, else only the checkbox off (the other
    settings stay). An upscaler this app does not have keeps the current choice."""
    hires = hires_from_infotext(parse_infotext(text or ""))
    if hires is None:
        return [gr.skip(), False, *[gr.skip()] * 6]
    return [
        gr.Accordion(open=True),
        True,
        hires.hr_upscaler if hires.hr_upscaler in upscalers else gr.skip(),
        hires.hr_second_pass_steps,
        hires.denoising_strength,
        hires.hr_scale,
        hires.hr_resize_x,
        hires.hr_resize_y,
    ]


def wire_hires_paste(service: Service, hires: HiresWidgets | None, button: gr.Button, parameters: gr.Textbox) -> None:
    """PNG Info's Send to txt2img also fills the Hires. fix accordion from the image's infotext (``parameters``)."""
    if hires is None:
        return
    targets = [hires.accordion, *hires.inputs()]
    button.click(
        # The upscaler names read at each click: a model file added and refreshed since start counts.
        lambda text: pasted_hires_values(text, [*LATENT_UPSCALE_MODES, *service.upscalers.names]),
        parameters,
        targets,
        queue=False,
        api_visibility="undocumented",
        show_progress="hidden",
    )

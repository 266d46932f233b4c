"""The txt2img tab: widgets -> `GenerationRequest` -> service job, shown live; API name ``/txt2img``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr

from webui.pipeline.requests import GenerationRequest
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
from webui.ui.hires import build_hires_accordion, hires_from_widgets
from webui.ui.jobs import JobTracker
from webui.ui.lora_panel import build_lora_panel


def txt2img_request(
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
) -> GenerationRequest:
    """The request the txt2img widgets describe."""
    return GenerationRequest(
        **generation_fields(
            prompt, negative_prompt, sampler_name, scheduler, steps, cfg_scale, width, height, seed, n_iter, batch_size
        )
    )


def build_txt2img_tab(service: Service, tracker: JobTracker, model: gr.Dropdown) -> GenerationTab:
    """Lay out the tab (inside the caller's ``gr.Tab``) and wire Generate to the service."""
    name = "txt2img"
    prompt, negative, generate, interrupt, skip, tokens, enqueue = build_prompts(name)
    build_lora_panel(service, prompt, name)  # LoRA (issue 15)
    build_textual_inversion_panel(name, service)  # issue 15
    styles, _ = build_styles(name, service, prompt, negative)  # styles, variation seeds, scripts: ui/explore.py
    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            settings = build_settings(name, service, backend.find_model(service, model.value))
            variation = build_variation(name)
            hires = build_hires_accordion(service, settings["width"], settings["height"])
            explore = ExploreWidgets(*variation, styles, *build_script(name))  # A1111: the Script dropdown last
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
        **settings,
        **outputs,
        hires=hires,
    )

    def checked_request(
        model_name: str, explore_values: list[Any] | None, hires_widgets: tuple[Any, ...], *widgets: Any
    ) -> GenerationRequest:
        """The request Generate and Enqueue both send: the widgets and the Hires. fix accordion checked, then
        styles, variation and script."""
        try:
            gen_request = txt2img_request(*widgets)
            gen_request.hires = hires_from_widgets(*hires_widgets)
        except (TypeError, ValueError) as exc:
            raise gr.Error(f"Invalid settings: {exc}") from exc
        return amend_request(service, gen_request, model_name, explore_values)

    def txt2img(
        model_name: str,
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
        explore_values: list[Any] | None,
        enable_hr: bool,  # the Hires. fix accordion (webui/ui/hires.py)
        hr_upscaler: str,
        hr_steps: float,
        hr_denoising: float,
        hr_scale: float,
        hr_resize_x: float,
        hr_resize_y: float,
        request: gr.Request,
    ) -> Iterator[tuple]:
        """Generate images from a prompt; yields live progress, finally the gallery and parameters."""
        gen_request = checked_request(
            model_name, explore_values, (enable_hr, hr_upscaler, hr_steps, hr_denoising, hr_scale, hr_resize_x,
            hr_resize_y), prompt, negative_prompt, sampler_name, scheduler, steps, cfg_scale, width, height, seed,
            n_iter, batch_size,
        )  # fmt: skip
        session, owner = (request.session_hash, request.username) if request else (None, None)
        yield from run_generation(tracker, gen_request, model_name, session, owner)

    inputs = [
        model,
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
        explore.collect(),
        *hires.inputs(),
    ]
    generate.click(
        txt2img,
        inputs,
        tab.outputs(),
        api_name="txt2img",
        show_progress="minimal",
        concurrency_id="generate",
        concurrency_limit=8,
    )
    wire_common(tab, tracker)
    tab.explore = explore  # issue 17: Reuse and Send to fill its variation seeds (explore.wire_variation_...)
    wire_token_counter(tab, service, model)

    # Enqueue (#20): the same request as Generate, queued without waiting for it.
    def txt2img_enqueue(
        model_name: str,
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
        explore_values: list[Any] | None,
        enable_hr: bool,
        hr_upscaler: str,
        hr_steps: float,
        hr_denoising: float,
        hr_scale: float,
        hr_resize_x: float,
        hr_resize_y: float,
        request: gr.Request,
    ) -> str:
        gen_request = checked_request(
            model_name, explore_values, (enable_hr, hr_upscaler, hr_steps, hr_denoising, hr_scale, hr_resize_x,
            hr_resize_y), prompt, negative_prompt, sampler_name, scheduler, steps, cfg_scale, width, height, seed,
            n_iter, batch_size,
        )  # fmt: skip
        return queue_tab.enqueue(service, gen_request, model_name, request.username if request else None)

    enqueue.click(txt2img_enqueue, inputs, [tab.progress], queue=False)
    return tab

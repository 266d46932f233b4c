"""Widgets and handlers shared by the txt2img and img2img tabs.

The layout follows AUTOMATIC1111's: prompts with Generate / Interrupt / Skip on top, generation settings
on the left, gallery + parameters of the selected image on the right. Handlers only translate between
widget values and `webui.pipeline` requests/results; the work happens in the service.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

import gradio as gr
from PIL import Image

from webui.models.registry import SD1_NATIVE_SIZE
from webui.pipeline.errors import InvalidRequest
from webui.pipeline.requests import (
    MAX_BATCH_SIZE,
    MAX_CFG_SCALE,
    MAX_N_ITER,
    MAX_SIZE,
    MAX_STEPS,
    MIN_SIZE,
    SIZE_MULTIPLE,
)
from webui.service import Service
from webui.ui import backend
from webui.ui.hires import HiresWidgets
from webui.ui.jobs import JobTracker, _status_html, format_seconds
from webui.ui.model_info import token_counter_html

RANDOM_SEED = -1


class QuietEvent(TypedDict):
    """Options of the small helper events (Interrupt, Skip, seed buttons, Send to): off the queue, no spinner,
    callable by clients but left out of the API page."""

    queue: bool
    api_visibility: Literal["undocumented"]
    show_progress: Literal["hidden"]


QUIET: QuietEvent = {"queue": False, "api_visibility": "undocumented", "show_progress": "hidden"}


class SettingsWidgets(TypedDict):
    """What `build_settings` lays out, by `GenerationTab` field."""

    sampler: gr.Dropdown
    scheduler: gr.Dropdown
    steps: gr.Slider
    width: gr.Slider
    height: gr.Slider
    batch_count: gr.Slider
    batch_size: gr.Slider
    cfg_scale: gr.Slider
    seed: gr.Number
    random_seed: gr.Button
    reuse_seed: gr.Button
    size_hint: gr.Markdown


class OutputWidgets(TypedDict):
    """What `build_outputs` lays out, by `GenerationTab` field."""

    progress: gr.HTML
    preview: gr.Image
    gallery: gr.Gallery
    send_to_img2img: gr.Button
    send_to_inpaint: gr.Button
    info: gr.Textbox
    results: gr.State
    selected: gr.State


@dataclass
class ShownResult:
    """The images currently in a tab's gallery, with what is needed to reuse them."""

    images: list[Image.Image] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)
    subseeds: list[int] = field(default_factory=list)  # per image when variation seeds were used, else empty

    def subseed(self, index: int) -> int | None:
        """The variation seed image ``index`` was made with (None: made without variation seeds)."""
        return self.subseeds[index] if 0 <= index < len(self.subseeds) and self.subseeds[index] >= 0 else None

    def infotext(self, index: int) -> str:
        return self.infotexts[index] if 0 <= index < len(self.infotexts) else ""

    def seed(self, index: int) -> int:
        return self.seeds[index] if 0 <= index < len(self.seeds) else RANDOM_SEED

    def image(self, index: int) -> Image.Image | None:
        return self.images[index] if 0 <= index < len(self.images) else None


@dataclass
class GenerationTab:
    """The components of one generation tab (txt2img or img2img)."""

    name: str
    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    generate: gr.Button
    interrupt: gr.Button
    skip: gr.Button
    sampler: gr.Dropdown
    scheduler: gr.Dropdown
    steps: gr.Slider
    cfg_scale: gr.Slider
    width: gr.Slider
    height: gr.Slider
    seed: gr.Number
    random_seed: gr.Button
    reuse_seed: gr.Button
    batch_count: gr.Slider
    batch_size: gr.Slider
    gallery: gr.Gallery
    preview: gr.Image
    progress: gr.HTML
    info: gr.Textbox
    send_to_img2img: gr.Button
    send_to_inpaint: gr.Button
    results: gr.State
    selected: gr.State
    tokens: gr.HTML | None = None
    denoising_strength: gr.Slider | None = None
    size_hint: gr.Markdown | None = None
    explore: Any = None  # webui.ui.explore.ExploreWidgets: variation seeds, styles, script (issue 17)
    hires: HiresWidgets | None = None  # txt2img's Hires. fix accordion (issue 16), filled by Send to txt2img

    def parameter_components(self) -> list[gr.components.Component]:
        """The widgets an infotext fills in (PNG Info / Send to), in `request_widget_values` order."""
        return [
            self.prompt,
            self.negative_prompt,
            self.sampler,
            self.scheduler,
            self.steps,
            self.cfg_scale,
            self.width,
            self.height,
            self.seed,
        ]

    def outputs(self) -> list[gr.components.Component]:
        """What a generation event updates, in `GenerationOutputs` order."""
        return [self.gallery, self.info, self.progress, self.preview, self.results, self.selected]


def build_prompts(tab: str) -> tuple[gr.Textbox, gr.Textbox, gr.Button, gr.Button, gr.Button, gr.HTML, gr.Button]:
    """Prompt and negative prompt on the left; Generate, Interrupt / Skip and the token counter on the right."""
    with gr.Row(equal_height=False):
        with gr.Column(scale=6):
            prompt = gr.Textbox(
                value="",
                label="Prompt",
                lines=3,
                placeholder="Prompt",
                elem_id=f"{tab}_prompt",
            )
            negative = gr.Textbox(
                value="",
                label="Negative prompt",
                lines=2,
                placeholder="Negative prompt",
                elem_id=f"{tab}_neg_prompt",
            )
        with gr.Column(scale=1, min_width=160):
            generate = gr.Button("Generate", variant="primary", elem_id=f"{tab}_generate")
            with gr.Row():
                interrupt = gr.Button("Interrupt", variant="stop", size="sm", elem_id=f"{tab}_interrupt")
                skip = gr.Button("Skip", size="sm", elem_id=f"{tab}_skip")
            # Queue the job and keep working: it runs when its turn comes, see the Queue tab (#20).
            enqueue = gr.Button("Enqueue", size="sm", elem_id=f"{tab}_enqueue")
            tokens = gr.HTML("", elem_id=f"{tab}_token_counter")
    return prompt, negative, generate, interrupt, skip, tokens, enqueue


# Sides above this many times the model's native side get a warning with the estimated time.
OVERSIZE_FACTOR = 2


def model_native_size(model: backend.ModelChoice | None) -> tuple[int, int]:
    """The size the model was trained at, as its models.yaml entry says (SD 1.x's 512x512 if it does not)."""
    return (
        (model.width if model else None) or SD1_NATIVE_SIZE[0],
        (model.height if model else None) or SD1_NATIVE_SIZE[1],
    )


def size_infos(model: backend.ModelChoice | None) -> tuple[str, str]:
    """The Width and Height sliders' info line: the model's native size (labels stay A1111's)."""
    native_w, native_h = model_native_size(model)
    return f"native {native_w}", f"native {native_h}"


def size_updates(model: backend.ModelChoice | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Width and Height slider updates naming ``model``'s native size: for the model dropdown's change handler."""
    width_info, height_info = size_infos(model)
    return gr.update(info=width_info), gr.update(info=height_info)


def size_warning(service: Service, model: backend.ModelChoice | None, width: int, height: int, steps: int) -> str:
    """A warning for sizes far above the model's native one, with the time it would take on this machine.

    Empty up to :data:`OVERSIZE_FACTOR` times the native side: a large job holds the one shared queue for
    everybody, and on a small model the result is seldom what people expect.
    """
    native_w, native_h = model_native_size(model)
    width, height, steps = int(width), int(height), int(steps)
    if width <= OVERSIZE_FACTOR * native_w and height <= OVERSIZE_FACTOR * native_h:
        return ""
    ratio = width * height / (native_w * native_h)
    size = f"{width}x{height} is {ratio:.0f}x the native size ({native_w}x{native_h})"
    seconds = service.estimate_seconds(width, height, steps)
    if seconds is None:
        return f"⚠ {size}: it may take long, and it holds the shared queue (no job has run yet to time this machine)."
    return f"⚠ {size}: about {format_seconds(seconds)} on this machine, holding the shared queue."


def build_settings(tab: str, service: Service, model: backend.ModelChoice | None) -> SettingsWidgets:
    """Sampler, schedule, steps, CFG, size, seed and batch widgets, labelled as in AUTOMATIC1111."""
    samplers = backend.sampler_names(service)
    default_sampler = model.sampler if model and model.sampler in samplers else None
    if default_sampler is None:
        default_sampler = next((s for s in samplers if s.lower() == "euler a"), samplers[0] if samplers else None)
    width, height = model_native_size(model)
    with gr.Row():
        sampler = gr.Dropdown(samplers, value=default_sampler, label="Sampler", elem_id=f"{tab}_sampler")
        schedules = backend.schedule_names(service)
        default_schedule = model.scheduler if model and model.scheduler in schedules else schedules[0]
        scheduler = gr.Dropdown(schedules, value=default_schedule, label="Schedule type", elem_id=f"{tab}_scheduler")
    steps = gr.Slider(
        1,
        MAX_STEPS,
        value=(model.steps if model and model.steps else 20),
        step=1,
        label="Steps",
        elem_id=f"{tab}_steps",
    )
    with gr.Row():
        width_info, height_info = size_infos(model)
        width_w = gr.Slider(
            MIN_SIZE, MAX_SIZE, value=width, step=SIZE_MULTIPLE, label="Width", info=width_info, elem_id=f"{tab}_width"
        )
        height_w = gr.Slider(
            MIN_SIZE,
            MAX_SIZE,
            value=height,
            step=SIZE_MULTIPLE,
            label="Height",
            info=height_info,
            elem_id=f"{tab}_height",
        )
    size_hint = gr.Markdown("", elem_id=f"{tab}_size_hint")
    with gr.Row():
        batch_count = gr.Slider(1, MAX_N_ITER, value=1, step=1, label="Batch count", elem_id=f"{tab}_batch_count")
        batch_size = gr.Slider(1, MAX_BATCH_SIZE, value=1, step=1, label="Batch size", elem_id=f"{tab}_batch_size")
    cfg = model.cfg_scale if model and model.cfg_scale else 7.0
    cfg_scale = gr.Slider(1.0, MAX_CFG_SCALE, value=cfg, step=0.5, label="CFG scale", elem_id=f"{tab}_cfg_scale")
    with gr.Row(equal_height=True):
        seed = gr.Number(
            value=RANDOM_SEED, label="Seed", precision=0, minimum=-1, scale=4, min_width=120, elem_id=f"{tab}_seed"
        )
        # Words, not 🎲/♻️: those render as empty boxes where no emoji font is installed. Tooltips: app.TOOLTIPS.
        random_seed = gr.Button("Random", size="sm", scale=0, min_width=72, elem_id=f"{tab}_random_seed")
        reuse_seed = gr.Button("Reuse", size="sm", scale=0, min_width=72, elem_id=f"{tab}_reuse_seed")

    def show_size_warning(width: float, height: float, steps: float) -> str:
        # The current model: the checkpoint dropdown makes its choice current (select_model).
        current = backend.find_model(service, service.current_model_name) if service.current_model_name else model
        return size_warning(service, current, int(width), int(height), int(steps))

    for widget in (width_w, height_w, steps):
        widget.change(show_size_warning, [width_w, height_w, steps], size_hint, **QUIET)
    return {
        "size_hint": size_hint,
        "sampler": sampler,
        "scheduler": scheduler,
        "steps": steps,
        "width": width_w,
        "height": height_w,
        "batch_count": batch_count,
        "batch_size": batch_size,
        "cfg_scale": cfg_scale,
        "seed": seed,
        "random_seed": random_seed,
        "reuse_seed": reuse_seed,
    }


def build_outputs(tab: str) -> OutputWidgets:
    """Live preview + status line, the gallery, the selected image's parameters and Send to img2img / inpaint."""
    progress = gr.HTML(value="", elem_id=f"{tab}_progress")
    preview = gr.Image(label="Preview", interactive=False, visible=False, elem_id=f"{tab}_preview", height=320)
    gallery = gr.Gallery(
        label="Output",
        columns=4,
        height=480,
        object_fit="contain",
        format="png",
        interactive=False,
        elem_id=f"{tab}_gallery",
    )
    with gr.Row():
        send_to_img2img = gr.Button("Send to img2img", size="sm", elem_id=f"{tab}_send_to_img2img")
        send_to_inpaint = gr.Button("Send to inpaint", size="sm", elem_id=f"{tab}_send_to_inpaint")
    info = gr.Textbox(label="Parameters", lines=4, interactive=False, elem_id=f"{tab}_info", buttons=["copy"])
    return {
        "progress": progress,
        "preview": preview,
        "gallery": gallery,
        "send_to_img2img": send_to_img2img,
        "send_to_inpaint": send_to_inpaint,
        "info": info,
        "results": gr.State(ShownResult()),
        "selected": gr.State(0),
    }


def gallery_items(result: Any) -> list[tuple[Image.Image, str]]:
    """Gallery entries: each image carries its infotext in a PNG ``parameters`` chunk (kept on download)."""
    items = []
    for i, image in enumerate(result.images):
        infotext = result.infotexts[i] if i < len(result.infotexts) else ""
        shown = image.copy()
        if infotext:
            shown.info["parameters"] = infotext
        seed = result.seeds[i] if i < len(result.seeds) else None
        items.append((shown, f"seed {seed}" if seed is not None else ""))
    return items


def readable_error(exc: BaseException) -> gr.Error:
    """A `gr.Error` whose message a user can act on."""
    if isinstance(exc, InvalidRequest):
        return gr.Error(f"Invalid {exc.field}: {exc.message}", title="Invalid settings")
    message = str(exc) or type(exc).__name__
    return gr.Error(message, title=f"Generation failed ({type(exc).__name__})")


def run_generation(
    tracker: JobTracker, request: Any, model_name: str | None, session: str | None, owner: str | None = None
) -> Iterator[tuple]:
    """The body of a Generate handler: yields `GenerationTab.outputs()` updates until the images arrive.

    ``owner``: the logged-in user name (None without a login), shown to others in the queue line.

    The request is checked where every request is, when the service queues it: a bad one raises
    `InvalidRequest` from `tracker.follow`, shown like any other failure.
    """
    skip = gr.skip()
    try:
        for update in tracker.follow(request, model_name, session, owner):
            if update.result is None:
                preview = gr.Image(value=update.preview, visible=True) if update.preview is not None else skip
                yield skip, skip, update.html, preview, skip, skip
                continue
            result = update.result
            shown = ShownResult(list(result.images), list(result.seeds), list(result.infotexts))
            if len(result.subseeds) == len(result.images):  # variation seeds (issue 17): one per image
                shown.subseeds = list(result.subseeds)
            yield (
                gallery_items(result),
                shown.infotext(0),
                update.html,
                gr.Image(value=None, visible=False),
                shown,
                0,
            )
    except gr.Error:
        raise
    except Exception as exc:  # every failure ends the spinner with a readable message
        error = readable_error(exc)
        yield skip, skip, _status_html(f"Error: {error.message}", None, "error"), gr.Image(visible=False), skip, skip
        raise error from exc


def generation_fields(
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
) -> dict[str, Any]:
    """The request fields both tabs share, from widget values (numbers arrive from Gradio as floats)."""
    return {
        "prompt": prompt or "",
        "negative_prompt": negative_prompt or "",
        "sampler_name": sampler_name or "",
        "scheduler": scheduler or "Automatic",
        "steps": int(steps),
        "cfg_scale": float(cfg_scale),
        "width": int(width),
        "height": int(height),
        "seed": RANDOM_SEED if seed is None else int(seed),
        "n_iter": int(n_iter),
        "batch_size": int(batch_size),
    }


def request_widget_values(request: Any, samplers: list[str]) -> list[Any]:
    """Widget values for `GenerationTab.parameter_components()` from a request (e.g. parsed from a PNG)."""
    sampler = next((s for s in samplers if s.lower() == str(request.sampler_name).lower()), gr.skip())
    return [
        request.prompt,
        request.negative_prompt,
        sampler,
        request.scheduler,
        request.steps,
        request.cfg_scale,
        request.width or gr.skip(),
        request.height or gr.skip(),
        request.seed,
    ]


def wire_common(tab: GenerationTab, tracker: JobTracker) -> None:
    """Interrupt / Skip (the session's own job), seed buttons, gallery selection."""

    def interrupt(request: gr.Request) -> None:
        tracker.interrupt(request.session_hash if request else None)

    def skip(request: gr.Request) -> None:
        tracker.skip(request.session_hash if request else None)

    # Named so that a gradio_client script can stop its own job (same client = same session).
    tab.interrupt.click(interrupt, None, None, api_name=f"{tab.name}_interrupt", **QUIET)
    tab.skip.click(skip, None, None, api_name=f"{tab.name}_skip", **QUIET)
    tab.random_seed.click(lambda: RANDOM_SEED, None, tab.seed, **QUIET)
    tab.reuse_seed.click(lambda shown, index: shown.seed(index), [tab.results, tab.selected], tab.seed, **QUIET)

    def select(shown: ShownResult, evt: gr.SelectData) -> tuple[int, str]:
        return evt.index, shown.infotext(evt.index)

    tab.gallery.select(select, tab.results, [tab.selected, tab.info], **QUIET)


def wire_token_counter(tab: GenerationTab, service: Service, model: gr.Dropdown) -> None:
    """Show "Prompt: 12/75 tokens" (A1111's counter) while typing, "(3 chunks)" past 75 tokens and a tooltip
    on how chunks are encoded; blank until the model is loaded, so it is counted again once images arrive (the
    first Generate loads the model)."""

    def count(model_name: str | None, prompt: str, negative: str, steps: float) -> str:
        return token_counter_html(service, model_name, prompt, negative, int(steps or 1))

    inputs = [model, tab.prompt, tab.negative_prompt, tab.steps]
    for source in (tab.prompt, tab.negative_prompt, tab.gallery):
        source.change(
            count,
            inputs,
            tab.tokens,
            queue=False,
            show_progress="hidden",
            trigger_mode="always_last",
            api_visibility="undocumented",
        )

"""The exploring tools of a generation tab: variation seeds ("Extra" by the seed), prompt styles and the
"Script" dropdown (X/Y/Z plot, prompts from file or textbox), laid out as in AUTOMATIC1111.

A tab builds :class:`ExploreWidgets` from :func:`build_styles`, :func:`build_variation` and :func:`build_script`,
adds :meth:`ExploreWidgets.collect` (a ``gr.State`` that follows the widgets' values, so that the Generate
endpoint's API stays as it was) to its Generate inputs and passes it to :func:`amend_request`, which returns the
request with the variation fields set, the chosen styles applied to the prompts and the script planned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import gradio as gr

from webui.pipeline.errors import InvalidRequest
from webui.pipeline.infotext import parse_infotext, request_from_infotext
from webui.pipeline.requests import GenerationRequest
from webui.pipeline.script_plan import PROMPTS_FROM_FILE, XYZ_PLOT
from webui.pipeline.styles import PromptStyle, apply_styles, load_styles, save_style
from webui.scripts import plan_script
from webui.scripts.xyz_plot import IMG2IMG_AXES, SUPPORTED, TXT2IMG_AXES
from webui.service import Service
from webui.ui.common import QUIET, GenerationTab, ShownResult
from webui.ui.pnginfo import PngInfoTab

NO_SCRIPT = "None"
SCRIPT_LABELS = {"X/Y/Z plot": XYZ_PLOT, "Prompts from file or textbox": PROMPTS_FROM_FILE}


@dataclass
class ExploreWidgets:
    """The widgets, in the order of :meth:`inputs` (what :func:`amend_request` receives)."""

    extra: gr.Checkbox
    subseed: gr.Number
    subseed_strength: gr.Slider
    resize_w: gr.Slider
    resize_h: gr.Slider
    styles: gr.Dropdown
    script: gr.Dropdown
    xyz: list[
        Any
    ]  # x type, x values, y type, y values, z type, z values, legend, lone images, sub grids, keep -1, margin
    prompts: list[Any]  # iterate seed, same random seed, prompt position, text

    def collect(self) -> gr.State:
        """A state holding the widgets' current values (None until one changes: nothing to amend)."""
        state = gr.State(None)
        widgets = self.inputs()
        for widget in widgets:
            widget.change(lambda *values: list(values), widgets, state, queue=False, show_progress="hidden")
        return state

    def variation(self) -> list[Any]:
        """The "Extra" checkbox and the variation-seed fields, in :func:`variation_widget_values` order."""
        return [self.extra, self.subseed, self.subseed_strength, self.resize_w, self.resize_h]

    def inputs(self) -> list[Any]:
        return [
            self.extra,
            self.subseed,
            self.subseed_strength,
            self.resize_w,
            self.resize_h,
            self.styles,
            self.script,
            *self.xyz,
            *self.prompts,
        ]


def style_names(service: Service) -> list[str]:
    return load_styles(service.styles_file).names


def build_variation(tab: str) -> tuple[gr.Checkbox, gr.Number, gr.Slider, gr.Slider, gr.Slider]:
    """The "Extra" checkbox and, shown when ticked, A1111's variation-seed fields (call it by the seed row)."""
    extra = gr.Checkbox(label="Extra", value=False, elem_id=f"{tab}_subseed_show")
    with gr.Group(visible=False, elem_id=f"{tab}_seed_extras") as group:
        with gr.Row():
            subseed = gr.Number(label="Variation seed", value=-1, precision=0, minimum=-1, elem_id=f"{tab}_subseed")
            strength = gr.Slider(
                0, 1, value=0, step=0.01, label="Variation strength", elem_id=f"{tab}_subseed_strength"
            )
        with gr.Row():
            resize_w = gr.Slider(
                0, 2048, value=0, step=8, label="Resize seed from width", elem_id=f"{tab}_seed_resize_w"
            )
            resize_h = gr.Slider(
                0, 2048, value=0, step=8, label="Resize seed from height", elem_id=f"{tab}_seed_resize_h"
            )
    extra.change(lambda on: gr.Group(visible=bool(on)), extra, group, queue=False, show_progress="hidden")
    return extra, subseed, strength, resize_w, resize_h


def build_styles(
    tab: str, service: Service, prompt: gr.Textbox, negative: gr.Textbox
) -> tuple[gr.Dropdown, gr.Markdown]:
    """Styles multi-select, refresh, "apply to prompt" and "save current prompt as style" (by the prompt)."""
    with gr.Row(equal_height=True):
        styles = gr.Dropdown(
            style_names(service), value=[], multiselect=True, label="Styles", scale=4, elem_id=f"{tab}_styles"
        )
        refresh = gr.Button("Refresh", size="sm", scale=0, min_width=72, elem_id=f"{tab}_styles_refresh")
        apply = gr.Button("Apply to prompt", size="sm", scale=0, min_width=72, elem_id=f"{tab}_styles_apply")
    with gr.Row(equal_height=True):
        name = gr.Textbox(label="New style name", scale=3, elem_id=f"{tab}_style_name")
        save = gr.Button("Save current prompt as style", size="sm", scale=1, elem_id=f"{tab}_style_save")
    status = gr.Markdown("", elem_id=f"{tab}_styles_status")

    def problems_text() -> str:
        problems = load_styles(service.styles_file).problems
        return "".join(f"⚠ {service.styles_file.name} {p}  \n" for p in problems)

    def do_refresh(chosen: list[str]) -> tuple[Any, str]:
        names = style_names(service)
        return gr.Dropdown(choices=names, value=[n for n in chosen or [] if n in names]), problems_text()

    def do_apply(chosen: list[str], text: str, negative_text: str) -> tuple[str, str, list[str], str]:
        try:
            picked = load_styles(service.styles_file).get(list(chosen or []))
        except KeyError as exc:
            raise gr.Error(str(exc).strip("\"'")) from exc
        new_prompt, new_negative = apply_styles(text or "", negative_text or "", picked)
        return new_prompt, new_negative, [], problems_text()

    def do_save(style: str, text: str, negative_text: str, chosen: list[str]) -> tuple[Any, str]:
        try:
            saved = save_style(service.styles_file, PromptStyle(style.strip(), text or "", negative_text or ""))
        except (ValueError, OSError) as exc:
            raise gr.Error(str(exc)) from exc
        return gr.Dropdown(choices=saved.names, value=chosen or []), f"Saved style {style.strip()!r}."

    quiet: dict[str, Any] = {"queue": False, "show_progress": "hidden", "api_visibility": "undocumented"}
    refresh.click(do_refresh, styles, [styles, status], **quiet)
    apply.click(do_apply, [styles, prompt, negative], [prompt, negative, styles, status], **quiet)
    save.click(do_save, [name, prompt, negative, styles], [styles, status], **quiet)
    return styles, status


def build_script(tab: str) -> tuple[gr.Dropdown, list[Any], list[Any]]:
    """A1111's "Script" dropdown and the widgets of each script (shown when chosen)."""
    axes = [a for a in (TXT2IMG_AXES if tab == "txt2img" else IMG2IMG_AXES) if a in SUPPORTED]
    script = gr.Dropdown([NO_SCRIPT, *SCRIPT_LABELS], value=NO_SCRIPT, label="Script", elem_id=f"{tab}_script")
    with gr.Group(visible=False, elem_id=f"{tab}_script_xyz") as xyz_group:
        xyz: list[Any] = []
        for axis, default in (("X", "Seed"), ("Y", "Nothing"), ("Z", "Nothing")):
            with gr.Row():
                xyz.append(
                    gr.Dropdown(axes, value=default, label=f"{axis} type", elem_id=f"{tab}_xyz_{axis.lower()}_type")
                )
                xyz.append(gr.Textbox(label=f"{axis} values", elem_id=f"{tab}_xyz_{axis.lower()}_values", scale=3))
        with gr.Row():
            xyz.append(gr.Checkbox(label="Draw legend", value=True, elem_id=f"{tab}_xyz_draw_legend"))
            xyz.append(gr.Checkbox(label="Include Sub Images", value=False, elem_id=f"{tab}_xyz_include_lone_images"))
            xyz.append(gr.Checkbox(label="Include Sub Grids", value=False, elem_id=f"{tab}_xyz_include_sub_grids"))
            xyz.append(gr.Checkbox(label="Keep -1 for seeds", value=False, elem_id=f"{tab}_xyz_no_fixed_seeds"))
        xyz.append(gr.Slider(0, 500, value=0, step=2, label="Grid margins (px)", elem_id=f"{tab}_xyz_margin_size"))
    with gr.Group(visible=False, elem_id=f"{tab}_script_prompts") as prompts_group:
        prompts: list[Any] = [
            gr.Checkbox(label="Iterate seed every line", value=False, elem_id=f"{tab}_prompts_iterate"),
            gr.Checkbox(label="Use same random seed for all lines", value=False, elem_id=f"{tab}_prompts_same_seed"),
            gr.Radio(["start", "end"], value="start", label="Insert prompts at the", elem_id=f"{tab}_prompts_position"),
            gr.Textbox(label="List of prompt inputs", lines=4, elem_id=f"{tab}_prompts_text"),
        ]

    def show(choice: str) -> tuple[Any, Any]:
        return gr.Group(visible=choice == "X/Y/Z plot"), gr.Group(visible=choice == "Prompts from file or textbox")

    script.change(show, script, [xyz_group, prompts_group], queue=False, show_progress="hidden")
    return script, xyz, prompts


RequestT = TypeVar("RequestT", bound=GenerationRequest)


def amend_request(
    service: Service, request: RequestT, model_name: str | None, values: Sequence[Any] | None
) -> RequestT:
    """``request`` with the explore widgets' ``values`` (in :meth:`ExploreWidgets.inputs` order) applied."""
    if not values:
        return request
    extra, subseed, strength, resize_w, resize_h, styles, script, *rest = values
    xyz, prompts = rest[:11], rest[11:15]
    if extra:
        request = replace(
            request,
            subseed=-1 if subseed is None else int(subseed),
            subseed_strength=float(strength or 0),
            seed_resize_from_w=int(resize_w or 0),
            seed_resize_from_h=int(resize_h or 0),
        )
    if styles:
        try:
            picked = load_styles(service.styles_file).get(list(styles))
        except KeyError as exc:
            raise gr.Error(str(exc).strip("\"'")) from exc
        prompt, negative = apply_styles(request.prompt, request.negative_prompt, picked)
        request = replace(request, prompt=prompt, negative_prompt=negative)
    name = SCRIPT_LABELS.get(script or NO_SCRIPT)
    if name is None:
        return request
    if name == XYZ_PLOT:
        x_type, x_values, y_type, y_values, z_type, z_values, legend, lone, sub_grids, keep, margin = xyz
        args: list[Any] = [x_type, x_values, [], y_type, y_values, [], z_type, z_values, [], legend, lone, sub_grids]
        args += [keep, False, False, False, int(margin or 0), True]
    else:
        args = list(prompts)

    def registry_name(given: str) -> str:
        try:
            return service.registry.get(given).name
        except LookupError:
            raise InvalidRequest("script_args", f"unknown checkpoint {given!r}") from None

    try:
        plan = plan_script(name, args, request, model_name, registry_name)
    except InvalidRequest as exc:
        raise gr.Error(f"{script}: {exc.message}", title="Invalid script settings") from exc
    return replace(request, script=plan)


# --- Reuse and Send to: the variation seeds follow the seed ----------------------------------------------------

# A1111 ticks "Extra" when a pasted infotext has either key (its seed row's infotext fields).
VARIATION_KEYS = ("Variation seed", "Seed resize from-1")


def variation_widget_values(infotext: str) -> list[Any]:
    """Values for :meth:`ExploreWidgets.variation` from an infotext, as A1111 pastes them: "Extra" ticked and
    the fields filled when the image was made with a variation seed or a seed resize; otherwise "Extra"
    unticked (the image was made without them) and the fields left as they are."""
    if not infotext:
        return [gr.skip()] * 5
    params = parse_infotext(infotext)
    if not any(key in params for key in VARIATION_KEYS):
        return [False, *[gr.skip()] * 4]
    request = request_from_infotext(params)
    resize_w, resize_h = max(request.seed_resize_from_w, 0), max(request.seed_resize_from_h, 0)
    return [True, request.subseed, request.subseed_strength, resize_w, resize_h]


def reused_variation_seed(shown: ShownResult, index: int) -> list[Any]:
    """What the seed row's Reuse button puts in "Extra" and Variation seed, beside the seed it reuses: the
    selected image's variation seed (A1111's ``all_subseeds[index]``), or nothing when it had none."""
    subseed = shown.subseed(index)
    return [gr.skip(), gr.skip()] if subseed is None else [True, subseed]


def wire_variation_reuse_and_paste(txt2img: GenerationTab, img2img: GenerationTab, pnginfo: PngInfoTab) -> None:
    """Reuse fills the variation seed too; Send to (PNG Info, a gallery) fills the variation fields of the tab
    it sends to. Extra handlers on the same buttons, so that the handlers that fill the other widgets stay as
    they are."""
    for tab in (txt2img, img2img):
        tab.reuse_seed.click(
            reused_variation_seed, [tab.results, tab.selected], [tab.explore.extra, tab.explore.subseed], **QUIET
        )

    def from_gallery(shown: ShownResult, index: int) -> list[Any]:
        return variation_widget_values(shown.infotext(index)) if shown.image(index) is not None else [gr.skip()] * 5

    for source in (txt2img, img2img):
        for button in (source.send_to_img2img, source.send_to_inpaint):
            button.click(from_gallery, [source.results, source.selected], img2img.explore.variation(), **QUIET)
    pnginfo.send_to_txt2img.click(variation_widget_values, pnginfo.parameters, txt2img.explore.variation(), **QUIET)
    for button in (pnginfo.send_to_img2img, pnginfo.send_to_inpaint):
        button.click(variation_widget_values, pnginfo.parameters, img2img.explore.variation(), **QUIET)

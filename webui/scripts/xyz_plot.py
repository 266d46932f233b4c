"""AUTOMATIC1111's "X/Y/Z plot" script: one image per combination of up to three axes' values.

``script_args`` as A1111 1.10's API takes them (the positional values of its script's widgets)::

    [x_type, x_values, x_values_dropdown, y_type, y_values, y_values_dropdown, z_type, z_values,
     z_values_dropdown, draw_legend, include_lone_images, include_sub_grids, no_fixed_seeds,
     vary_seeds_x, vary_seeds_y, vary_seeds_z, margin_size, csv_mode]

A shorter list takes A1111's defaults for what is missing. An axis type is the index into that mode's axis
list (:data:`TXT2IMG_AXES`, :data:`IMG2IMG_AXES`: A1111 1.10's order, so existing clients' indices mean the
same) or its label. Values are A1111's syntax: a comma list (CSV quoting for values with commas), integer
ranges ``1-5``, ``1-10 (+2)``, ``10-1 (-3)``, counted ranges ``1-10 [5]``, and the same for decimals. For an
axis with choices (sampler, checkpoint, schedule) the dropdown list is used when given, else the text.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from webui.pipeline.errors import InvalidRequest
from webui.pipeline.requests import GenerationRequest
from webui.pipeline.script_plan import XYZ_PLOT, GridLayout, ScriptCell, ScriptPlan
from webui.pipeline.seeds import resolve_seed

ARGS = "script_args"

# (label, value type, modes); A1111 1.10's axis_options in order, checked against v1.10.1 (commit 82a973c0): it
# has no "Skip Early CFG", which came to A1111's dev branch later. ``modes`` says in which tab's list it is.
BOTH, TXT2IMG, IMG2IMG = ("txt2img", "img2img"), ("txt2img",), ("img2img",)
_A1111_AXES: tuple[tuple[str, type, tuple[str, ...]], ...] = (
    ("Nothing", str, BOTH),
    ("Seed", int, BOTH),
    ("Var. seed", int, BOTH),
    ("Var. strength", float, BOTH),
    ("Steps", int, BOTH),
    ("Hires steps", int, TXT2IMG),
    ("CFG Scale", float, BOTH),
    ("Image CFG Scale", float, IMG2IMG),
    ("Prompt S/R", str, BOTH),
    ("Prompt order", str, BOTH),
    ("Sampler", str, BOTH),  # A1111 has a txt2img and an img2img entry at this place
    ("Hires sampler", str, TXT2IMG),
    ("Checkpoint name", str, BOTH),
    ("Negative Guidance minimum sigma", float, BOTH),
    ("Sigma Churn", float, BOTH),
    ("Sigma min", float, BOTH),
    ("Sigma max", float, BOTH),
    ("Sigma noise", float, BOTH),
    ("Schedule type", str, BOTH),
    ("Schedule min sigma", float, BOTH),
    ("Schedule max sigma", float, BOTH),
    ("Schedule rho", float, BOTH),
    ("Beta schedule alpha", float, BOTH),
    ("Beta schedule beta", float, BOTH),
    ("Eta", float, BOTH),
    ("Clip skip", int, BOTH),
    ("Denoising", float, BOTH),
    ("Initial noise multiplier", float, BOTH),
    ("Extra noise", float, BOTH),
    ("Hires upscaler", str, TXT2IMG),
    ("Cond. Image Mask Weight", float, IMG2IMG),
    ("VAE", str, BOTH),
    ("Styles", str, BOTH),
    ("UniPC Order", int, BOTH),
    ("Face restore", str, BOTH),
    ("Token merging ratio", float, BOTH),
    ("Token merging ratio high-res", float, BOTH),
    ("Always discard next-to-last sigma", str, BOTH),
    ("SGM noise multiplier", str, BOTH),
    ("Refiner checkpoint", str, BOTH),
    ("Refiner switch at", float, BOTH),
    ("RNG source", str, BOTH),
    ("FP8 mode", str, BOTH),
    ("Size", str, BOTH),
)
TXT2IMG_AXES = tuple(label for label, _, modes in _A1111_AXES if "txt2img" in modes)
IMG2IMG_AXES = tuple(label for label, _, modes in _A1111_AXES if "img2img" in modes)
AXIS_TYPES = {label: kind for label, kind, _ in _A1111_AXES}
# What this app implements; the other labels keep their index (so clients' numbers mean the same) and are
# refused by name. Axes whose values are names (the UI offers them as a list).
SUPPORTED = (
    "Nothing",
    "Seed",
    "Var. seed",
    "Var. strength",
    "Steps",
    "CFG Scale",
    "Prompt S/R",
    "Sampler",
    "Checkpoint name",
    "Schedule type",
    "Eta",
    "Clip skip",
    "Denoising",
    "Size",
)
CHOICE_AXES = ("Sampler", "Checkpoint name", "Schedule type")
# A1111's cost: an axis that is slow to change runs in the outer loop (a checkpoint loads once per value).
COSTS = {"Checkpoint name": 1.0}

_INT_RANGE = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\(([+-]\d+)\s*\))?\s*")
_FLOAT_RANGE = re.compile(r"\s*([+-]?\s*\d+(?:.\d*)?)\s*-\s*([+-]?\s*\d+(?:.\d*)?)(?:\s*\(([+-]\d+(?:.\d*)?)\s*\))?\s*")
_INT_COUNT = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\[(\d+)\s*\])?\s*")
_FLOAT_COUNT = re.compile(r"\s*([+-]?\s*\d+(?:.\d*)?)\s*-\s*([+-]?\s*\d+(?:.\d*)?)(?:\s*\[(\d+(?:.\d*)?)\s*\])?\s*")


@dataclass(frozen=True)
class XYZArgs:
    """A1111's script arguments, by name (see the module docstring for their order)."""

    x_type: int | str = 1
    x_values: str = ""
    x_values_dropdown: tuple[str, ...] = ()
    y_type: int | str = 0
    y_values: str = ""
    y_values_dropdown: tuple[str, ...] = ()
    z_type: int | str = 0
    z_values: str = ""
    z_values_dropdown: tuple[str, ...] = ()
    draw_legend: bool = True
    include_lone_images: bool = False
    include_sub_grids: bool = False
    no_fixed_seeds: bool = False
    vary_seeds_x: bool = False
    vary_seeds_y: bool = False
    vary_seeds_z: bool = False
    margin_size: int = 0
    csv_mode: bool = False

    @classmethod
    def from_script_args(cls, args: Sequence[Any]) -> XYZArgs:
        names = list(cls.__dataclass_fields__)
        if len(args) > len(names):
            raise InvalidRequest(ARGS, f"x/y/z plot takes at most {len(names)} arguments, got {len(args)}")
        values: dict[str, Any] = {}
        for name, value in zip(names, args, strict=False):
            if name.endswith("_dropdown"):
                value = tuple(str(v) for v in value or ())
            elif name.endswith("_values"):
                value = "" if value is None else str(value)
            elif name == "margin_size":
                value = int(value or 0)
            elif not name.endswith("_type"):
                value = bool(value)
            values[name] = value
        return cls(**values)


def split_values(text: str) -> list[str]:
    """A1111's value list: CSV (quoted values may hold commas), stripped, empty ones dropped."""
    rows = csv.reader(io.StringIO(text), skipinitialspace=True)
    return [value.strip() for row in rows for value in row if value.strip()]


def expand_values(label: str, values: list[str]) -> list[Any]:
    """The axis values with A1111's ranges expanded and converted to the axis type.

    Raises:
        InvalidRequest: a value that is not of the axis type.
    """
    kind = AXIS_TYPES[label]
    out: list[Any] = []
    for value in values:
        if kind is int and (m := _INT_RANGE.fullmatch(value)) is not None:
            start, end = int(m.group(1).replace(" ", "")), int(m.group(2).replace(" ", "")) + 1
            out += list(range(start, end, int(m.group(3)) if m.group(3) else 1))
        elif kind is int and (m := _INT_COUNT.fullmatch(value)) is not None:
            start, end = int(m.group(1).replace(" ", "")), int(m.group(2).replace(" ", ""))
            out += [int(v) for v in np.linspace(start, end, int(m.group(3)) if m.group(3) else 1).tolist()]
        elif kind is float and (m := _FLOAT_RANGE.fullmatch(value)) is not None:
            low, high = float(m.group(1).replace(" ", "")), float(m.group(2).replace(" ", ""))
            step = float(m.group(3)) if m.group(3) else 1.0
            out += np.arange(low, high + step, step).tolist()
        elif kind is float and (m := _FLOAT_COUNT.fullmatch(value)) is not None:
            low, high = float(m.group(1).replace(" ", "")), float(m.group(2).replace(" ", ""))
            out += np.linspace(low, high, int(float(m.group(3))) if m.group(3) else 1).tolist()
        else:
            try:
                out.append(kind(value))
            except ValueError:
                raise InvalidRequest(ARGS, f"{label}: {value!r} is not {kind.__name__}") from None
    return out


@dataclass(frozen=True)
class Axis:
    label: str
    values: tuple[Any, ...]

    @property
    def labels(self) -> tuple[str, ...]:
        """What the grid writes: A1111's ``Label: value``, the bare value for names and Prompt S/R."""
        if self.label == "Nothing":
            return ("",)
        shown = [round(v, 8) if isinstance(v, float) else v for v in self.values]
        if self.label in (*CHOICE_AXES, "Prompt S/R"):
            return tuple(str(v) for v in shown)
        return tuple(f"{self.label}: {v}" for v in shown)


def axis_label(kind: int | str, mode: str) -> str:
    """The axis label of an A1111 index (into ``mode``'s list) or label."""
    names = TXT2IMG_AXES if mode == "txt2img" else IMG2IMG_AXES
    if isinstance(kind, str) and not kind.lstrip("-").isdigit():
        match = next((n for n in names if n.lower() == kind.strip().lower()), None)
        if match is None:
            raise InvalidRequest(ARGS, f"unknown axis type {kind!r}")
        return match
    index = int(kind)
    if not 0 <= index < len(names):
        raise InvalidRequest(ARGS, f"axis type {index} is not in 0..{len(names) - 1} ({mode})")
    return names[index]


def build_axis(kind: int | str, text: str, dropdown: Sequence[str], mode: str, csv_mode: bool) -> Axis:
    label = axis_label(kind, mode)
    if label not in SUPPORTED:
        raise InvalidRequest(ARGS, f"the axis {label!r} is not supported by this server")
    if label == "Nothing":
        return Axis(label, (None,))
    values = list(dropdown) if label in CHOICE_AXES and dropdown and not csv_mode else split_values(text)
    if not values:
        raise InvalidRequest(ARGS, f"the {label} axis has no values")
    return Axis(label, tuple(expand_values(label, values)))


def apply_axis(
    request: GenerationRequest, model: str | None, axis: Axis, value: Any
) -> tuple[GenerationRequest, str | None]:
    """``request`` (and the checkpoint) with one axis value applied."""
    label = axis.label
    fields = {
        "Seed": "seed",
        "Var. seed": "subseed",
        "Var. strength": "subseed_strength",
        "Steps": "steps",
        "CFG Scale": "cfg_scale",
        "Sampler": "sampler_name",
        "Schedule type": "scheduler",
        "Clip skip": "clip_skip",
        "Denoising": "denoising_strength",
    }
    if label == "Nothing":
        return request, model
    if label in fields:
        if label == "Denoising" and not hasattr(request, "denoising_strength"):
            raise InvalidRequest(ARGS, "the Denoising axis needs img2img")
        return replace(request, **{fields[label]: value}), model
    if label == "Eta":
        return replace(request, sampler_options={**request.sampler_options, "eta": value}), model
    if label == "Checkpoint name":
        return request, value  # already a registry name (plan_xyz resolved the axis)
    if label == "Prompt S/R":
        search = axis.values[0]
        prompt, negative = request.prompt.replace(search, value), request.negative_prompt.replace(search, value)
        return replace(request, prompt=prompt, negative_prompt=negative), model
    if label == "Size":
        size = re.fullmatch(r"\s*(\d+)\s*[x×]\s*(\d+)\s*", value)
        if size is None:
            raise InvalidRequest(ARGS, f"Size: {value!r} is not WIDTHxHEIGHT")
        return replace(request, width=int(size.group(1)), height=int(size.group(2))), model
    raise InvalidRequest(ARGS, f"the axis {label!r} is not supported by this server")


def plan_xyz(
    base: GenerationRequest,
    script_args: Sequence[Any],
    model_name: str | None,
    resolve_model: Callable[[str], str],
) -> ScriptPlan:
    """The X/Y/Z plot's cells for ``base`` (one image each: batch size and count become 1, as A1111's grid
    shows one image per cell).

    Args:
        resolve_model: a checkpoint name as given -> the registry name; raises ``InvalidRequest`` if unknown.

    Raises:
        InvalidRequest: field ``script_args``, naming the bad axis or value (a Prompt S/R first value that is
            not in the prompt included), before anything runs.
    """
    args = XYZArgs.from_script_args(script_args)
    axes = [
        build_axis(args.x_type, args.x_values, args.x_values_dropdown, base.mode, args.csv_mode),
        build_axis(args.y_type, args.y_values, args.y_values_dropdown, base.mode, args.csv_mode),
        build_axis(args.z_type, args.z_values, args.z_values_dropdown, base.mode, args.csv_mode),
    ]
    for axis in axes:
        if axis.label == "Prompt S/R":
            first = axis.values[0]
            if first not in base.prompt and first not in base.negative_prompt:
                raise InvalidRequest(ARGS, f"Prompt S/R did not find {first!r} in the prompt or negative prompt")
    axes = [
        replace(a, values=tuple(resolve_model(v) for v in a.values)) if a.label == "Checkpoint name" else a
        for a in axes
    ]
    if not args.no_fixed_seeds:  # A1111 fixes -1 seeds once, so every cell shares them
        base = replace(base, seed=resolve_seed(base.seed), subseed=resolve_seed(base.subseed))
        axes = [
            replace(a, values=tuple(resolve_seed(v) for v in a.values)) if a.label in ("Seed", "Var. seed") else a
            for a in axes
        ]
    base = replace(base, batch_size=1, n_iter=1)
    x, y, z = axes
    nx, ny = len(x.values), len(y.values)
    cells = []
    for iz, zv in enumerate(z.values):
        for iy, yv in enumerate(y.values):
            for ix, xv in enumerate(x.values):
                request, model = base, model_name
                for axis, value in ((x, xv), (y, yv), (z, zv)):
                    request, model = apply_axis(request, model, axis, value)
                offset = (ix if args.vary_seeds_x else 0) + (iy * nx if args.vary_seeds_y else 0)
                offset += iz * nx * ny if args.vary_seeds_z else 0
                if offset and request.seed >= 0:
                    request = replace(request, seed=request.seed + offset)
                cells.append(ScriptCell(request, model))
    layout = GridLayout(
        x.labels,
        y.labels,
        z.labels,
        draw_legend=args.draw_legend,
        include_lone_images=args.include_lone_images,
        include_sub_grids=args.include_sub_grids,
        margin_size=max(0, args.margin_size),
    )
    return ScriptPlan(XYZ_PLOT, tuple(cells), run_order(axes), layout)


def run_order(axes: Sequence[Axis]) -> tuple[int, ...]:
    """Cell indices in the order A1111 runs them: the costliest axis outermost (z, y, x by default)."""
    x, y, z = axes
    nx, ny, nz = len(x.values), len(y.values), len(z.values)
    ranked = sorted([(2, "z", nz), (1, "y", ny), (0, "x", nx)], key=lambda a: -COSTS.get(axes[a[0]].label, 0.0))
    strides = {"x": 1, "y": nx, "z": nx * ny}
    (_, outer, n_outer), (_, middle, n_middle), (_, inner, n_inner) = ranked
    return tuple(
        a * strides[outer] + b * strides[middle] + c * strides[inner]
        for a in range(n_outer)
        for b in range(n_middle)
        for c in range(n_inner)
    )

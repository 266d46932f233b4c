"""Prompt adherence of a demo-style model, measured on images it generates.

Each prompt is the plainest caption of a one-shape scene ("a red circle on a blue background").
The model generates an image through the product's own pipeline (:func:`webui.pipeline.generate`)
and :func:`webui.train.measure.read_image` reads back its background colour, shape colour and shape
class. ``tests/test_demo_model.py`` holds the shipped model to the targets on :func:`target_prompts`;
``python -m webui.train adherence`` prints the same table for any model, sampler and CFG scale, and
on :func:`validation_prompts` (other backgrounds and seeds) to check that a training recipe was not
tuned to the test's own prompts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from webui.train import data, measure
from webui.train.measure import Reading


@dataclass(frozen=True)
class AdherencePrompt:
    kind: str
    colour: str
    background: str
    seed: int

    @property
    def text(self) -> str:
        return data.simple_caption(self.kind, self.colour, self.background)


def target_prompts() -> list[AdherencePrompt]:
    """40 prompts: every shape in every colour, on backgrounds that rotate; seeds 1000.."""
    names = list(data.COLOURS)
    prompts: list[AdherencePrompt] = []
    for i, kind in enumerate(data.SHAPES):
        for j, colour in enumerate(names):
            background = names[(j + 1 + (i + j) % 7) % len(names)]
            prompts.append(AdherencePrompt(kind, colour, background, 1000 + len(prompts)))
    return prompts


def validation_prompts() -> list[AdherencePrompt]:
    """40 more prompts, every shape in every colour, on other backgrounds and seeds (7000..)."""
    names = list(data.COLOURS)
    prompts: list[AdherencePrompt] = []
    for i, kind in enumerate(data.SHAPES):
        for j, colour in enumerate(names):
            background = names[(j + 3 + (2 * i + j) % 5) % len(names)]
            if background == colour:
                background = names[(j + 1) % len(names)]
            prompts.append(AdherencePrompt(kind, colour, background, 7000 + len(prompts)))
    return prompts


@dataclass(frozen=True)
class AdherenceRow:
    prompt: AdherencePrompt
    reading: Reading

    @property
    def background_ok(self) -> bool:
        return self.reading.background == self.prompt.background

    @property
    def colours_ok(self) -> bool:
        return self.background_ok and self.reading.colour == self.prompt.colour

    @property
    def shape_ok(self) -> bool:
        return self.reading.shape == self.prompt.kind


@dataclass(frozen=True)
class AdherenceReport:
    rows: list[AdherenceRow]
    settings: str

    def _rate(self, field: str) -> float:
        return sum(getattr(row, field) for row in self.rows) / len(self.rows)

    @property
    def background_rate(self) -> float:
        return self._rate("background_ok")

    @property
    def colour_rate(self) -> float:
        """Background and shape colour both right."""
        return self._rate("colours_ok")

    @property
    def shape_rate(self) -> float:
        return self._rate("shape_ok")

    def table(self) -> str:
        lines = [self.settings, f"{'prompt':<46} {'bg':<7} {'colour':<7} {'shape':<9} fill  solid drop  bg/col/shape"]
        for row in self.rows:
            r = row.reading
            marks = "".join("." if ok else "x" for ok in (row.background_ok, row.colours_ok, row.shape_ok))
            lines.append(
                f"{row.prompt.text:<46} {r.background:<7} {r.colour or '-':<7} {r.shape or '-':<9} "
                f"{r.fill:.2f}  {r.solidity:.2f}  {r.drop:.2f}  {marks}"
            )
        per_shape = ", ".join(
            f"{kind} {sum(row.shape_ok for row in self.rows if row.prompt.kind == kind)}"
            f"/{sum(row.prompt.kind == kind for row in self.rows)}"
            for kind in data.SHAPES
        )
        lines.append(
            f"of {len(self.rows)}: background right {self.background_rate:.0%}; background and shape "
            f"colour right {self.colour_rate:.0%}; shape class right {self.shape_rate:.0%} ({per_shape})"
        )
        return "\n".join(lines)


def measure_adherence(
    model: Any,
    sampler_registry: Any,
    prompts: list[AdherencePrompt],
    *,
    sampler: str,
    steps: int,
    cfg_scale: float,
    scheduler: str = "Automatic",
) -> AdherenceReport:
    """Generate one image per prompt at the model's native size and read each back."""
    from webui.pipeline import GenerationRequest, generate, native_size, resolve_request

    rows = []
    for prompt in prompts:
        request = GenerationRequest(
            prompt=prompt.text,
            sampler_name=sampler,
            scheduler=scheduler,
            steps=steps,
            cfg_scale=cfg_scale,
            seed=prompt.seed,
        )
        image = generate(model, resolve_request(request, sampler_registry, native_size(model))).images[0]
        rows.append(AdherenceRow(prompt, measure.read_image(image)))
    return AdherenceReport(rows, f"{sampler} ({scheduler}), {steps} steps, CFG {cfg_scale:g}")

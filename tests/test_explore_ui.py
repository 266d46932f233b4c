"""The variation seeds in the UI: the seed row's Reuse button and Send to (PNG Info, a gallery) fill the "Extra"
fields as AUTOMATIC1111 does. The handlers are the ones `build_ui` wires (found through the page's config, by
the elem_ids a browser sees), run on real results of the tiny model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import pytest
from PIL import Image

from tests.support.fakes import FakeService
from webui.pipeline.requests import GenerationRequest
from webui.service import WebUIService
from webui.ui import build_ui
from webui.ui.common import ShownResult, run_generation
from webui.ui.explore import variation_widget_values
from webui.ui.jobs import JobTracker

SKIP = gr.skip()
VARIATION = ("subseed_show", "subseed", "subseed_strength", "seed_resize_w", "seed_resize_h")
INFOTEXT = (
    "a cat\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 10, Size: 64x64, "
    "Variation seed: 501, Variation seed strength: 0.5, Seed resize from: 96x80"
)
PLAIN_INFOTEXT = "a dog\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 11, Size: 64x64"


@pytest.fixture(scope="module")
def demo() -> Iterator[gr.Blocks]:
    service = FakeService()
    try:
        yield build_ui(service)
    finally:
        service.close()


def fire(demo: gr.Blocks, trigger_elem_id: str, inputs: dict[str, Any], states: tuple = ()) -> dict[str, Any]:
    """Run every handler of ``trigger_elem_id``'s click, on ``inputs`` (by elem_id) and ``states`` (the tab's
    results and selected index, in that order); the values they set, by elem_id (a value set by two handlers
    must agree; ``gr.skip()`` sets nothing)."""
    config = demo.get_config_file()
    by_id = {c["id"]: c.get("props", {}).get("elem_id") for c in config["components"]}
    source = next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == trigger_elem_id)
    values: dict[str, Any] = {}
    for dep in config["dependencies"]:
        if (source, "click") not in [tuple(t) for t in dep["targets"]]:
            continue
        pending = list(states)
        args = [inputs[by_id[i]] if by_id.get(i) else pending.pop(0) for i in dep["inputs"]]
        out = demo.fns[dep["id"]].fn(*args)
        out = list(out) if isinstance(out, (list, tuple)) else [out]
        for block, value in zip(dep["outputs"], out, strict=True):
            if value == SKIP or by_id.get(block) is None:
                continue
            assert values.setdefault(by_id[block], value) == value, by_id[block]
    return values


def png(text: str) -> dict[str, Any]:
    return {"pnginfo_parameters": text, "pnginfo_image": None}


def variation_of(values: dict[str, Any], tab: str) -> list[Any]:
    return [values.get(f"{tab}_{name}", "unset") for name in VARIATION]


def test_reuse_fills_the_seed_and_the_variation_seed_of_the_selected_image(demo: gr.Blocks) -> None:
    images = [Image.new("RGB", (8, 8))] * 2
    shown = ShownResult(images, [10, 10], ["", ""], subseeds=[500, 501])
    for tab in ("txt2img", "img2img"):
        values = fire(demo, f"{tab}_reuse_seed", {}, (shown, 1))
        assert values[f"{tab}_seed"] == 10
        assert (values[f"{tab}_subseed_show"], values[f"{tab}_subseed"]) == (True, 501)
    # an image made without variation seeds: the seed only, the variation fields stay as they are
    plain = fire(demo, "txt2img_reuse_seed", {}, (ShownResult(images, [7, 8], ["", ""]), 1))
    assert plain["txt2img_seed"] == 8 and "txt2img_subseed" not in plain and "txt2img_subseed_show" not in plain


def test_png_info_send_to_fills_extra_and_the_variation_fields(demo: gr.Blocks) -> None:
    to_txt2img = fire(demo, "pnginfo_send_to_txt2img", png(INFOTEXT))
    assert to_txt2img["txt2img_seed"] == 10 and to_txt2img["txt2img_prompt"] == "a cat"
    assert variation_of(to_txt2img, "txt2img") == [True, 501, 0.5, 96, 80]
    for button in ("pnginfo_send_to_img2img", "pnginfo_send_to_inpaint"):
        sent = fire(demo, button, png(INFOTEXT))
        assert variation_of(sent, "img2img") == [True, 501, 0.5, 96, 80]
        assert variation_of(sent, "txt2img") == ["unset"] * 5
    # made without variation seeds: Extra unticked, the fields kept
    assert variation_of(fire(demo, "pnginfo_send_to_txt2img", png(PLAIN_INFOTEXT)), "txt2img") == [
        False,
        *["unset"] * 4,
    ]


def test_gallery_send_to_img2img_fills_its_variation_fields(demo: gr.Blocks) -> None:
    shown = ShownResult([Image.new("RGB", (8, 8))] * 2, [10, 10], [PLAIN_INFOTEXT, INFOTEXT], subseeds=[500, 501])
    for button in ("txt2img_send_to_img2img", "txt2img_send_to_inpaint", "img2img_send_to_img2img"):
        assert variation_of(fire(demo, button, {}, (shown, 1)), "img2img") == [True, 501, 0.5, 96, 80]
    assert variation_of(fire(demo, "txt2img_send_to_img2img", {}, (shown, 0)), "img2img") == [False, *["unset"] * 4]


def test_a_seed_resize_alone_opens_extra_as_a1111() -> None:
    text = "x\nSteps: 2, Seed: 1, Size: 64x64, Seed resize from: 128x64"
    assert variation_widget_values(text) == [True, -1, 0.0, 128, 64]
    assert variation_widget_values("") == [SKIP] * 5


@pytest.mark.slow
def test_a_generation_keeps_each_images_variation_seed_for_reuse(tiny_checkpoint, tmp_path: Path) -> None:
    (tmp_path / "models.yaml").write_text(f"models:\n  - name: tiny\n    path: {tiny_checkpoint.path}\n")
    service = WebUIService(tmp_path / "models.yaml", outputs_dir=None)
    try:
        tracker = JobTracker(service, poll_interval=0.02)
        request = GenerationRequest(
            prompt="a cat", steps=2, width=64, height=64, seed=10, subseed=500, subseed_strength=0.5, batch_size=2
        )
        *_, last = run_generation(tracker, request, "tiny", None)
        shown = last[4]
        assert isinstance(shown, ShownResult) and shown.seeds == [10, 10] and shown.subseeds == [500, 501]
        plain = list(
            run_generation(tracker, GenerationRequest(prompt="a cat", steps=2, width=64, height=64), "tiny", None)
        )
        assert plain[-1][4].subseeds == [] and plain[-1][4].subseed(0) is None
    finally:
        service.close()

"""What a new user sees first: the header and model status line, the model's description and example prompts
(models.yaml `examples`), seed buttons that render without an emoji font, the token counter's chunk note, and a
Models table that follows the service. Real `WebUIService` on the tiny random-weight model; the page is
inspected through its Gradio config and its event handlers are called as Gradio calls them (no browser: the
browser checks are in test_browser.py).
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

gr = pytest.importorskip("gradio")

from webui.models.manager import ModelManager  # noqa: E402
from webui.models.registry import load_registry  # noqa: E402
from webui.pipeline.requests import GenerationRequest  # noqa: E402
from webui.service import WebUIService  # noqa: E402
from webui.ui import JS, build_ui  # noqa: E402
from webui.ui.app import TOOLTIPS  # noqa: E402
from webui.ui.model_info import NO_MODEL, TOKEN_CHUNKS_HELP, status_line, token_counter_html  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ["a red star on a blue background", "a small green circle in the top left corner on black"]


@pytest.fixture
def models_yaml(tiny_checkpoint, tmp_path) -> Path:
    """The tiny model with a description and example prompts, and a second entry whose file is missing."""
    path = tmp_path / "models.yaml"
    path.write_text(
        "models:\n"
        "  - name: tiny\n"
        f"    path: {tiny_checkpoint.path}\n"
        f"    tokenizer: {tiny_checkpoint.tokenizer_dir}\n"
        "    default: true\n"
        "    width: 64\n"
        "    height: 64\n"
        "    description: A tiny random model that draws noise.\n"
        "    examples:\n" + "".join(f"      - {prompt}\n" for prompt in EXAMPLES) + "  - name: other\n"
        f"    path: {tmp_path / 'missing.safetensors'}\n"
        "    description: Another model, without examples.\n"
    )
    return path


@pytest.fixture
def service(models_yaml, tmp_path):
    svc = WebUIService(models_yaml, device="cpu", outputs_dir=None)
    try:
        yield svc
    finally:
        svc.close()


def _component(config: dict, elem_id: str) -> dict:
    return next(c for c in config["components"] if c.get("props", {}).get("elem_id") == elem_id)


def _handlers(demo: gr.Blocks, trigger: str, output_elem_id: str, source_elem_id: str | None = None) -> list:
    """The functions Gradio runs for ``trigger`` events (of ``source_elem_id``, if given) that update the
    component ``output_elem_id``."""
    config = demo.get_config_file()
    target = _component(config, output_elem_id)["id"]
    source = _component(config, source_elem_id)["id"] if source_elem_id else None
    return [
        demo.fns[dep["id"]].fn
        for dep in config["dependencies"]
        if any(event == trigger and source in (None, block) for block, event in dep["targets"])
        and target in dep["outputs"]
    ]


# --- models.yaml: examples -------------------------------------------------------------------------------------


def test_models_yaml_examples_are_read_as_prompts_and_bad_ones_are_reported(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text(
        "models:\n  - name: a\n    path: a.safetensors\n    examples: [' a red star ', 'a blue heart']\n"
        "  - name: b\n    path: b.safetensors\n    examples: [a red star, 3]\n"
        "  - name: c\n    path: c.safetensors\n    examples: a red star\n"
    )
    registry = load_registry(path)
    assert [e.name for e in registry.entries] == ["a"]
    assert registry.entries[0].examples == ("a red star", "a blue heart")
    assert [(e.entry, e.field) for e in registry.errors] == [("#2 ('b')", "examples"), ("#3 ('c')", "examples")]


def test_the_demo_model_offers_example_prompts_in_its_caption_words():
    from webui.train import data

    demo = load_registry(REPO_ROOT / "models.yaml").get("demo")
    assert 4 <= len(demo.examples) <= 6 and "circle" in demo.description
    known = {
        *data.COLOURS,
        *data.SHAPES,
        "a",
        "an",
        "on",
        "background",
        "small",
        "large",
        "the",
        "in",
        "at",
        "left",
        "right",
        "top",
        "bottom",
        "corner",
    }
    for prompt in demo.examples:
        assert len(prompt) <= 60, f"Gradio's example buttons cut prompts after 60 characters: {prompt!r}"
        assert set(prompt.split()) <= known, prompt


# --- status line -------------------------------------------------------------------------------------------------


def test_status_line_names_the_loaded_model_its_size_precision_and_device(service):
    assert status_line(service) == NO_MODEL
    service.run(GenerationRequest(prompt="x", steps=1, sampler_name="Euler", seed=1))  # the first job loads it
    assert status_line(service) == "tiny · 64×64 · fp32 · cpu"
    service.unload_model()
    assert status_line(service) == NO_MODEL


def test_status_line_says_loading_while_a_model_loads(models_yaml):
    started, release = threading.Event(), threading.Event()

    def slow_loader(*args, **kwargs):
        started.set()
        release.wait(10)
        raise RuntimeError("gave up")

    service = WebUIService(manager=ModelManager(load_registry(models_yaml), loader=slow_loader))
    loading = threading.Thread(target=lambda: pytest.raises(RuntimeError, service.select_model, "tiny"))
    loading.start()
    try:
        assert started.wait(10)
        assert status_line(service) == "loading tiny…"
    finally:
        release.set()
        loading.join(10)
    assert status_line(service) == NO_MODEL


# --- the page ----------------------------------------------------------------------------------------------------


def test_page_has_a_header_status_line_description_and_examples_of_the_selected_model(service):
    demo = build_ui(service)
    config = demo.get_config_file()
    header = _component(config, "sd_header")["props"]["value"]
    assert "Stable Diffusion web UI" in header and "text-to-image" in header
    assert "Model: no model loaded" in _component(config, "sd_status_line")["props"]["value"]
    assert _component(config, "model_description")["props"]["value"] == "A tiny random model that draws noise."
    examples = _component(config, "model_examples")["props"]
    assert examples["samples"] == [[p] for p in EXAMPLES] and examples["visible"] is True

    # Choosing another model shows its description and hides the examples it does not have.
    (on_model_change,) = _handlers(demo, "change", "model_description")
    _, text, dataset = on_model_change("other", "")
    assert text == "Another model, without examples." and dataset.visible is False and dataset.samples == []
    # Clicking an example puts it into the txt2img prompt and shows that tab.
    (use_example,) = _handlers(demo, "click", "txt2img_prompt", "model_examples")
    tabs, prompt = use_example([EXAMPLES[1]])
    assert prompt == EXAMPLES[1] and tabs.selected == "txt2img"


def test_status_line_and_models_table_follow_the_service_on_the_timer(service):
    demo = build_ui(service)
    (refresh_status,) = _handlers(demo, "tick", "sd_status_line")
    (refresh_table,) = _handlers(demo, "tick", "models_table")
    shown_status = _component(demo.get_config_file(), "sd_status_line")["props"]["value"]
    shown_rows = _component(demo.get_config_file(), "models_table")["props"]["value"]["data"]
    assert isinstance(refresh_status(shown_status), type(gr.skip()))  # nothing changed: nothing is sent
    assert isinstance(refresh_table(shown_rows), type(gr.skip()))

    service.run(GenerationRequest(prompt="x", steps=1, sampler_name="Euler", seed=1))  # not through the Models tab
    assert "tiny · 64×64 · fp32 · cpu" in refresh_status(shown_status)
    rows = refresh_table(shown_rows)
    assert rows[0][:2] == ["tiny", "loaded (current), default"]
    # The same refresh runs when the Models tab is opened and after each generation.
    assert refresh_table in _handlers(demo, "select", "models_table")
    assert refresh_table in _handlers(demo, "change", "models_table")


def test_seed_buttons_are_words_with_tooltips_not_emoji(service):
    config = build_ui(service).get_config_file()
    for tab in ("txt2img", "img2img"):
        for button, word in (("random_seed", "Random"), ("reuse_seed", "Reuse")):
            assert _component(config, f"{tab}_{button}")["props"]["value"] == word
            assert TOOLTIPS[f"{tab}_{button}"] in JS  # the page script sets it as the button's title


# --- token counter -----------------------------------------------------------------------------------------------


def test_token_counter_says_how_many_chunks_a_long_prompt_takes_and_explains_them(service):
    long_prompt = " ".join(["red star"] * 250)
    assert token_counter_html(service, "tiny", long_prompt, "", 20) == ""  # model not loaded yet
    service.select_model("tiny")
    tokens, capacity = service.token_count(long_prompt, 20, "tiny")
    assert capacity > 150  # the premise: more than two chunks of 75
    counter = token_counter_html(service, "tiny", long_prompt, "", 20)
    assert f"Prompt: {tokens}/{capacity} ({capacity // 75} chunks) · Negative: 0/75 tokens" in counter
    assert 'data-chunked="true"' in counter
    title = TOKEN_CHUNKS_HELP.replace('"', "&quot;")
    assert f'title="{title}"' in counter
    assert "chunks of 75 tokens" in TOKEN_CHUNKS_HELP and "encoded on its own" in TOKEN_CHUNKS_HELP
    short = token_counter_html(service, "tiny", "a red star", "", 20)
    assert "chunks)" not in short and 'data-chunked="false"' in short and "Prompt: " in short

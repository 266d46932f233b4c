"""The "Lora" panel: rows with search and metadata, refresh, and a click that inserts ``<lora:name:1>``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.browser import serving
from tests.support.lora_files import write_kohya_lora
from webui.extra_networks.lora_library import LoraLibrary
from webui.ui.lora_panel import lora_rows

SPEC = [("lora_unet_mid_block_attentions_0_proj_in", (8, 8))]


@pytest.fixture
def lora_dir(tmp_path: Path) -> Path:
    meta = {"ss_output_name": "papercut", "ss_sd_model_name": "v1-5-pruned", "ss_network_dim": "16"}
    write_kohya_lora(tmp_path / "Lora" / "paper_cut_v2.safetensors", SPEC, metadata=meta)
    write_kohya_lora(tmp_path / "Lora" / "people" / "alice.safetensors", SPEC)
    return tmp_path / "Lora"


def test_rows_show_metadata_and_the_search_matches_name_alias_or_folder(lora_dir):
    entries = LoraLibrary(lora_dir).entries
    assert lora_rows(entries, "", lora_dir) == [
        ["paper_cut_v2", "papercut", "v1-5-pruned", "16", ""],
        ["alice", "", "", "", "people"],
    ]
    assert [r[0] for r in lora_rows(entries, "PAPERCUT", lora_dir)] == ["paper_cut_v2"]
    assert [r[0] for r in lora_rows(entries, "people", lora_dir)] == ["alice"]
    assert lora_rows(entries, "nothing like it", lora_dir) == []


@pytest.fixture
def stand_in(lora_dir):
    from tests.support.fakes import FakeService

    service = FakeService(step_seconds=0.01)
    service.lora_library = LoraLibrary(lora_dir)
    try:
        with serving(service) as url:
            yield service, url
    finally:
        service.close()


@pytest.mark.browser
def test_clicking_a_lora_inserts_its_tag_at_the_cursor_and_refresh_finds_new_files(stand_in, page, lora_dir):
    service, url = stand_in
    page.goto(url)
    prompt = page.locator("#txt2img_prompt textarea")
    prompt.fill("a cat, blue")
    prompt.evaluate("box => box.setSelectionRange(5, 5)")  # the cursor after "a cat"
    page.locator("#txt2img_lora_panel").get_by_text("Lora (2)").click()
    page.locator("#txt2img_lora_table").get_by_text("paper_cut_v2").click()
    page.wait_for_function("() => document.querySelector('#txt2img_prompt textarea').value.includes('<lora:')")
    assert prompt.input_value() == "a cat <lora:paper_cut_v2:1>, blue"

    page.locator("#txt2img_lora_search input, #txt2img_lora_search textarea").first.fill("people")
    page.wait_for_function("() => !document.querySelector('#txt2img_lora_table').innerText.includes('paper_cut_v2')")
    assert "alice" in page.locator("#txt2img_lora_table").inner_text()

    write_kohya_lora(lora_dir / "late_addition.safetensors", SPEC)
    page.locator("#txt2img_lora_search input, #txt2img_lora_search textarea").first.fill("")
    page.locator("#txt2img_lora_refresh").click()
    page.wait_for_function("() => document.querySelector('#txt2img_lora_table').innerText.includes('late_addition')")
    assert "Lora (3)" in page.locator("#txt2img_lora_panel").inner_text()

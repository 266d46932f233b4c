"""The Textual Inversion panel and the SD VAE dropdown in a real Chromium, on the stand-in service with real
embeddings and VAE folders: search, metadata, a click inserts the word at the cursor, refresh, VAE choice."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.support.browser import serving, wait_text


@pytest.fixture
def stand_in(tmp_path: Path):
    from tests.support.fakes import FakeService

    embeddings, vae = tmp_path / "embeddings", tmp_path / "VAE"
    embeddings.mkdir()
    vae.mkdir()
    torch.save(
        {"string_to_param": {"*": torch.randn(2, 768)}, "step": 1200, "sd_checkpoint_name": "v1-5-pruned"},
        embeddings / "inkwash.pt",
    )
    torch.save({"string_to_param": {"*": torch.randn(8, 768)}}, embeddings / "easynegative.pt")
    torch.save({"string_to_param": {"*": torch.randn(1, 1024)}}, embeddings / "sd2only.pt")
    (vae / "vae-ft-mse.safetensors").write_bytes(b"x")
    service = FakeService(step_seconds=0.01, embeddings_dir=embeddings, vae_dir=vae)
    service.select_model("tiny")
    try:
        with serving(service) as url:
            yield service, url, tmp_path
    finally:
        service.close()


@pytest.mark.browser
def test_clicking_a_word_inserts_it_at_the_cursor_of_the_last_focused_prompt(stand_in, page):
    service, url, folder = stand_in
    page.goto(url)
    page.locator("#txt2img_ti_panel").get_by_text("Textual Inversion").click()
    table = page.locator("#txt2img_ti_table")
    wait_text(page, "#txt2img_ti_table", "inkwash")
    text = table.inner_text()
    assert "1200" in text and "v1-5-pruned" in text and "skipped: 1024 wide" in text
    assert table.locator(".sd-ti-word").count() == 2  # sd2only is listed but cannot be clicked

    prompt = page.locator("#txt2img_prompt textarea")
    prompt.fill("a cat, at night")
    prompt.evaluate("el => { el.focus(); el.setSelectionRange(5, 5); }")  # after "a cat"
    table.locator(".sd-ti-word[data-word=inkwash]").click()
    page.wait_for_function("el => el.value === 'a cat inkwash, at night'", arg=prompt.element_handle())

    negative = page.locator("#txt2img_neg_prompt textarea")
    negative.fill("blurry")
    negative.focus()
    table.locator(".sd-ti-word[data-word=easynegative]").click()
    page.wait_for_function("el => el.value === 'blurry easynegative'", arg=negative.element_handle())
    # gradio got the new values: the job carries them
    page.locator("#txt2img_generate").click()
    wait_text(page, "#txt2img_progress", "Done")
    assert (service.submitted[-1].request.prompt, service.submitted[-1].request.negative_prompt) == (
        "a cat inkwash, at night",
        "blurry easynegative",
    )

    page.locator("#txt2img_ti_search input, #txt2img_ti_search textarea").first.fill("easy")
    page.wait_for_function("el => !el.innerText.includes('inkwash')", arg=table.element_handle())
    torch.save({"string_to_param": {"*": torch.randn(1, 768)}}, folder / "embeddings" / "easyglow.pt")
    page.locator("#txt2img_ti_refresh").click()
    wait_text(page, "#txt2img_ti_table", "easyglow")


@pytest.mark.browser
def test_sd_vae_dropdown_sets_the_vae_of_the_next_jobs(stand_in, page):
    service, url, folder = stand_in
    page.goto(url)
    page.locator("#sd_vae input").click()
    options = [o.replace("✓", "").strip() for o in page.get_by_role("option").all_inner_texts()]
    assert options == ["Automatic", "None", "vae-ft-mse.safetensors"]
    page.get_by_role("option", name="vae-ft-mse.safetensors", exact=True).click()
    for _ in range(100):
        if service.sd_vae == "vae-ft-mse.safetensors":
            break
        page.wait_for_timeout(50)
    assert service.sd_vae == "vae-ft-mse.safetensors"
    page.locator("#txt2img_prompt textarea").fill("x")
    page.locator("#txt2img_generate").click()
    wait_text(page, "#txt2img_progress", "Done")
    assert service.submitted[-1].request.sd_vae == "vae-ft-mse.safetensors"

    (folder / "VAE" / "another.pt").write_bytes(b"x")
    page.locator("#sd_vae_refresh").click()
    page.locator("#sd_vae input").click()
    page.get_by_role("option", name="another.pt", exact=True).wait_for(timeout=10_000)


@pytest.mark.browser
def test_sending_png_info_to_txt2img_selects_the_vae_it_names(stand_in, page):
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    service, url, folder = stand_in
    meta = PngInfo()
    meta.add_text("parameters", "a star\nSteps: 4, Sampler: Euler, Seed: 3, VAE: vae-ft-mse.safetensors")
    Image.new("RGB", (8, 8)).save(folder / "made.png", pnginfo=meta)
    page.goto(url)
    page.get_by_role("tab", name="PNG Info").click()
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(folder / "made.png"))
    _wait_text_value = "el => el.value.includes('VAE: vae-ft-mse')"
    page.wait_for_function(_wait_text_value, arg=page.locator("#pnginfo_parameters textarea").element_handle())
    page.locator("#pnginfo_send_to_txt2img").click()
    page.wait_for_function(
        "el => el.value === 'vae-ft-mse.safetensors'", arg=page.locator("#sd_vae input").element_handle()
    )
    assert service.sd_vae == "vae-ft-mse.safetensors"

"""UI behaviours in a real Chromium, on the stand-in service of support/fakes.py (no model: seconds per test):
the checkpoint dropdown loads a model and applies its native size or shows its load error, and the seed
buttons (🎲 random, ♻️ reuse the selected image's seed) work.
"""

from __future__ import annotations

import pytest

from tests.support.browser import pick, serving, wait_text


@pytest.fixture
def stand_in():
    from tests.support.fakes import FakeService

    service = FakeService(step_seconds=0.01)
    try:
        with serving(service) as url:
            yield service, url
    finally:
        service.close()


@pytest.mark.browser
def test_checkpoint_dropdown_loads_the_model_and_applies_its_size_or_shows_the_error(stand_in, page):
    service, url = stand_in
    page.goto(url)
    pick(page, "model_checkpoint", "big")
    wait_text(page, "#model_status", "Loaded big")
    assert service.current_model_name == "big"
    assert page.locator("#txt2img_width input[type=number]").input_value() == "128"
    assert page.locator("#txt2img_height input[type=number]").input_value() == "96"
    pick(page, "model_checkpoint", "broken")
    wait_text(page, "#model_status", "not a Stable Diffusion 1.x checkpoint")
    assert service.current_model_name == "big"  # the previous model stays usable


@pytest.mark.browser
def test_seed_buttons_randomise_and_reuse_the_selected_images_seed(stand_in, page):
    service, url = stand_in
    page.goto(url)
    page.locator("#txt2img_prompt textarea").fill("seeds")
    seed = page.locator("#txt2img_seed input")
    seed.fill("77")
    page.locator("#txt2img_batch_size input[type=number]").fill("2")
    page.locator("#txt2img_batch_size input[type=number]").press("Tab")
    page.locator("#txt2img_generate").click()
    wait_text(page, "#txt2img_progress", "Done")
    assert [job.request.seed for job in service.submitted] == [77]
    # Ctrl+Enter in the prompt generates too. A new seed makes its result tell apart from the first one's:
    # the status line already says "Done", so waiting for that text would race the second job.
    seed.fill("100")
    page.locator("#txt2img_prompt textarea").press("Control+Enter")
    info = page.locator("#txt2img_info textarea")
    page.wait_for_function("el => el.value.includes('Seed: 100')", arg=info.element_handle(), timeout=15_000)
    assert [(job.request.prompt, job.request.seed) for job in service.submitted] == [("seeds", 77), ("seeds", 100)]
    page.locator("#txt2img_random_seed").click()
    page.wait_for_function("el => el.value === '-1'", arg=seed.element_handle(), timeout=10_000)
    # Select the second image: its parameters show and ♻️ takes its seed.
    page.locator("#txt2img_gallery img:visible").nth(1).click()
    page.wait_for_function("el => el.value.includes('Seed: 101')", arg=info.element_handle(), timeout=10_000)
    page.keyboard.press("Escape")
    page.locator("#txt2img_reuse_seed").click()
    page.wait_for_function("el => el.value === '101'", arg=seed.element_handle(), timeout=10_000)


@pytest.mark.browser
def test_models_tab_refresh_rereads_models_yaml_and_updates_the_dropdowns(stand_in, page):
    from webui.models.registry import ModelEntry

    service, url = stand_in
    page.goto(url)
    page.get_by_role("tab", name="Models").click()
    assert "fresh" not in page.locator("#models_table").inner_text()
    service.added_entries.append(ModelEntry("fresh", width=256, height=256))
    page.locator("#models_refresh").click()
    wait_text(page, "#models_message", "Re-read models.yaml: 4 models")
    wait_text(page, "#models_table", "fresh")
    pick(page, "model_checkpoint", "fresh")  # the checkpoint dropdown on top offers it too
    wait_text(page, "#model_status", "Loaded fresh")

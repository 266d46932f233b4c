"""The Gradio UI as an adapter: widget values -> typed requests -> service jobs -> gallery/parameters.

These tests run the real `build_ui` on a real Gradio server in this process, driven through
`gradio_client` (the same named endpoints a user's script calls), against `support.fakes.FakeService`:
the whole service interface with real jobs on a real queue, but random pixels instead of a model, so that
they take about a second each. End-to-end tests with a real model and a real
browser live in test_browser.py.
"""

from __future__ import annotations

import gc
import threading
import time
import weakref
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from gradio_client.exceptions import AuthenticationError  # noqa: E402

from tests.support.browser import serving  # noqa: E402
from tests.support.fakes import FakeService  # noqa: E402
from webui.jobs import Job, JobQueue, JobState  # noqa: E402
from webui.pipeline import Progress  # noqa: E402
from webui.pipeline.infotext import parse_infotext  # noqa: E402
from webui.pipeline.requests import GenerationRequest, GenerationResult, Img2ImgRequest  # noqa: E402
from webui.ui.img2img import drawn_mask, img2img_request, inpaint_inputs  # noqa: E402
from webui.ui.jobs import describe, format_seconds  # noqa: E402
from webui.ui.pnginfo import read_parameters  # noqa: E402
from webui.ui.txt2img import txt2img_request  # noqa: E402

# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def fake_service():
    service = FakeService()
    yield service
    service.close()


@pytest.fixture
def ui_url(fake_service):
    with serving(fake_service) as url:
        yield url


TXT2IMG = dict(
    model_name="tiny",
    prompt="a cat",
    negative_prompt="blurry",
    sampler_name="Euler",
    scheduler="Karras",
    steps=3,
    cfg_scale=6.5,
    width=64,
    height=64,
    seed=42,
    n_iter=1,
    batch_size=2,
)


def _pixels(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


# --- widget values -> request ------------------------------------------------------------------


def test_txt2img_widgets_become_a_typed_request_with_integer_fields():
    request = txt2img_request("a cat", "", "Euler", "Karras", 20.0, 7.5, 512.0, 384.0, 7.0, 2.0, 3.0)
    assert request == GenerationRequest(
        prompt="a cat",
        negative_prompt="",
        sampler_name="Euler",
        scheduler="Karras",
        steps=20,
        cfg_scale=7.5,
        width=512,
        height=384,
        seed=7,
        n_iter=2,
        batch_size=3,
    )
    assert all(isinstance(getattr(request, f), int) for f in ("steps", "width", "height", "seed", "n_iter"))
    assert txt2img_request("x", "", "Euler", "Automatic", 1, 1, 64, 64, None, 1, 1).seed == -1


def test_drawn_mask_is_white_where_any_layer_has_paint():
    layer = Image.new("RGBA", (16, 8), (0, 0, 0, 0))
    layer.paste((255, 255, 255, 255), (2, 1, 6, 5))
    mask = drawn_mask({"background": Image.new("RGB", (16, 8)), "layers": [layer], "composite": None})
    values = np.asarray(mask)
    assert mask.mode == "L" and values.shape == (8, 16)
    assert values[1:5, 2:6].min() == 255 and values.sum() == 255 * 16
    assert drawn_mask({"background": None, "layers": [Image.new("RGBA", (4, 4))], "composite": None}) is None
    assert drawn_mask(None) is None


def test_inpaint_prefers_an_uploaded_mask_and_the_editor_background():
    background = Image.new("RGB", (8, 8), "red")
    uploaded = Image.new("RGB", (8, 8), "white")
    image, mask = inpaint_inputs({"background": background, "layers": []}, uploaded, Image.new("RGB", (8, 8)))
    assert image is background and mask.mode == "L" and np.asarray(mask).min() == 255
    fallback = Image.new("RGB", (8, 8), "blue")
    image, mask = inpaint_inputs(None, None, fallback)
    assert image is fallback and mask is None


def test_img2img_request_carries_mask_only_in_inpaint_mode():
    init = Image.new("RGB", (64, 64), "green")
    mask = Image.new("L", (64, 64), 255)
    args = ("p", "n", "Euler", "Automatic", 4, 7, 64, 64, 3, 1, 1, 0.5, 1, 8, 1, 2)
    plain = img2img_request("img2img", init, None, mask, *args)
    inpaint = img2img_request("inpaint", init, None, mask, *args)
    assert isinstance(plain, Img2ImgRequest) and plain.mask is None and plain.init_images[0].size == (64, 64)
    assert np.array_equal(np.asarray(inpaint.mask), np.asarray(mask))
    assert inpaint.mask_blur == 8 and inpaint.inpainting_mask_invert == 1
    assert inpaint.inpainting_fill == 2 and inpaint.resize_mode == 1 and inpaint.denoising_strength == 0.5


def test_progress_line_shows_queue_position_then_step_total_eta():
    release = threading.Event()
    queue = JobQueue(lambda job: GenerationResult(request=job.request, interrupted=not release.wait(60)))
    try:
        running, *_, fourth = [queue.submit(Job(GenerationRequest(steps=10))) for _ in range(4)]
        while running.state != JobState.RUNNING:
            time.sleep(0.005)
        assert "In queue: position 3" in describe(fourth).html
        running.progress = Progress(
            step=4,
            total_steps=20,
            image_index=1,
            images_total=2,
            sampling_step=4,
            sampling_steps=10,
            eta_seconds=75,
            elapsed_seconds=1.0,
            preview=None,
        )
        text = describe(running).html
        running.progress = replace(running.progress, decoding=True)
        decoding = describe(running)
        running.progress = replace(running.progress, decoded=0.25)  # a large image, decoded in bands
        banded = describe(running)
    finally:
        release.set()
        queue.close()
    assert "Step 4/20" in text and "image 2/2" in text and "ETA 1:15" in text and 'value="20"' in text
    assert "Step 4/20 · image 2/2 · decoding<" in decoding.html and "ETA" not in decoding.html
    assert "Step 4/20 · image 2/2 · decoding 25%" in banded.html
    assert banded.step_key != decoding.step_key  # the page is sent the new percentage
    assert format_seconds(None) == "?" and format_seconds(3.4) == "3 s"


def test_interrupt_is_acknowledged_at_once_in_the_status_line_and_in_progress():
    """A job stuck in a long model call (it ignores the flag for now) still shows "Interrupting…" at once."""
    from webui.api.routes import progress_body
    from webui.service import ProgressSnapshot

    release = threading.Event()
    queue = JobQueue(lambda job: GenerationResult(request=job.request, interrupted=release.wait(60)))
    try:
        job = queue.submit(Job(GenerationRequest(steps=8)))
        while job.state != JobState.RUNNING:
            time.sleep(0.005)
        job.progress = Progress(2, 8, 0, 1, 2, 8, 158.0, 40.0)
        assert "Step 2/8" in describe(job).html
        job.interrupt()
        status = describe(job).html
        body = progress_body(ProgressSnapshot.of(job, 0), job.id, True)
        job.progress = replace(job.progress, decoding=True)  # sampling stopped; the kept image is being decoded
        decoding_status = describe(job).html
        decoding_body = progress_body(ProgressSnapshot.of(job, 0), job.id, True)
        job.progress = replace(job.progress, decoded=0.4)  # a large image, decoded in bands, reports how far
        banded_status = describe(job).html
        banded_body = progress_body(ProgressSnapshot.of(job, 0), job.id, True)
    finally:
        release.set()
        queue.close()
    assert "Interrupting…" in status and "ETA" not in status and 'data-state="running"' in status
    assert body["textinfo"] == "Interrupting…" and body["active"]
    assert body["state"]["interrupted"] and body["state"]["stopping_generation"]
    assert "Interrupting… decoding the current image" in decoding_status
    assert decoding_body["textinfo"] == "Interrupting… decoding the current image" and decoding_body["active"]
    assert "Interrupting… decoding the current image (40%)" in banded_status
    assert banded_body["textinfo"] == "Interrupting… decoding the current image (40%)"
    assert job.state == JobState.INTERRUPTED and not job.interrupting


def test_queue_line_shows_the_running_job_its_owner_and_how_many_wait(fake_service):
    from webui.ui.jobs import JobTracker, queue_text

    fake_service.step_seconds = 0.05
    request = GenerationRequest(prompt="p", steps=150, width=64, height=64)
    tracker = JobTracker(fake_service, poll_interval=0.01)
    mine = tracker.follow(request, "tiny", "tab-1")
    try:
        update = next(mine)
        # The queue was empty: it starts at once. The queue line of the first running update can lag the job's
        # state (seen once in CI); the tracker sends a new update as soon as that line changes.
        while update.state != JobState.RUNNING or "Running:" not in update.html:
            update = next(mine)
        job = tracker.job_of("tab-1")
        assert "Running: 64x64, 150 steps for this tab · 0 waiting" in update.html
        assert queue_text(fake_service, None) == "Running: 64x64, 150 steps for another tab · 0 waiting"
        api_job = fake_service.submit(request, owner="API")
        alice = fake_service.submit(request, owner="alice")
        assert queue_text(fake_service, job) == "Running: 64x64, 150 steps for this tab · 2 waiting"
        job.interrupt()
        while fake_service.progress().job_id != api_job.id:
            time.sleep(0.01)
        assert queue_text(fake_service, job) == "Running: 64x64, 150 steps for API · 1 waiting"
        api_job.interrupt()
        while fake_service.progress().job_id != alice.id:
            time.sleep(0.01)
        assert queue_text(fake_service, job) == "Running: 64x64, 150 steps for alice · 0 waiting"
        alice.interrupt()
        alice.wait(10)
        assert queue_text(fake_service, job) == "Queue: nothing running · 0 waiting"
    finally:
        mine.close()


def test_sizes_far_above_the_native_size_warn_with_the_time_measured_on_this_machine(fake_service):
    from webui.ui.backend import find_model
    from webui.ui.common import size_infos, size_warning

    tiny = find_model(fake_service, "tiny")  # native 64x64
    assert size_infos(tiny) == ("native 64", "native 64")
    assert size_infos(find_model(fake_service, "big")) == ("native 128", "native 96")
    assert size_warning(fake_service, tiny, 128, 128, 8) == ""  # up to twice the native side
    before = size_warning(fake_service, tiny, 1024, 1024, 8)
    assert "1024x1024 is 256x the native size (64x64)" in before and "no job has run yet" in before
    fake_service.step_seconds = 0.001
    fake_service.submit(GenerationRequest(prompt="p", steps=2, width=64, height=64)).result(30)
    after = size_warning(fake_service, tiny, 1024, 1024, 8)
    # The fake's estimate: 1 ms per step at 64x64, times 256 for the pixels, times 8 steps = 2 s.
    assert "1024x1024 is 256x the native size (64x64): about 2 s on this machine" in after


def test_token_counter_appears_once_the_model_is_loaded(fake_service):
    from webui.ui.model_info import token_counter_html

    assert token_counter_html(fake_service, "tiny", "a red cat", "", 20) == ""
    fake_service.select_model("tiny")
    assert ">Prompt: 3/75 · Negative: 1/75 tokens<" in token_counter_html(fake_service, "tiny", "a red cat", "ugly", 20)


# --- the UI's calls into a real service ------------------------------------------------------------


@pytest.fixture
def real_service(tiny_checkpoint):
    from webui.service import WebUIService

    service = WebUIService(tiny_checkpoint.models_yaml, outputs_dir=None)
    yield service
    service.close()


def test_unload_from_the_models_tab_frees_the_model(real_service):
    from webui.ui.backend import unload_model

    real_service.run(GenerationRequest(prompt="a cat", steps=2, seed=1), timeout=60)  # loads it, fits its preview
    model = weakref.ref(real_service.models.loaded()["tiny"])
    unload_model(real_service, "tiny")
    gc.collect()
    still_referenced = model() is not None
    assert not still_referenced, "the unloaded model's memory is not freed"
    assert real_service.models.loaded() == {}


def test_unload_from_the_models_tab_waits_for_the_running_generation(real_service):
    from webui.ui.backend import unload_model

    job = real_service.submit(GenerationRequest(prompt="p", steps=150, seed=1, n_iter=3, sampler_name="Euler"))
    while job.progress is None:
        assert job.wait(0.01) is False, job.error
    unloaded = threading.Event()
    thread = threading.Thread(target=lambda: (unload_model(real_service, "tiny"), unloaded.set()))
    thread.start()
    assert not unloaded.wait(0.3), "unloaded the model under the running generation"
    assert "tiny" in real_service.models.loaded()
    job.interrupt()
    thread.join(60)
    assert unloaded.is_set() and job.result(60).interrupted and real_service.models.loaded() == {}


# --- through a running Gradio server ------------------------------------------------------------


def _components(url: str) -> list[dict]:
    return [c.get("props", {}) | {"type": c.get("type")} for c in httpx.get(url + "config").json()["components"]]


def test_size_sliders_show_the_native_size_and_a_warning_area(ui_url):
    components = _components(ui_url)
    sliders = [c for c in components if c.get("label") in ("Width", "Height")]
    assert len(sliders) == 4 and all(c.get("info") == "native 64" for c in sliders)  # txt2img and img2img
    assert {c.get("elem_id") for c in components} >= {"txt2img_size_hint", "img2img_size_hint"}


def test_controls_carry_the_labels_users_know_and_list_every_sampler(ui_url):
    components = _components(ui_url)
    labels = {c.get("label") for c in components}
    for label in (
        "Prompt",
        "Negative prompt",
        "Sampler",
        "Schedule type",
        "Steps",
        "CFG scale",
        "Width",
        "Height",
        "Seed",
        "Batch count",
        "Batch size",
        "Denoising strength",
        "Stable Diffusion checkpoint",
    ):
        assert label in labels, label
    buttons = {c.get("value") for c in components if c["type"] == "button"}
    assert {"Generate", "Interrupt", "Skip", "Random", "Reuse", "Send to img2img", "Load", "Unload"} <= buttons
    by_id = {c.get("elem_id"): c for c in components}
    for tab in ("txt2img", "img2img"):
        assert [v for v, _ in by_id[f"{tab}_sampler"]["choices"]] == ["Euler a", "Euler", "DDIM"]
        schedules = [v for v, _ in by_id[f"{tab}_scheduler"]["choices"]]
        assert schedules[:3] == ["Automatic", "Karras", "Exponential"] and "Align Your Steps" in schedules
    assert [v for v, _ in by_id["model_checkpoint"]["choices"]] == ["tiny", "big", "broken"]
    # The settings start at what models.yaml recommends for the default model.
    for tab in ("txt2img", "img2img"):
        recommended = [by_id[f"{tab}_{key}"]["value"] for key in ("sampler", "scheduler", "steps", "cfg_scale")]
        assert recommended == ["Euler", "Karras", 6, 5.5]
    tabs = [c.get("label") for c in components if c["type"] == "tabitem"]
    assert {"txt2img", "img2img", "Inpaint", "PNG Info", "Models"} <= set(tabs)


def test_txt2img_endpoint_returns_images_with_parameters(ui_url, fake_service):
    client = gradio_client.Client(ui_url, verbose=False)
    gallery, info, status, _preview = client.predict(**TXT2IMG, api_name="/txt2img")
    assert len(gallery) == 2
    first, second = (_pixels(item["image"]) for item in gallery)
    assert first.shape == (64, 64, 3) and first.std() > 20 and np.abs(first - second).mean() > 20
    assert [item["caption"] for item in gallery] == ["seed 42", "seed 43"]
    assert parse_infotext(info)["Seed"] == "42" and info.startswith("a cat")
    # Downloaded PNGs keep the infotext in their parameters chunk.
    assert read_parameters(gallery[1]["image"]).endswith("Seed: 43, Size: 64x64")
    assert 'data-state="done"' in status and "2 images" in status
    request = fake_service.submitted[-1].request
    assert (request.sampler_name, request.scheduler, request.steps, request.cfg_scale) == ("Euler", "Karras", 3, 6.5)
    assert (request.negative_prompt, request.batch_size, request.n_iter) == ("blurry", 2, 1)
    assert fake_service.submitted[-1].model_name == "tiny"


def test_img2img_and_inpaint_endpoints_send_image_and_mask(ui_url, fake_service, tmp_path: Path):
    init_path, mask_path = tmp_path / "init.png", tmp_path / "mask.png"
    Image.new("RGB", (64, 64), (10, 200, 30)).save(init_path)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    mask.save(mask_path)
    client = gradio_client.Client(ui_url, verbose=False)
    common = {k: v for k, v in TXT2IMG.items() if k != "batch_size"} | dict(
        batch_size=1,
        denoising_strength=0.6,
        resize_mode="Just resize",
        mask_blur=2,
        mask_mode="Inpaint masked",
        inpainting_fill="original",
    )
    image = gradio_client.handle_file(str(init_path))
    none = {"inpaint_image": None, "inpaint_mask": None}
    gallery, info, _, _ = client.predict(mode="img2img", init_image=image, **none, **common, api_name="/img2img")
    request = fake_service.submitted[-1].request.img2img
    assert len(gallery) == 1 and request is not None and request.mask is None
    assert request.denoising_strength == 0.6 and request.init_images[0].getpixel((5, 5)) == (10, 200, 30)

    mask_file = gradio_client.handle_file(str(mask_path))
    client.predict(
        mode="inpaint", init_image=image, inpaint_image=None, inpaint_mask=mask_file, **common, api_name="/img2img"
    )
    request = fake_service.submitted[-1].request.img2img
    assert (
        request is not None
        and request.mask is not None
        and request.mask.getpixel((5, 5)) == 255
        and request.mask.getpixel((60, 5)) == 0
    )
    assert request.mask_blur == 2 and request.inpainting_fill == 1 and request.inpainting_mask_invert == 0


def test_img2img_without_image_is_a_readable_error(ui_url):
    client = gradio_client.Client(ui_url, verbose=False)
    with pytest.raises(Exception, match="Upload an image first"):
        client.predict(
            mode="img2img", init_image=None, inpaint_image=None, inpaint_mask=None, **TXT2IMG, api_name="/img2img"
        )


def test_invalid_settings_become_a_readable_error_and_the_ui_keeps_working(ui_url):
    client = gradio_client.Client(ui_url, verbose=False)
    with pytest.raises(Exception, match="width: must be a multiple of 8"):
        client.predict(**(TXT2IMG | {"width": 100}), api_name="/txt2img")
    with pytest.raises(Exception, match="Nope is not in the list of choices"):
        client.predict(**(TXT2IMG | {"sampler_name": "Nope"}), api_name="/txt2img")
    gallery, *_ = client.predict(**TXT2IMG, api_name="/txt2img")
    assert len(gallery) == 2


@pytest.mark.slow
def test_a_failing_job_ends_with_its_message_and_the_queue_goes_on(ui_url):
    client = gradio_client.Client(ui_url, verbose=False)
    with pytest.raises(Exception, match="the VAE decoded NaNs; try --precision fp32"):
        client.predict(**(TXT2IMG | {"prompt": "explode"}), api_name="/txt2img")
    gallery, info, status, _ = client.predict(**TXT2IMG, api_name="/txt2img")
    assert len(gallery) == 2 and 'data-state="done"' in status


@pytest.mark.slow
def test_progress_is_streamed_while_the_job_runs(fake_service):
    fake_service.step_seconds = 0.05
    with serving(fake_service) as url:
        client = gradio_client.Client(url, verbose=False)
        job = client.submit(**(TXT2IMG | {"steps": 8, "batch_size": 1}), api_name="/txt2img")
        job.result(timeout=30)
        statuses = [out[2] for out in job.outputs()]
    running = [s for s in statuses if 'data-state="running"' in s]
    assert len(running) >= 3 and any("Step 8/8" in s or "Step 7/8" in s for s in running)
    assert "ETA" in running[-1] and 'data-state="done"' in statuses[-1]


@pytest.mark.slow
def test_interrupt_stops_only_the_callers_own_job(fake_service):
    fake_service.step_seconds = 0.03
    with serving(fake_service) as url:
        owner, stranger = gradio_client.Client(url, verbose=False), gradio_client.Client(url, verbose=False)
        # 150 steps (4.5 s): room for two round trips through Gradio on a loaded machine.
        job = owner.submit(**(TXT2IMG | {"steps": 150, "batch_size": 1}), api_name="/txt2img")
        while fake_service.submitted == [] or fake_service.submitted[-1].progress is None:
            time.sleep(0.01)
        stranger.predict(api_name="/txt2img_interrupt")  # another browser's Interrupt: not this job
        time.sleep(0.1)
        assert not fake_service.submitted[-1].control.interrupted
        owner.predict(api_name="/txt2img_interrupt")
        gallery, _, status, _ = job.result(timeout=30)
    stopped = fake_service.submitted[-1].progress.step
    assert 'data-state="interrupted"' in status and f"at step {stopped}/150" in status and stopped < 150
    assert gallery == []


@pytest.mark.slow
def test_png_info_endpoint_reads_the_parameters_chunk(ui_url, tmp_path: Path):
    from PIL.PngImagePlugin import PngInfo

    meta = PngInfo()
    meta.add_text(
        "parameters", "a dog\nNegative prompt: ugly\nSteps: 12, Sampler: DDIM, CFG scale: 5, Seed: 9, Size: 64x96"
    )
    path = tmp_path / "in.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=meta)
    client = gradio_client.Client(ui_url, verbose=False)
    text, fields = client.predict(gradio_client.handle_file(str(path)), api_name="/png_info")
    assert text.startswith("a dog") and fields["Sampler"] == "DDIM" and fields["Size-2"] == "96"
    assert fields["Negative prompt"] == "ugly"


@pytest.mark.slow
def test_gradio_auth_refuses_anonymous_clients_and_admits_logged_in_ones(fake_service):
    with serving(fake_service, auth=[("alice", "s3cret")]) as url:
        assert httpx.get(url + "config").status_code == 401
        assert httpx.post(url + "gradio_api/call/txt2img", json={"data": []}).status_code == 401
        with pytest.raises(AuthenticationError, match="credentials were not provided"):
            gradio_client.Client(url, verbose=False)
        with pytest.raises(ValueError, match="Could not login"):
            gradio_client.Client(url, auth=("alice", "wrong"), verbose=False)
        client = gradio_client.Client(url, auth=("alice", "s3cret"), verbose=False)
        gallery, *_ = client.predict(**TXT2IMG, api_name="/txt2img")
        gallery_img2img, *_ = client.predict(
            mode="img2img",
            init_image=gradio_client.handle_file(gallery[0]["image"]),
            inpaint_image=None,
            inpaint_mask=None,
            **(TXT2IMG | {"batch_size": 1}),
            api_name="/img2img",
        )
    assert len(gallery) == 2 and len(gallery_img2img) == 1


@pytest.mark.slow
def test_two_clients_at_once_both_get_their_images(fake_service):
    fake_service.step_seconds = 0.02
    with serving(fake_service) as url:
        first, second = (gradio_client.Client(url, verbose=False) for _ in range(2))
        a = first.submit(**(TXT2IMG | {"prompt": "first", "seed": 1, "batch_size": 1}), api_name="/txt2img")
        b = second.submit(**(TXT2IMG | {"prompt": "second", "seed": 2, "batch_size": 1}), api_name="/txt2img")
        out_a, out_b = a.result(timeout=30), b.result(timeout=30)
    assert out_a[1].startswith("first") and out_b[1].startswith("second")
    assert len(out_a[0]) == len(out_b[0]) == 1

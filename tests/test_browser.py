"""End to end: `python launch.py` as a subprocess with a real (tiny) model, driven by a real Chromium and by
`gradio_client`.

The model is the bundled demo model when `models.yaml` lists it and its files exist, else the random-weight
`tiny_checkpoint` fixture (64x64 images): either way generation takes seconds on a CPU. Screenshots go to a
temporary folder; ``--update-screenshots`` writes them into docs/screenshots/ for the README instead. Every
server started here is killed in a ``finally``.

Run: ``OMP_NUM_THREADS=1 pytest tests/test_browser.py -m "browser or slow" -x -q``
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.support.browser import chromium, pick, set_number

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 180.0
USER, PASSWORD = "alice", "wonderland"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A running ``launch.py`` subprocess and everything it printed."""

    process: subprocess.Popen
    url: str
    outputs: Path
    lines: list[str] = field(default_factory=list)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


def _pump(stream: io.TextIOBase, lines: list[str]) -> None:
    for line in stream:
        lines.append(line.rstrip("\n"))


def start_server(models_yaml: Path, outputs: Path, *args: str, env: dict[str, str] | None = None) -> Server:
    """Start ``launch.py`` on a free port and wait until it answers (or fail with its output); ``env`` is
    added to (and overrides) the environment, e.g. ``HF_HUB_OFFLINE=0`` with ``HF_ENDPOINT`` for a stand-in hub."""
    port = free_port()
    env = (
        os.environ
        | {
            "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
            "GRADIO_ANALYTICS_ENABLED": "False",
            "PYTHONUNBUFFERED": "1",
        }
        | (env or {})
    )
    command = [
        sys.executable,
        str(ROOT / "launch.py"),
        "--port",
        str(port),
        "--models",
        str(models_yaml),
        "--outputs",
        str(outputs),
        "--device",
        "cpu",
        *args,
    ]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    server = Server(process, f"http://127.0.0.1:{port}/", outputs)
    threading.Thread(target=_pump, args=(process.stdout, server.lines), daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"launch.py exited with {process.returncode}:\n{server.output}")
        if any("Running on local URL" in line for line in server.lines):
            return server
        time.sleep(0.2)
    stop_server(server)
    raise AssertionError(f"launch.py did not start within {START_TIMEOUT} s:\n{server.output}")


def stop_server(server: Server) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=15)


def demo_models_yaml(folder: Path) -> Path | None:
    """A models.yaml with only the bundled demo model (from the repository's models.yaml), or None.

    Only that entry is kept so that no test ever falls back to a hub download.
    """
    bundled = ROOT / "models.yaml"
    demo_dir = (ROOT / "models" / "demo").resolve()
    if not bundled.is_file() or not demo_dir.is_dir():
        return None
    from webui.models.registry import load_registry

    for entry in load_registry(bundled).entries:
        if entry.path is None or not entry.path.exists() or demo_dir not in (entry.path, *entry.path.parents):
            continue
        lines = [
            "models:",
            f"  - name: {json.dumps(entry.name)}",
            f"    path: {json.dumps(str(entry.path))}",
            "    default: true",
        ]
        if entry.tokenizer:
            lines.append(f"    tokenizer: {json.dumps(entry.tokenizer)}")
        for key in ("width", "height", "sampler", "scheduler", "steps", "cfg_scale", "description", "examples"):
            if getattr(entry, key, None):
                lines.append(f"    {key}: {json.dumps(getattr(entry, key))}")
        path = folder / "models.yaml"
        path.write_text("\n".join(lines) + "\n")
        return path
    return None


@pytest.fixture(scope="module")
def models_yaml(request, tmp_path_factory) -> Path:
    """The bundled demo model when it is there (set SD_WEBUI_TEST_TINY=1 to skip it), else the tiny fixture."""
    if not os.environ.get("SD_WEBUI_TEST_TINY"):
        demo = demo_models_yaml(tmp_path_factory.mktemp("demo_registry"))
        if demo is not None:
            return demo
    return request.getfixturevalue("tiny_checkpoint").models_yaml


@pytest.fixture(scope="module")
def server(models_yaml, tmp_path_factory) -> Iterator[Server]:
    running = start_server(models_yaml, tmp_path_factory.mktemp("outputs"))
    try:
        yield running
    finally:
        stop_server(running)


@pytest.fixture(scope="module")
def auth_server(models_yaml, tmp_path_factory) -> Iterator[Server]:
    running = start_server(models_yaml, tmp_path_factory.mktemp("outputs"), "--gradio-auth", f"{USER}:{PASSWORD}")
    try:
        yield running
    finally:
        stop_server(running)


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:  # one browser for the module; each test gets a fresh context
        yield launched


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1100})
    try:
        yield context.new_page()
    finally:
        context.close()


# --- browser helpers ----------------------------------------------------------------------------


def generate_in_browser(page, prompt: str, sampler: str, steps: int = 4) -> str:
    """Fill txt2img, click Generate, wait for the gallery; returns the parameters text."""
    page.locator("#txt2img_prompt textarea").fill(prompt)
    pick(page, "txt2img_sampler", sampler)
    set_number(page, "txt2img_steps", steps)
    set_number(page, "txt2img_seed", 1234)
    page.locator("#txt2img_generate").click()
    page.locator("#txt2img_gallery img:visible").first.wait_for(timeout=120_000)
    info = page.locator("#txt2img_info textarea")
    page.wait_for_function("el => el.value.includes('Steps:')", arg=info.element_handle(), timeout=30_000)
    return info.input_value()


def gallery_image(page, tab: str = "txt2img") -> Image.Image:
    src = page.locator(f"#{tab}_gallery img:visible").first.get_attribute("src")
    answer = page.request.get(src)
    assert answer.ok, src
    return Image.open(io.BytesIO(answer.body())).convert("RGB")


def assert_not_blank(image: Image.Image) -> None:
    pixels = np.asarray(image, dtype=np.float32)
    assert pixels.std() > 2.0, f"image looks blank (std {pixels.std():.2f})"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 16


# --- browser tests ------------------------------------------------------------------------------------


@pytest.mark.browser
@pytest.mark.slow
def test_browser_txt2img_prompt_sampler_generate_shows_image_and_parameters(server, page, screenshots_dir):
    page.goto(server.url)
    # A prompt the bundled demo model knows, with its recommended sampler (the screenshot is in the README).
    info = generate_in_browser(page, "a yellow star on a blue background", "DPM++ 2M", steps=8)
    assert info.startswith("a yellow star on a blue background")
    assert "Sampler: DPM++ 2M" in info and "Seed: 1234" in info and "Steps: 8" in info
    image = gallery_image(page)
    assert_not_blank(image)
    assert "Done" in page.locator("#txt2img_progress").inner_text()
    page.screenshot(path=str(screenshots_dir / "txt2img.png"), full_page=True)
    saved = list((server.outputs / "txt2img").rglob("*.png"))
    assert saved, "the image was not saved under --outputs"
    # With the model loaded, the prompt box counts tokens while typing (A1111's "n/75").
    page.locator("#txt2img_prompt textarea").fill("a red cat on a mat")
    counter = page.locator("#txt2img_token_counter")
    page.wait_for_function("el => /Prompt: \\d+\\/75/.test(el.innerText)", arg=counter.element_handle(), timeout=10_000)


@pytest.mark.browser
@pytest.mark.slow
def test_browser_login_page_then_generate(auth_server, page, screenshots_dir):
    assert httpx.get(auth_server.url + "config").status_code == 401
    page.goto(auth_server.url)
    page.get_by_label("username").fill(USER)
    page.get_by_label("password").fill(PASSWORD)
    page.screenshot(path=str(screenshots_dir / "login.png"))
    page.get_by_role("button", name="Login").click()
    page.locator("#txt2img_prompt textarea").wait_for(timeout=30_000)
    info = generate_in_browser(page, "a blue dog", "Euler")
    assert "Sampler: Euler," in info
    assert_not_blank(gallery_image(page))


@pytest.mark.browser
@pytest.mark.slow
def test_browser_interrupt_stops_a_long_run_within_a_step(server, page, screenshots_dir):
    page.goto(server.url)
    page.locator("#txt2img_prompt textarea").fill("a long run")
    # A large image makes every step slow enough (about a second) to see where the run stops.
    set_number(page, "txt2img_steps", 40)
    set_number(page, "txt2img_width", 512)
    set_number(page, "txt2img_height", 512)
    page.locator("#txt2img_generate").click()
    progress = page.locator("#txt2img_progress")
    page.wait_for_function(
        "el => /Step ([2-9]|\\d\\d+)\\//.test(el.innerText)", arg=progress.element_handle(), timeout=120_000
    )
    page.locator("#txt2img_preview img").wait_for(timeout=10_000)  # the live preview is shown
    page.screenshot(path=str(screenshots_dir / "progress.png"))
    clicked_at = time.monotonic()
    step_at_click = int(re.search(r"Step (\d+)/", progress.inner_text()).group(1))
    page.locator("#txt2img_interrupt").click()
    page.wait_for_function("el => el.innerText.includes('Interrupted')", arg=progress.element_handle(), timeout=60_000)
    elapsed = time.monotonic() - clicked_at
    text = progress.inner_text()
    stopped, total = map(int, re.search(r"at step (\d+)/(\d+)", text).groups())
    assert total == 40 and stopped < total
    # The status line lags the worker by one poll, so allow the step it was on plus the one it finished.
    assert stopped <= step_at_click + 2, (step_at_click, text)
    assert elapsed < 30
    # The UI is usable again: a new run works (reload for the default size).
    page.goto(server.url)
    info = generate_in_browser(page, "after interrupt", "Euler", steps=3)
    assert info.startswith("after interrupt")


@pytest.mark.browser
@pytest.mark.slow
def test_browser_send_to_img2img_png_info_and_inpaint(server, page, screenshots_dir, tmp_path):
    page.goto(server.url)
    info = generate_in_browser(page, "a green tree", "Euler")
    # Gallery -> Send to img2img: image and parameters arrive in the img2img tab.
    page.locator("#txt2img_send_to_img2img").click()
    prompt = page.locator("#img2img_prompt textarea")
    page.wait_for_function("el => el.value === 'a green tree'", arg=prompt.element_handle(), timeout=10_000)
    page.locator("#img2img_image img:visible").first.wait_for(timeout=10_000)
    set_number(page, "img2img_denoising_strength", 0.6)
    page.locator("#img2img_generate").click()
    page.locator("#img2img_gallery img:visible").first.wait_for(timeout=120_000)
    img2img_info = page.locator("#img2img_info textarea")
    page.wait_for_function(
        "el => el.value.includes('Denoising strength: 0.6')", arg=img2img_info.element_handle(), timeout=30_000
    )
    assert_not_blank(gallery_image(page, "img2img"))
    page.screenshot(path=str(screenshots_dir / "img2img.png"), full_page=True)

    # PNG Info: drop a saved output, read its parameters, send them to txt2img.
    saved = sorted((server.outputs / "txt2img").rglob("*.png"), key=lambda p: p.stat().st_mtime)[-1]
    page.get_by_role("tab", name="txt2img").click()
    page.locator("#txt2img_prompt textarea").fill("")
    page.get_by_role("tab", name="PNG Info").click()
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(saved))
    parameters = page.locator("#pnginfo_parameters textarea")
    page.wait_for_function("el => el.value.includes('Steps:')", arg=parameters.element_handle(), timeout=30_000)
    assert parameters.input_value() == info
    page.screenshot(path=str(screenshots_dir / "png_info.png"), full_page=True)
    page.locator("#pnginfo_send_to_txt2img").click()
    txt2img_prompt = page.locator("#txt2img_prompt textarea")
    page.wait_for_function("el => el.value === 'a green tree'", arg=txt2img_prompt.element_handle(), timeout=10_000)

    # Inpaint: upload the image, paint a stroke on it, generate.
    page.get_by_role("tab", name="img2img").first.click()
    page.get_by_role("tab", name="Inpaint").click()
    editor = page.locator("#img2img_inpaint")
    # One upload, even while the editor is still starting: webui.ui.img2img.UPLOAD_GUARD_JS holds it till then.
    editor.locator("input[type=file]").set_input_files(str(saved))
    editor.get_by_text("Upload an image").wait_for(state="hidden", timeout=60_000)
    page.wait_for_timeout(1000)
    canvas = editor.locator("canvas").first
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x - 30, y)
    page.mouse.down()
    page.mouse.move(x + 30, y + 10, steps=12)
    page.mouse.up()
    page.wait_for_timeout(500)
    page.locator("#img2img_generate").click()
    page.wait_for_function("el => el.value.includes('Mask blur')", arg=img2img_info.element_handle(), timeout=120_000)
    assert "Done" in page.locator("#img2img_progress").inner_text()
    page.screenshot(path=str(screenshots_dir / "inpaint.png"), full_page=True)


@pytest.mark.browser
@pytest.mark.slow
def test_browser_skip_abandons_the_current_batch_and_goes_on(server, page):
    page.goto(server.url)
    page.locator("#txt2img_prompt textarea").fill("skip the first")
    set_number(page, "txt2img_steps", 100)
    set_number(page, "txt2img_batch_count", 2)
    set_number(page, "txt2img_seed", 500)
    page.locator("#txt2img_generate").click()
    progress = page.locator("#txt2img_progress")
    page.wait_for_function(
        "el => el.innerText.includes('image 1/2') && el.innerText.includes('/200')",
        arg=progress.element_handle(),
        timeout=120_000,
    )
    page.locator("#txt2img_skip").click()
    page.wait_for_function("el => el.innerText.includes('Done')", arg=progress.element_handle(), timeout=120_000)
    assert "Done: 1 image" in progress.inner_text()
    info = page.locator("#txt2img_info textarea").input_value()
    assert "Seed: 501" in info  # the second batch's image


@pytest.mark.browser
@pytest.mark.slow
def test_closing_a_tab_mid_run_does_not_break_the_queue(server, browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1100})
    try:
        page = context.new_page()
        page.goto(server.url)
        page.locator("#txt2img_prompt textarea").fill("abandoned")
        set_number(page, "txt2img_steps", 150)
        page.locator("#txt2img_generate").click()
        page.wait_for_function(
            "el => /Step \\d+\\//.test(el.innerText)",
            arg=page.locator("#txt2img_progress").element_handle(),
            timeout=120_000,
        )
    finally:
        context.close()
    gallery, info, *_ = _client(server.url).predict(
        **(TXT2IMG | {"prompt": "after the tab closed"}), api_name="/txt2img"
    )
    assert len(gallery) == 1 and info.startswith("after the tab closed")
    assert server.process.poll() is None


@pytest.mark.browser
@pytest.mark.slow
def test_browser_models_tab_lists_status_and_loads_unloads(server, page, screenshots_dir):
    page.goto(server.url)
    page.get_by_role("tab", name="Models").click()
    table = page.locator("#models_table")
    name = page.locator("#model_checkpoint input").first.input_value()
    assert name and name in table.inner_text()
    message = page.locator("#models_message")
    page.locator("#models_unload").click()
    page.wait_for_function("(el) => el.innerText.includes('Unloaded')", arg=message.element_handle(), timeout=30_000)
    assert "not loaded" in table.inner_text()
    page.locator("#models_load").click()
    page.wait_for_function("(el) => el.innerText.includes('Loaded')", arg=message.element_handle(), timeout=120_000)
    page.wait_for_function(
        "(el) => el.innerText.includes('loaded (current)')", arg=table.element_handle(), timeout=10_000
    )
    page.locator("#models_refresh").click()
    page.wait_for_function(
        "(el) => el.innerText.includes('Re-read models.yaml: 1 model')", arg=message.element_handle(), timeout=30_000
    )
    page.screenshot(path=str(screenshots_dir / "models.png"))


# --- gradio_client against the real server --------------------------------------------------------------


def _client(url: str, auth: tuple[str, str] | None = None):
    gradio_client = pytest.importorskip("gradio_client")
    return gradio_client.Client(url, auth=auth, verbose=False)


TXT2IMG = dict(
    prompt="a small house",
    negative_prompt="",
    sampler_name="Euler a",
    scheduler="Automatic",
    steps=3,
    cfg_scale=7,
    width=64,
    height=64,
    seed=7,
    n_iter=1,
    batch_size=1,
)


def _img2img_args(image_path: str) -> dict:
    from gradio_client import handle_file

    return TXT2IMG | dict(
        mode="img2img",
        init_image=handle_file(image_path),
        inpaint_image=None,
        inpaint_mask=None,
        denoising_strength=0.5,
        resize_mode="Just resize",
        mask_blur=4,
        mask_mode="Inpaint masked",
        inpainting_fill="original",
    )


@pytest.mark.slow
def test_gradio_client_txt2img_and_img2img(server):
    client = _client(server.url)
    gallery, info, *_ = client.predict(**TXT2IMG, api_name="/txt2img")
    assert len(gallery) == 1 and "Seed: 7" in info
    assert_not_blank(Image.open(gallery[0]["image"]).convert("RGB"))
    gallery2, info2, *_ = client.predict(**_img2img_args(gallery[0]["image"]), api_name="/img2img")
    assert len(gallery2) == 1 and "Denoising strength: 0.5" in info2


@pytest.mark.slow
def test_gradio_client_needs_login_when_auth_is_on(auth_server):
    from gradio_client.exceptions import AuthenticationError

    with pytest.raises(AuthenticationError):
        _client(auth_server.url)
    assert httpx.post(auth_server.url + "gradio_api/call/txt2img", json={"data": []}).status_code == 401
    client = _client(auth_server.url, auth=(USER, PASSWORD))
    gallery, info, *_ = client.predict(**TXT2IMG, api_name="/txt2img")
    assert len(gallery) == 1 and "Seed: 7" in info
    gallery2, *_ = client.predict(**_img2img_args(gallery[0]["image"]), api_name="/img2img")
    assert len(gallery2) == 1


@pytest.mark.slow
def test_two_clients_at_once_both_get_images_in_order(server):
    first, second = _client(server.url), _client(server.url)
    a = first.submit(**(TXT2IMG | {"prompt": "first", "steps": 30, "seed": 101}), api_name="/txt2img")
    time.sleep(0.5)
    b = second.submit(**(TXT2IMG | {"prompt": "second", "steps": 3, "seed": 202}), api_name="/txt2img")
    out_a, out_b = a.result(timeout=180), b.result(timeout=180)
    assert out_a[1].startswith("first") and out_b[1].startswith("second")
    assert len(out_a[0]) == len(out_b[0]) == 1
    # The second client saw its place in the queue while the first one ran.
    assert any("In queue: position 1" in out[2] for out in b.outputs())
    # The service ran them in submission order. File names sort by the second a job was submitted, and these
    # two may share one (then by job id), so the order is that of writing: b's file comes a whole job later.
    ours = [p for p in (server.outputs / "txt2img").rglob("*.png") if p.name.endswith(("-101.png", "-202.png"))]
    written = sorted(ours, key=lambda p: p.stat().st_mtime_ns)
    assert [p.name.rsplit("-", 1)[1] for p in written] == ["101.png", "202.png"], [p.name for p in written]


@pytest.mark.slow
def test_share_with_auth_without_internet_keeps_serving_locally(models_yaml, tmp_path):
    running = start_server(models_yaml, tmp_path / "outputs", "--share", "--gradio-auth", f"{USER}:{PASSWORD}")
    try:
        assert httpx.get(running.url).status_code == 200
        client = _client(running.url, auth=(USER, PASSWORD))
        gallery, *_ = client.predict(**TXT2IMG, api_name="/txt2img")
        assert len(gallery) == 1
    finally:
        stop_server(running)
    share_lines = [line for line in running.lines if "share link" in line or "public URL" in line]
    assert len(share_lines) == 1, running.output


@pytest.mark.slow
def test_listen_binds_all_interfaces_and_api_needs_its_password(models_yaml, tmp_path):
    running = start_server(
        models_yaml,
        tmp_path / "outputs",
        "--listen",
        "--gradio-auth",
        f"{USER}:{PASSWORD}",
        "--api",
        "--api-auth",
        "api:key",
    )
    try:
        port = int(running.url.rstrip("/").rsplit(":", 1)[1])
        listening = set()
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                listening.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
        assert listening == {"0.0.0.0"}
        api = running.url + "sdapi/v1/"
        assert httpx.get(api + "samplers").status_code == 401
        assert httpx.get(api + "samplers", auth=(USER, PASSWORD)).status_code == 401  # UI login is not API auth
        body = {"prompt": "api", "steps": 2, "width": 64, "height": 64, "seed": 3, "sampler_name": "Euler"}
        answer = httpx.post(api + "txt2img", json=body, auth=("api", "key"), timeout=120)
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["images"]) == 1
    finally:
        stop_server(running)
    assert "bound to 0.0.0.0" in running.output and "REST API" in running.output


# --- inpainting: Send to inpaint, the mask brush, uploads into the mask editor ------------------------------


def newest_output(server: Server, kind: str) -> Path:
    return sorted((server.outputs / kind).rglob("*.png"), key=lambda p: p.stat().st_mtime)[-1]


def wait_for_editor_image(page, timeout: float = 60_000) -> None:
    """Wait until the mask editor is ready (its toolbar is drawn) and shows an image (no upload prompt)."""
    editor = page.locator("#img2img_inpaint")
    editor.locator(".toolbar-wrap").first.wait_for(timeout=timeout)
    editor.get_by_text("Upload an image").wait_for(state="hidden", timeout=timeout)
    page.wait_for_timeout(500)  # the zoom-to-fit animation


def paint_stroke(page, half_width: float = 40) -> None:
    """One horizontal stroke through the middle of the mask editor's canvas (where the image is centred)."""
    canvas = page.locator("#img2img_inpaint canvas").first
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x - half_width, y)
    page.mouse.down()
    page.mouse.move(x + half_width, y, steps=12)
    page.mouse.up()
    page.mouse.move(box["x"] + 2, box["y"] + box["height"] - 2)  # the brush cursor away from the stroke
    page.wait_for_timeout(500)


def inpaint_in_browser(page, server: Server) -> Image.Image:
    """Generate from the Inpaint sub-tab without mask blur; returns the saved result."""
    set_number(page, "img2img_mask_blur", 0)
    set_number(page, "img2img_steps", 4)
    page.locator("#img2img_generate").click()
    info = page.locator("#img2img_info textarea")
    page.wait_for_function("el => el.value.includes('Mask blur: 0')", arg=info.element_handle(), timeout=120_000)
    return Image.open(newest_output(server, "img2img")).convert("RGB")


def assert_repainted_only_under_a_thin_stroke(result: Image.Image, source: Image.Image) -> None:
    """The result is the source image, pixel for pixel, except in a thin band (one stroke of a brush a
    twentieth of the image wide in radius) that was repainted."""
    assert result.size == source.size
    changed = np.abs(np.asarray(result, np.int16) - np.asarray(source, np.int16)).max(axis=2) > 0
    rows = np.flatnonzero(changed.any(axis=1))
    assert rows.size, "nothing was repainted: the stroke did not reach the server"
    band = 2 * (min(source.size) // 20) + 1 + 4  # the brush's diameter plus antialiasing
    assert rows.max() - rows.min() + 1 <= band, f"repainted rows {rows.min()}..{rows.max()}: brush too big"
    assert changed.mean() < 0.25, f"{changed.mean():.0%} of the image was repainted"


@pytest.mark.browser
@pytest.mark.slow
def test_browser_send_to_inpaint_from_txt2img_fills_the_editor_and_the_settings(server, page, screenshots_dir):
    page.goto(server.url)
    info = generate_in_browser(page, "a yellow star on a blue background", "Euler", steps=4)
    source = Image.open(newest_output(server, "txt2img")).convert("RGB")
    page.locator("#txt2img_send_to_inpaint").click()
    prompt = page.locator("#img2img_prompt textarea")
    page.wait_for_function(
        "el => el.value === 'a yellow star on a blue background'", arg=prompt.element_handle(), timeout=10_000
    )
    assert page.locator("#img2img_seed input").first.input_value() == "1234" and "Seed: 1234" in info
    wait_for_editor_image(page)  # the Inpaint sub-tab is shown, with the image in its editor
    paint_stroke(page)
    # The editor's image is what generates: same size, and outside the stroke the very same pixels.
    assert_repainted_only_under_a_thin_stroke(inpaint_in_browser(page, server), source)
    assert "Done" in page.locator("#img2img_progress").inner_text()
    page.screenshot(path=str(screenshots_dir / "send-to-inpaint.png"), full_page=True)


@pytest.mark.browser
@pytest.mark.slow
def test_browser_inpaint_stroke_is_semi_transparent_over_the_image(server, page, tmp_path, screenshots_dir):
    # Left half blue, right half green: under a see-through mask the stroke takes two colours, under an
    # opaque one a single colour.
    blue, green = (30, 60, 200), (40, 180, 60)
    source = Image.new("RGB", (64, 64), blue)
    source.paste(green, (32, 0, 64, 64))
    source.save(tmp_path / "halves.png")
    page.goto(server.url)
    page.get_by_role("tab", name="img2img").first.click()
    page.get_by_role("tab", name="Inpaint").click()
    page.locator("#img2img_inpaint").locator(".toolbar-wrap").first.wait_for(timeout=60_000)
    page.locator("#img2img_inpaint input[type=file]").set_input_files(str(tmp_path / "halves.png"))
    wait_for_editor_image(page)
    paint_stroke(page, half_width=80)
    shot = screenshots_dir / "inpaint-stroke.png"
    page.locator("#img2img_inpaint").screenshot(path=str(shot))

    pixels = np.asarray(Image.open(shot).convert("RGB"), np.int16)
    near = lambda colour: np.abs(pixels - np.array(colour)).max(axis=2) <= 12  # noqa: E731
    image_area = near(blue) | near(green)
    ys, xs = np.nonzero(image_area)
    top, bottom, left, right = ys.min(), ys.max(), xs.min(), xs.max()
    assert right - left > 100, "the image is not shown in the editor"
    inside = np.zeros_like(image_area)
    inside[top : bottom + 1, left : right + 1] = True
    painted = inside & ~image_area
    middle = (left + right) // 2
    left_paint = pixels[painted & (np.arange(pixels.shape[1]) < middle - 4)]
    right_paint = pixels[painted & (np.arange(pixels.shape[1]) > middle + 4)]
    assert len(left_paint) > 50 and len(right_paint) > 50, "no stroke over both halves"
    left_colour, right_colour = np.median(left_paint, axis=0), np.median(right_paint, axis=0)
    # The paint is visible over each half, and each half's colour is visible through the paint.
    assert np.abs(left_colour - blue).max() > 40 and np.abs(right_colour - green).max() > 40
    assert np.abs(left_colour - right_colour).max() > 40, (left_colour, right_colour, "an opaque mask")


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.parametrize("how", ["file chooser", "drop"])
def test_browser_inpaint_upload_registers_on_the_first_try(server, page, tmp_path, how):
    # A file given to the editor the moment it appears, before its canvas is ready (seconds on a busy
    # machine): it must be taken as soon as the editor is ready, not lost.
    source = Image.fromarray(np.random.default_rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    source.save(tmp_path / "noise.png")
    page.goto(server.url)
    page.evaluate(
        """([data, how]) => {
          const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
          const file = new File([bytes], "noise.png", { type: "image/png" });
          const observer = new MutationObserver(() => {
            const editor = document.querySelector('#img2img_inpaint [data-testid="image"]');
            const input = editor && editor.querySelector("input[type=file]");
            if (!input) return;
            observer.disconnect();
            window.uploadedBeforeReady = !editor.querySelector(".toolbar-wrap");
            const transfer = new DataTransfer();
            transfer.items.add(file);
            if (how === "drop") {
              editor.dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true }));
            } else {
              input.files = transfer.files;
              input.dispatchEvent(new Event("change", { bubbles: true }));
            }
          });
          observer.observe(document.body, { childList: true, subtree: true });
        }""",
        [base64.b64encode((tmp_path / "noise.png").read_bytes()).decode(), how],
    )
    page.get_by_role("tab", name="img2img").first.click()
    page.get_by_role("tab", name="Inpaint").click()
    page.wait_for_function("() => window.uploadedBeforeReady !== undefined", timeout=30_000)
    assert page.evaluate("window.uploadedBeforeReady"), "the editor was ready already: nothing was tested"
    wait_for_editor_image(page)
    paint_stroke(page)
    assert_repainted_only_under_a_thin_stroke(inpaint_in_browser(page, server), source)


# --- choosing a model that is not on disk (a stand-in hub in this process) -------------------------------


def _dropdown_value(page) -> str:
    return page.locator("#model_checkpoint input").first.input_value()


def _wait_status(page, text: str, timeout: float = 60_000) -> str:
    status = page.locator("#model_status")
    try:
        page.wait_for_function(
            "([el, t]) => el.innerText.includes(t)", arg=[status.element_handle(), text], timeout=timeout
        )
    except Exception as exc:
        raise AssertionError(f"{text!r} not in the model status: {status.inner_text()!r}") from exc
    return status.inner_text()


@pytest.mark.browser
@pytest.mark.slow
def test_browser_hub_model_says_plan_shows_progress_cancels_and_fails_offline(tiny_checkpoint, page, tmp_path,
                                                                            screenshots_dir):  # fmt: skip
    from tests.support.hub_server import fake_hub

    models_yaml = tmp_path / "models.yaml"
    models_yaml.write_text(
        "models:\n"
        f"  - {{name: tiny, path: {tiny_checkpoint.path}, default: true, width: 64, height: 64}}\n"
        f"  - {{name: hub-tiny, repo: someone/tiny, file: tiny.safetensors, tokenizer: {tiny_checkpoint.tokenizer_dir},"
        " width: 128, height: 128}\n"
        "  - {name: typo, path: x.safetensors, sampler: DPM++2M}\n"
    )
    with ExitStack() as stack:
        hub_stack = stack.enter_context(ExitStack())
        hub = hub_stack.enter_context(fake_hub(chunk_size=64 * 1024, delay=0.1))  # ~20 s for 12 MB: time to cancel
        hub.add("someone/tiny", "tiny.safetensors", tiny_checkpoint.path.read_bytes())
        env = {"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_ENDPOINT": hub.url,
               "HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hf" / "hub")}  # fmt: skip
        server = start_server(models_yaml, tmp_path / "outputs", env=env)
        stack.callback(stop_server, server)
        page.goto(server.url)
        banner = page.locator("#models_problems")
        banner.wait_for(timeout=30_000)
        assert "models.yaml has 1 problem" in banner.inner_text() and "DPM++2M" in banner.inner_text()
        page.get_by_role("tab", name="Models").click()  # load the local model first: it is what stays
        assert "DPM++2M" in page.locator("#models_table").inner_text()
        page.locator("#models_load").click()
        message = page.locator("#models_message")
        page.wait_for_function("el => el.innerText.includes('Loaded')", arg=message.element_handle(), timeout=120_000)
        page.get_by_role("tab", name="txt2img").click()
        set_number(page, "txt2img_width", 192)  # the user's own size: a failed switch must keep it

        pick(page, "model_checkpoint", "hub-tiny")
        text = _wait_status(page, "downloads 11.7 MB")
        assert "from the Hugging Face hub (someone/tiny/tiny.safetensors)" in text
        text = _wait_status(page, "ETA")
        assert re.search(r"Downloading \S+ from someone/tiny: [\d.]+ (kB|MB) of 11\.7 MB \(\d+%\)", text), text
        cancel = page.locator("#model_cancel")
        assert cancel.is_visible()
        page.screenshot(path=str(screenshots_dir / "model_download_progress.png"))
        cancel.click()
        text = _wait_status(page, "cancelled", timeout=10_000)
        assert "Still using tiny" in text and _dropdown_value(page) == "tiny"
        assert not cancel.is_visible()
        assert page.locator("#txt2img_width input[type=number]").first.input_value() == "192"
        page.screenshot(path=str(screenshots_dir / "model_download_cancelled.png"))
        file_gets = [path for method, path in hub.requests if method == "GET" and path.endswith("tiny.safetensors")]
        assert len(file_gets) == 1, hub.requests  # one pick, one download (no second event on the blur)

        hub_stack.close()  # the stand-in hub is gone: the machine is "offline"
        pick(page, "model_checkpoint", "hub-tiny")
        text = _wait_status(page, "Could not load", timeout=60_000)
        assert "cannot be reached" in text and "To fix it" in text and "Still using tiny" in text, text
        assert "Traceback" not in text and _dropdown_value(page) == "tiny"
        assert page.locator("#txt2img_width input[type=number]").first.input_value() == "192"
        page.screenshot(path=str(screenshots_dir / "model_download_offline.png"))
        print("screenshots:", screenshots_dir)
    assert "Traceback" not in server.output, server.output


# --- a new user's first look (issue 21): header, status line, examples, seeds, gallery, PNG Info, Models tab ----

FIRST_LOOK_SHOTS = Path(tempfile.gettempdir()) / "sd-webui-first-look"
STATUS_LOADED = re.compile(r"^Model: \S+ · 64×64 · fp32 · cpu$")


def first_look_shot(target, name: str) -> Path:
    """Screenshot a page (whole) or an element into a temporary folder (never docs/); returns the file."""
    FIRST_LOOK_SHOTS.mkdir(parents=True, exist_ok=True)
    path = FIRST_LOOK_SHOTS / name
    if hasattr(target, "set_viewport_size"):
        target.screenshot(path=str(path), full_page=True)
    else:
        target.screenshot(path=str(path))
    return path


def wait_text(page, selector: str, pattern: str, timeout: float = 30_000) -> str:
    """Wait until the element's text matches the regular expression ``pattern``; returns the text.

    The element is looked up again on every check, so a re-rendered one is followed (a handle would go stale).
    """
    # The text that matched is returned from the same check: read again later, it may already carry a transient
    # Gradio overlay (a "0.1s" timer) or the next update.
    matched = page.wait_for_function(
        "([s, p]) => { const el = document.querySelector(s); const t = el ? el.innerText.trim() : '';"
        " return !!el && new RegExp(p).test(t) ? t : false; }",
        arg=[selector, pattern],
        timeout=timeout,
    )
    return str(matched.json_value())


def count_toasts(page, text: str) -> int:
    return page.evaluate("(t) => (window.__toasts || []).filter((x) => x.includes(t)).length", text)


def watch_toasts(page) -> None:
    """Record the text of every toast shown from now on (they disappear by themselves)."""
    page.evaluate("""() => {
      window.__toasts = [];
      new MutationObserver((records) => records.forEach((r) => r.addedNodes.forEach((n) => {
        if (n.nodeType !== 1) return;
        const toasts = n.matches(".toast-item") ? [n] : Array.from(n.querySelectorAll(".toast-item"));
        toasts.forEach((t) => window.__toasts.push(t.innerText));
      }))).observe(document.body, {childList: true, subtree: true});
    }""")


@pytest.mark.browser
@pytest.mark.slow
def test_browser_header_status_line_description_and_example_prompts(server, models_yaml, page):
    from webui.models.registry import load_registry

    entry = load_registry(models_yaml).default
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(server.url)
    assert "Stable Diffusion web UI" in page.locator("#sd_header").inner_text()
    # The status line follows the service by itself: unload in the Models tab, it says so.
    page.get_by_role("tab", name="Models").click()
    page.locator("#models_unload").click()
    wait_text(page, "#sd_status_line", "^Model: no model loaded$")
    page.get_by_role("tab", name="txt2img").click()
    if entry.description:
        assert entry.description[:40] in page.locator("#model_description").inner_text()
    if not entry.examples:
        pytest.skip("the test model's models.yaml entry lists no example prompts")
    buttons = page.locator("#model_examples button")
    assert [b.inner_text().strip() for b in buttons.all()] == list(entry.examples)
    first_look_shot(page, "header-no-model-1280.png")
    page.set_viewport_size({"width": 800, "height": 900})
    first_look_shot(page, "header-no-model-800.png")
    page.set_viewport_size({"width": 1280, "height": 900})
    buttons.nth(1).click()
    prompt = page.locator("#txt2img_prompt textarea")
    page.wait_for_function(
        "([el, p]) => el.value === p", arg=[prompt.element_handle(), entry.examples[1]], timeout=10_000
    )
    page.locator("#txt2img_generate").click()
    page.locator("#txt2img_gallery img:visible").first.wait_for(timeout=120_000)
    assert STATUS_LOADED.match(wait_text(page, "#sd_status_line", STATUS_LOADED.pattern))
    first_look_shot(page, "header-after-example-1280.png")


@pytest.mark.browser
@pytest.mark.slow
def test_browser_seed_buttons_are_words_with_tooltips(server, page):
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(server.url)
    for tab in ("txt2img", "img2img"):
        page.get_by_role("tab", name=tab).first.click()  # gradio renders a tab's content when it is first shown
        for button, word in (("random_seed", "Random"), ("reuse_seed", "Reuse")):
            element = page.locator(f"#{tab}_{button}")
            assert element.inner_text().strip() == word
            assert element.bounding_box()["width"] >= 50  # the word fits; an emoji without a font left an empty box
            assert "seed" in (element.get_attribute("title") or "").lower()
    for width in (1280, 800):  # Seed, Random and Reuse stay on one row
        page.set_viewport_size({"width": width, "height": 900})
        page.locator("#img2img_seed").scroll_into_view_if_needed()
        seed, random_, reuse = (
            page.locator(f"#img2img_{name}").bounding_box() for name in ("seed", "random_seed", "reuse_seed")
        )
        assert abs(seed["y"] - random_["y"]) < 2 and abs(seed["y"] - reuse["y"]) < 2, (width, seed, random_, reuse)
        FIRST_LOOK_SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(
            path=str(FIRST_LOOK_SHOTS / f"seed-buttons-{width}.png"),
            clip={
                "x": seed["x"],
                "y": seed["y"],
                "width": reuse["x"] + reuse["width"] - seed["x"],
                "height": seed["height"],
            },
        )


@pytest.mark.browser
@pytest.mark.slow
def test_browser_small_images_are_shown_large_and_pixel_crisp_with_captions_below(server, page):
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(server.url)
    page.locator("#txt2img_prompt textarea").fill("a white star on a red background")
    set_number(page, "txt2img_batch_size", 3)
    set_number(page, "txt2img_steps", 4)
    page.locator("#txt2img_generate").click()
    thumbnails = page.locator("#txt2img_gallery .thumbnail-item")
    thumbnails.nth(2).locator("img").wait_for(timeout=120_000)
    page.wait_for_timeout(500)
    for i in range(3):
        image = thumbnails.nth(i).locator("img")
        box, caption = image.bounding_box(), thumbnails.nth(i).locator(".caption-label").bounding_box()
        assert box["height"] >= 128, box  # readable: at least twice the 64 px it has
        assert image.evaluate("e => getComputedStyle(e).imageRendering") == "pixelated"
        assert caption["y"] >= box["y"] + box["height"] - 1, (box, caption)  # the seed caption is below the image
    assert gallery_image(page).size == (64, 64)  # what is downloaded keeps its real size
    first_look_shot(page.locator("#txt2img_gallery"), "gallery-64px.png")
    page.locator("#txt2img_send_to_img2img").click()
    shown = page.locator("#img2img_image img:visible").first
    shown.wait_for(timeout=10_000)
    page.wait_for_timeout(500)
    assert shown.bounding_box()["width"] >= 256, shown.bounding_box()
    assert shown.evaluate("e => [e.naturalWidth, getComputedStyle(e).imageRendering]") == [64, "pixelated"]
    first_look_shot(page.locator("#img2img_image"), "img2img-input-64px.png")


@pytest.mark.browser
@pytest.mark.slow
def test_browser_png_info_reads_each_dropped_image_once(server, page, tmp_path):
    from PIL.PngImagePlugin import PngInfo

    chunk = PngInfo()
    chunk.add_text("parameters", "a red star\nSteps: 8, Sampler: Euler, CFG scale: 3, Seed: 5, Size: 64x64")
    Image.new("RGB", (64, 64), "red").save(tmp_path / "with.png", pnginfo=chunk)
    Image.new("RGB", (64, 64), "blue").save(tmp_path / "without.png")
    page.goto(server.url)
    page.get_by_role("tab", name="PNG Info").click()
    watch_toasts(page)
    reads = []  # PNG Info is the only queued event on this tab (the status timer is not queued)
    page.on("request", lambda r: reads.append(r.url) if "/queue/join" in r.url else None)
    upload = page.locator("#pnginfo_image input[type=file]")
    parameters = page.locator("#pnginfo_parameters textarea")
    upload.set_input_files(str(tmp_path / "with.png"))
    page.wait_for_function("el => el.value.startsWith('a red star')", arg=parameters.element_handle(), timeout=30_000)
    # Dropping a second image onto the first one: one read (gradio's change event fired twice here, and a
    # PNG without parameters gave the same toast twice), its own (empty) parameters, one toast.
    upload.set_input_files(str(tmp_path / "without.png"))
    page.get_by_text("This image has no generation parameters").first.wait_for(timeout=30_000)
    page.wait_for_timeout(2000)  # a second read would arrive within this time
    assert len(reads) == 2, reads
    assert parameters.input_value() == ""
    assert count_toasts(page, "no generation parameters") == 1


@pytest.mark.browser
@pytest.mark.slow
def test_browser_token_counter_tells_how_long_prompts_are_chunked(server, page):
    page.goto(server.url)
    page.get_by_role("tab", name="Models").click()
    page.locator("#models_load").click()
    wait_text(page, "#sd_status_line", STATUS_LOADED.pattern, timeout=120_000)
    page.get_by_role("tab", name="txt2img").click()
    page.locator("#txt2img_prompt textarea").fill(" ".join(["red star"] * 250))  # a 500-word prompt
    counter = page.locator("#txt2img_token_counter")
    text = wait_text(page, "#txt2img_token_counter", r"^Prompt: \d+/\d+ \(\d+ chunks\)")
    tokens, capacity, chunks = map(int, re.match(r"Prompt: (\d+)/(\d+) \((\d+) chunks\)", text).groups())
    assert tokens >= 500 and capacity == chunks * 75 and capacity - 75 < tokens <= capacity, text
    title = counter.locator("[title]").first.get_attribute("title")
    assert "chunks of 75 tokens" in title and "encoded on its own" in title


@pytest.mark.browser
@pytest.mark.slow
def test_browser_models_tab_stays_current_and_keeps_its_columns_at_1280_and_800_px(models_yaml, browser, tmp_path):
    # The test model plus an entry whose (long-named) file is missing, so that a long error fills a row.
    missing = tmp_path / ("a-checkpoint-file-that-is-not-there-" * 3 + ".safetensors")
    yaml = tmp_path / "models.yaml"
    yaml.write_text(models_yaml.read_text() + f"  - name: missing\n    path: {json.dumps(str(missing))}\n")
    running = start_server(yaml, tmp_path / "outputs")
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        page.goto(running.url)
        page.get_by_role("tab", name="Models").click()
        table = page.locator("#models_table")
        assert "not loaded, default" in table.inner_text() and "loaded (current)" not in table.inner_text()
        # A generation from elsewhere (another client) loads the model: the open table shows it by itself.
        gallery, *_ = _client(running.url).predict(**TXT2IMG, api_name="/txt2img")
        assert len(gallery) == 1
        wait_text(page, "#models_table", r"loaded \(current\), default", timeout=15_000)
        pick(page, "models_choice", "missing")
        page.locator("#models_load").click()
        wait_text(page, "#models_message", "Could not load missing", timeout=60_000)
        page.locator("#models_refresh").click()
        wait_text(page, "#models_message", "Re-read models.yaml")
        for width in (1280, 800):
            page.set_viewport_size({"width": width, "height": 900})
            page.wait_for_timeout(1000)
            headers = table.locator("thead th")
            frame = table.bounding_box()
            assert [h.inner_text().strip() for h in headers.all()] == ["Model", "Status", "Source", "Hash", "Error"]
            for header in headers.all():
                box = header.bounding_box()
                assert box["height"] <= 60, (width, header.inner_text(), box)  # one line, not a letter per line
                assert box["x"] + box["width"] <= frame["x"] + frame["width"] + 1, (width, header.inner_text())
            assert "load failed" in table.inner_text()  # the error is shown, wrapped inside its cell
            first_look_shot(page, f"models-tab-{width}.png")
    finally:
        context.close()
        stop_server(running)


@pytest.mark.browser
@pytest.mark.slow
def test_browser_interrupt_inside_a_long_step_is_acknowledged_at_once_and_keeps_the_image(
    server, page, screenshots_dir
):
    page.goto(server.url)
    page.locator("#txt2img_prompt textarea").fill("a red circle")
    # 512 px: one UNet call takes seconds here, so that the click lands inside a step, not between two.
    set_number(page, "txt2img_steps", 20)
    set_number(page, "txt2img_width", 512)
    set_number(page, "txt2img_height", 512)
    set_number(page, "txt2img_seed", 77)
    page.locator("#txt2img_generate").click()
    progress = page.locator("#txt2img_progress")
    page.wait_for_function(
        "el => /Step [1-9]\\d*\\//.test(el.innerText)", arg=progress.element_handle(), timeout=180_000
    )
    page.wait_for_timeout(500)  # well inside the next step
    clicked_at = time.monotonic()
    page.locator("#txt2img_interrupt").click()
    page.wait_for_function(
        "el => el.innerText.includes('Interrupting…')", arg=progress.element_handle(), timeout=10_000
    )
    acknowledged = time.monotonic() - clicked_at
    # Sampling stops within about a second; decoding the kept latent takes longer, and the status says so.
    page.wait_for_function(
        "el => el.innerText.includes('decoding the current image') || el.innerText.includes('Interrupted')",
        arg=progress.element_handle(),
        timeout=60_000,
    )
    sampling_stopped = time.monotonic() - clicked_at
    page.screenshot(path=str(screenshots_dir / "interrupting.png"))
    page.wait_for_function("el => el.innerText.includes('Interrupted')", arg=progress.element_handle(), timeout=180_000)
    assert acknowledged < 1.5, acknowledged
    assert sampling_stopped < 3.0, sampling_stopped
    assert "1 image kept" in progress.inner_text()
    info = page.locator("#txt2img_info textarea")
    page.wait_for_function("el => el.value.includes('Interrupted: step')", arg=info.element_handle(), timeout=30_000)
    parameters = info.input_value()
    assert "Seed: 77" in parameters and "Size: 512x512" in parameters and "Steps: 20" in parameters
    image = gallery_image(page)
    assert image.size == (512, 512)
    assert_not_blank(image)
    page.screenshot(path=str(screenshots_dir / "interrupted.png"), full_page=True)

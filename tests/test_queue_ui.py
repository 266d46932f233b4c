"""The Queue tab and Enqueue: rows for running, pending (in order) and finished jobs, Cancel / Requeue / Move to
top limited to the user's own jobs, Enqueue returning at once; and the same in a real Chromium."""

from __future__ import annotations

import time

import gradio as gr
import pytest
from PIL import Image

from tests.support.browser import chromium_page, serving
from tests.support.fakes import FakeService
from webui.jobs import JobState
from webui.pipeline import GenerationRequest
from webui.ui import build_ui
from webui.ui.queue_tab import cancel, enqueue, move_to_top, queue_rows, requeue

TIMEOUT = 30


def wait_until(predicate, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_rows_actions_and_enqueue_on_the_stand_in_service():
    service = FakeService(step_seconds=0.02)
    queue = service.queue
    try:
        queue.pause()
        html_line = enqueue(service, GenerationRequest(prompt="first", steps=3), None, "ann")
        a = service.submitted[-1]
        assert a.id in html_line and "position 1" in html_line
        b = service.submit(GenerationRequest(prompt="second", steps=3), owner="bob")
        c = service.submit(GenerationRequest(prompt="third", steps=3), owner="ann")
        rows = queue_rows(queue, None)
        assert [(r[0], r[1], r[2], r[4]) for r in rows] == [
            ("1", a.id, "pending", "first"),
            ("2", b.id, "pending", "second"),
            ("3", c.id, "pending", "third"),
        ]
        assert [r[1] for r in queue_rows(queue, "ann")] == [a.id, c.id]  # a user sees only their own
        assert move_to_top(queue, c.id, "ann") == f"Task {c.id} runs next."
        with pytest.raises(gr.Error, match="No task"):
            move_to_top(queue, b.id, "ann")  # bob's
        with pytest.raises(gr.Error, match="No task"):
            cancel(queue, b.id, "ann")
        assert cancel(queue, b.id, "bob") == f"Task {b.id} cancelled." and b.state == JobState.INTERRUPTED
        queue.resume()
        a.wait(TIMEOUT), c.wait(TIMEOUT)
        assert [j.state for j in (a, c)] == [JobState.DONE] * 2 and c.finished_at <= a.finished_at  # type: ignore[operator]
        rows = queue_rows(queue, None)
        assert [(r[1], r[2]) for r in rows] == [(a.id, "done"), (c.id, "done"), (b.id, "interrupted")]
        text = requeue(queue, a.id, "ann")
        again = queue.get(text.rsplit(" ", 1)[-1].rstrip("."))
        assert again.id != a.id and again.owner == "ann" and again.result(TIMEOUT).seeds == a.result(0).seeds
    finally:
        service.close()


def test_the_page_has_the_queue_tab_and_enqueue_beside_generate():
    demo = build_ui(FakeService())
    config = demo.get_config_file()
    ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
    assert {
        "txt2img_enqueue",
        "img2img_enqueue",
        "queue_table",
        "queue_cancel",
        "queue_requeue",
        "queue_move_top",
    } <= ids
    labels = [c["props"].get("label") for c in config["components"] if c.get("type") == "tabitem"]
    assert "Queue" in labels


@pytest.mark.browser
def test_enqueue_then_the_queue_tab_shows_the_jobs_and_moves_one_to_top():
    service = FakeService(step_seconds=0.05)
    try:
        with serving(service) as url, chromium_page(height=1000) as page:
            page.goto(url)
            service.queue.pause()
            for prompt in ("one", "two", "three"):
                page.locator("#txt2img_prompt textarea").fill(prompt)
                count = len(service.submitted)
                page.locator("#txt2img_enqueue").click()
                wait_until(lambda count=count: len(service.submitted) == count + 1)
            page.wait_for_selector("text=Queued as task")
            assert [j.request.prompt for j in service.queue.waiting] == ["one", "two", "three"]
            page.get_by_role("tab", name="Queue").click()
            table = page.locator("#queue_table")
            table.get_by_test_id("cell-2-4").wait_for()  # row 3 (pending "three"), column "Prompt"
            assert "three" in table.get_by_test_id("cell-2-4").inner_text()
            table.get_by_test_id("cell-2-4").click()
            third = service.submitted[-1].id
            page.wait_for_function(
                "id => document.querySelector('#queue_task_id textarea, #queue_task_id input').value === id", arg=third
            )
            page.locator("#queue_move_top").click()
            page.locator("#queue_message").get_by_text("runs next").wait_for()
            assert [j.request.prompt for j in service.queue.waiting] == ["three", "one", "two"]
            service.queue.resume()
            wait_until(lambda: all(j.done for j in service.submitted))
            page.locator("#queue_refresh").click()
            page.wait_for_function("() => document.querySelector('#queue_table').innerText.split('done').length > 3")
    finally:
        service.close()


def test_img2img_enqueue_queues_the_same_request_as_generate_and_returns_at_once():
    service = FakeService(step_seconds=0.02)
    demo = build_ui(service)
    try:
        handler = next(f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "img2img_enqueue")
        service.queue.pause()
        image = Image.new("RGB", (64, 64), (200, 10, 10))
        line = handler("tiny", "img2img", image, None, None, "a red cat", "", "Euler", "Automatic", 4, 7, 64, 64, 9,
                       1, 2, 0.4, 0, 4, 0, 1, None, None)  # fmt: skip
        job = service.submitted[-1]
        assert job.id in line and job.state == JobState.QUEUED and job.model_name == "tiny"
        assert job.request.img2img is not None and job.request.img2img.denoising_strength == 0.4
        assert job.request.img2img.init_images[0].tobytes() == image.tobytes() and job.request.batch_size == 2
        with pytest.raises(gr.Error, match="Upload an image first"):
            handler("tiny", "img2img", None, None, None, "x", "", "Euler", "Automatic", 4, 7, 64, 64, 9, 1, 1, 0.4, 0,
                    4, 0, 1, None, None)  # fmt: skip
    finally:
        service.close()

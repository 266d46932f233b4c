"""Load: 4 HTTP clients x 25 jobs through the queue API at once on the real service (tiny model, 1 step):
100/100 done, each client's jobs ran in the order it queued them, no job ran twice. The same with the UI open
in a real Chromium meanwhile: its Generate gets its image through the same queue, and the Queue tab's Refresh
answers within a bound while the load runs."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support.api import serve
from tests.support.browser import chromium_page
from tests.test_agent_scheduler import app_for
from webui.jobs import JobState
from webui.service import WebUIService

Q = "/agent-scheduler/v1"
CLIENTS, JOBS = 4, 25
REFRESH_BOUND = 5.0  # seconds for the Queue tab's Refresh to answer on 2 busy cores


def start_clients(url: str) -> tuple[dict[int, list[str]], list[threading.Thread]]:
    """4 threads, each queueing its 25 jobs one after another; returns the task ids (filled as they queue)."""
    ids: dict[int, list[str]] = {c: [] for c in range(CLIENTS)}

    def client(number: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            for i in range(JOBS):
                body = {"prompt": f"c{number} j{i}", "steps": 1, "seed": i, "width": 64, "height": 64}
                r = http.post(f"{Q}/queue/txt2img", json=body)
                assert r.status_code == 200, r.text
                ids[number].append(r.json()["task_id"])

    threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
    for t in threads:
        t.start()
    return ids, threads


def check_clients(service: WebUIService, url: str, ids: dict[int, list[str]], threads: list[threading.Thread]) -> None:
    """100/100 done, each client's jobs started in its order, none ran twice."""
    for t in threads:
        t.join(120)
    everyone = [task_id for queued in ids.values() for task_id in queued]
    assert len(everyone) == CLIENTS * JOBS
    with httpx.Client(base_url=url, timeout=60) as http:
        deadline = time.monotonic() + 300
        while not all(http.get(f"{Q}/task/{i}").json()["data"]["status"] == "done" for i in everyone[-CLIENTS:]):
            assert time.monotonic() < deadline, "not all jobs finished"
            time.sleep(0.2)
        statuses = {i: http.get(f"{Q}/task/{i}").json()["data"]["status"] for i in everyone}
    assert set(statuses.values()) == {"done"}
    rows = {row.id: row for row in service.queue.store.history(limit=500)}
    assert all(rows[i].attempts == 1 for i in everyone)  # nothing ran twice
    for number, queued in ids.items():
        assert len(queued) == JOBS
        started = [rows[task_id].started_at or 0 for task_id in queued]
        assert started == sorted(started), f"client {number}'s jobs ran out of order"


@pytest.mark.slow  # 100 generations: about half a minute
def test_4_clients_x_25_jobs_all_done_in_order_per_client_none_twice(tiny_checkpoint, tmp_path: Path):
    service = WebUIService(tiny_checkpoint.models_yaml, outputs_dir=None, queue_db=tmp_path / "q.sqlite3")
    try:
        with serve(app_for(service)) as url:
            ids, threads = start_clients(url)
            check_clients(service, url, ids, threads)
    finally:
        service.close()


@pytest.mark.slow  # 100 generations and a browser
@pytest.mark.browser
def test_the_ui_in_a_browser_generates_and_stays_responsive_during_the_load(tiny_checkpoint, tmp_path: Path):
    from webui.ui import CSS, JS, build_ui

    service = WebUIService(tiny_checkpoint.models_yaml, outputs_dir=None, queue_db=tmp_path / "q.sqlite3")
    demo = build_ui(service, poll_interval=0.05)
    refresh_id = next(
        c["id"] for c in demo.get_config_file()["components"] if c.get("props", {}).get("elem_id") == "queue_refresh"
    )

    def is_refresh(response) -> bool:  # the answer to a click on Refresh (not the status timer's)
        body = response.request.post_data
        return (
            response.request.method == "POST"
            and body is not None
            and f'"trigger_id":{refresh_id}' in body.replace(" ", "")
        )

    _, ui_url, _ = demo.launch(
        prevent_thread_lock=True, quiet=True, ssr_mode=False, server_name="127.0.0.1", css=CSS, js=JS
    )
    try:
        with serve(app_for(service)) as url, chromium_page(height=1000) as page:
            page.goto(ui_url)
            page.locator("#txt2img_prompt textarea").fill("from the browser")
            page.locator("#txt2img_seed input").fill("4242")
            page.locator("#txt2img_steps input[type=number]").fill("1")
            page.locator("#txt2img_steps input[type=number]").press("Tab")
            ids, threads = start_clients(url)
            deadline = time.monotonic() + 60
            while sum(len(queued) for queued in ids.values()) < CLIENTS * JOBS // 4:  # the load is under way
                assert time.monotonic() < deadline, "the clients queue nothing"
                time.sleep(0.01)
            page.locator("#txt2img_generate").click()
            page.get_by_role("tab", name="Queue").click()
            answers: list[float] = []
            while len(answers) < 5 or service.queue.snapshot().waiting:
                started = time.monotonic()
                with page.expect_response(is_refresh, timeout=60_000) as answer:
                    page.locator("#queue_refresh").click()
                assert answer.value.status == 200
                answers.append(time.monotonic() - started)
                time.sleep(0.5)
                if len(answers) >= 40:
                    break
            page.get_by_role("tab", name="txt2img").click()
            info = page.locator("#txt2img_info textarea")
            page.wait_for_function("el => el.value.includes('Seed: 4242')", arg=info.element_handle(), timeout=120_000)
            page.locator("#txt2img_gallery img:visible").first.wait_for(timeout=30_000)
            check_clients(service, url, ids, threads)
        print(f"Queue tab Refresh during the load: {len(answers)} answers, max {max(answers):.2f} s")  # for -s
        assert max(answers) < REFRESH_BOUND, answers
        ui_jobs = [row for row in service.queue.store.history(limit=500) if row.id not in sum(ids.values(), [])]
        assert len(ui_jobs) == 1 and ui_jobs[0].state == JobState.DONE.stored and ui_jobs[0].attempts == 1
        assert json.loads(ui_jobs[0].request or "{}")["request"]["fields"]["prompt"] == "from the browser"
    finally:
        demo.close(verbose=False)
        service.close()

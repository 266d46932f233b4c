"""Crash test with real processes: ``launch.py`` with a queue database, 10 jobs queued through the queue API,
``kill -9`` while job 3 runs, a second start: all 10 done, 10 x batch-size PNGs, no duplicate, no partial file,
and the history lists them all."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
Q = "/agent-scheduler/v1"
BATCH = 2
JOBS = 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(models_yaml: Path, outputs: Path, db: Path, port: int, log: Path, *extra: str) -> subprocess.Popen:
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    args = ["--api", "--models", str(models_yaml), "--outputs", str(outputs), "--queue-db", str(db), *extra]
    return subprocess.Popen(
        [sys.executable, str(ROOT / "launch.py"), *args, "--port", str(port), "--device", "cpu"],
        cwd=ROOT,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def wait_ready(url: str, process: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the app exited ({process.returncode}):\n{log.read_text()}")
        try:
            if httpx.get(f"{url}{Q}/queue", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"the app did not start:\n{log.read_text()}")


@pytest.mark.slow  # two app starts in subprocesses and 10 generations: about a minute
def test_kill_9_while_job_3_runs_then_restart_finishes_all_10_jobs_once(tiny_checkpoint, tmp_path: Path):
    outputs, db, log = tmp_path / "outputs", tmp_path / "queue.sqlite3", tmp_path / "app.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    app = start_app(tiny_checkpoint.models_yaml, outputs, db, port, log)
    try:
        wait_ready(url, app, log)
        client = httpx.Client(base_url=url, timeout=30)
        ids = []
        for i in range(JOBS):
            steps = 150 if i == 2 else 3  # job 3 runs long enough to be killed in the middle
            payload = {
                "prompt": f"job {i}",
                "steps": steps,
                "seed": 100 * i,
                "batch_size": BATCH,
                "sampler_name": "Euler",
            }
            r = client.post(f"{Q}/queue/txt2img", json=payload)
            assert r.status_code == 200, r.text
            ids.append(r.json()["task_id"])
        deadline = time.monotonic() + 120
        while client.get(f"{Q}/queue").json()["current_task_id"] != ids[2]:
            assert time.monotonic() < deadline, "job 3 never ran"
            time.sleep(0.05)
        time.sleep(0.5)  # well inside its sampling
        done_before = [t["id"] for t in client.get(f"{Q}/history").json()["tasks"]]
        assert sorted(done_before) == sorted(ids[:2])
        os.kill(app.pid, signal.SIGKILL)
        app.wait(30)
        client.close()
    finally:
        if app.poll() is None:
            app.kill()
            app.wait(30)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    again = start_app(tiny_checkpoint.models_yaml, outputs, db, port, log)
    try:
        wait_ready(url, again, log)
        client = httpx.Client(base_url=url, timeout=30)
        deadline = time.monotonic() + 300
        while client.get(f"{Q}/history", params={"limit": 100}).json()["total"] < JOBS:
            assert time.monotonic() < deadline, "the jobs did not all finish after the restart"
            time.sleep(0.2)
        history = client.get(f"{Q}/history", params={"limit": 100}).json()["tasks"]
        assert sorted(t["id"] for t in history) == sorted(ids) and {t["status"] for t in history} == {"done"}
        order = sorted(history, key=lambda t: t["updated_at"])
        assert [t["id"] for t in order] == ids  # the crashed job first, then the rest in their order
        for task_id in ids:
            results = client.get(f"{Q}/task/{task_id}/results").json()
            assert results["success"] and len(results["data"]) == BATCH
        client.close()
    finally:
        again.send_signal(signal.SIGINT)
        try:
            again.wait(30)
        except subprocess.TimeoutExpired:
            again.kill()
            again.wait(30)

    pngs = sorted(outputs.rglob("*.png"))
    assert len(pngs) == JOBS * BATCH, [p.name for p in pngs]
    others = [p for p in outputs.rglob("*") if p.is_file() and p.suffix not in (".png",) and "queue" not in p.name]
    assert not [p for p in others if p.name != "cache.json"]  # (cache.json: the model hash cache, issue 19)
    names = {(p.name.split("-")[1], p.name.split("-")[2]) for p in pngs}  # (job id prefix, image index)
    assert len(names) == JOBS * BATCH
    assert {prefix for prefix, _ in names} == {task_id[:8] for task_id in ids}
    for path in pngs:
        with Image.open(path) as image:
            image.load()  # a partial PNG would fail here
            assert "Seed:" in image.info["parameters"]
    assert "run again" in log.read_text()

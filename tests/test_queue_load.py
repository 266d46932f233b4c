"""Load: 4 HTTP clients x 25 jobs through the queue API at once on the real service (tiny model, 1 step):
100/100 done, each client's jobs ran in the order it queued them, no job ran twice."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support.api import serve
from tests.test_agent_scheduler import app_for
from webui.service import WebUIService

Q = "/agent-scheduler/v1"
CLIENTS, JOBS = 4, 25


@pytest.mark.slow  # 100 generations: about half a minute
def test_4_clients_x_25_jobs_all_done_in_order_per_client_none_twice(tiny_checkpoint, tmp_path: Path):
    service = WebUIService(tiny_checkpoint.models_yaml, outputs_dir=None, queue_db=tmp_path / "q.sqlite3")
    ids: dict[int, list[str]] = {c: [] for c in range(CLIENTS)}
    try:
        with serve(app_for(service)) as url:

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
            for t in threads:
                t.join(120)
            with httpx.Client(base_url=url, timeout=60) as http:
                deadline = time.monotonic() + 300
                while http.get(f"{Q}/history", params={"status": "done"}).json()["total"] < CLIENTS * JOBS:
                    assert time.monotonic() < deadline, "not all jobs finished"
                    time.sleep(0.2)
                history = http.get(f"{Q}/history", params={"limit": 200}).json()["tasks"]
        assert len(history) == CLIENTS * JOBS and {t["status"] for t in history} == {"done"}
        rows = {row.id: row for row in service.queue.store.history(limit=200)}
        assert all(row.attempts == 1 for row in rows.values())  # nothing ran twice
        for number, queued in ids.items():
            assert len(queued) == JOBS
            started = [rows[task_id].started_at or 0 for task_id in queued]
            assert started == sorted(started), f"client {number}'s jobs ran out of order"
    finally:
        service.close()

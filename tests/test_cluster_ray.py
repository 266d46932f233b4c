"""Workers as Ray actors (``--cluster``) on a local Ray cluster that the test starts (2 CPUs, the tiny model):
12 jobs on 2 actors, both used; an actor killed mid-job (``ray.kill``) still gives 12/12 results, the lost job
run again elsewhere; Interrupt reaches the actor and stops its job within about a step."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from webui.jobs import JobState
from webui.pipeline import GenerationRequest
from webui.service import WebUIService

ray = pytest.importorskip("ray")
ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 300


def wait_until(predicate, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": env}, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture
def cluster_service(local_ray, tiny_checkpoint, tmp_path: Path) -> Iterator[WebUIService]:
    svc = WebUIService(
        tiny_checkpoint.models_yaml, outputs_dir=tmp_path / "out", queue_db=tmp_path / "q.sqlite3", cluster="auto"
    )
    yield svc
    svc.close()


def request(seed: int, steps: int = 8, size: int = 64) -> GenerationRequest:
    return GenerationRequest(prompt="a cat", steps=steps, seed=seed, sampler_name="Euler", width=size, height=size)


@pytest.mark.slow  # starts Ray and two actor processes
def test_12_jobs_on_2_actors_survive_an_actor_killed_mid_job(cluster_service: WebUIService, tmp_path: Path):
    workers = cluster_service.queue.workers
    assert [w.name for w in workers] == ["ray:1", "ray:2"]
    pids = [ray.get(w.actor.pid.remote()) for w in workers]  # type: ignore[attr-defined]
    assert len(set(pids)) == 2 and os.getpid() not in pids  # generation runs outside this process
    jobs = [cluster_service.submit(request(seed, steps=30 if seed == 5 else 6)) for seed in range(12)]
    victim = jobs[5]
    wait_until(lambda: victim.state == JobState.RUNNING and victim.progress is not None)
    killed = victim.worker
    ray.kill(next(w for w in workers if w.name == killed).actor)  # type: ignore[attr-defined]
    for job in jobs:
        job.wait(TIMEOUT)
    assert [j.state for j in jobs] == [JobState.DONE] * 12
    ran_on = {j.worker for j in jobs}
    assert ran_on == {"ray:1", "ray:2"} or (killed in {"ray:1", "ray:2"} and len(ran_on | {killed}) == 2)
    assert victim.worker != killed  # run again on the other actor
    assert all(len(j.result(0).images) == 1 for j in jobs)
    assert [w.name for w in cluster_service.queue.workers] == [n for n in ("ray:1", "ray:2") if n != killed]
    pngs = sorted((tmp_path / "out").rglob("*.png"))
    assert len(pngs) == 12 and len({p.name.split("-")[1] for p in pngs}) == 12
    row = cluster_service.queue.store.get(victim.id)
    assert row is not None and row.state == "done" and row.attempts == 2
    # The result is the same as a single-process run of that request would give.
    local = WebUIService(cluster_service.registry_path, outputs_dir=None)
    try:
        same = local.submit(request(5, steps=30)).result(TIMEOUT)
    finally:
        local.close()
    assert same.images[0].tobytes() == victim.result(0).images[0].tobytes()


@pytest.mark.slow  # starts Ray and two actor processes
def test_interrupt_reaches_the_actor_and_stops_within_a_step(cluster_service: WebUIService):
    job = cluster_service.submit(request(1, steps=150, size=256))
    wait_until(lambda: job.progress is not None and job.progress.sampling_step >= 2)
    seen = job.progress.sampling_step if job.progress is not None else 0
    assert cluster_service.interrupt(job.id)
    result = job.result(TIMEOUT)
    assert job.state == JobState.INTERRUPTED and result.interrupted and len(result.images) == 1
    match = re.search(r"Interrupted: step (\d+)/150", result.infotexts[0])
    assert match is not None
    stopped = int(match.group(1))
    assert seen <= stopped <= seen + 2, (seen, stopped)  # the step it was on (as last polled), or the next
    assert cluster_service.progress(job.id).state == JobState.INTERRUPTED

"""Several devices in one process (``--device cuda:0,cuda:1``), tested on two CPU workers: each worker has its own
model cache, both run jobs at the same time, an idle worker that holds a job's model is preferred, and interrupt
reaches the job on whichever worker runs it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from webui.jobs import JobState
from webui.pipeline import GenerationRequest
from webui.queue.workers import parse_device_list, pick_devices
from webui.service import WebUIService

TIMEOUT = 120


def wait_until(predicate, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


@pytest.fixture
def two_cpus(tiny_checkpoint, tmp_path: Path) -> Iterator[WebUIService]:
    models = tmp_path / "models.yaml"
    models.write_text(
        "models:\n"
        + "".join(f"  - name: {n}\n    path: {tiny_checkpoint.path}\n    width: 64\n    height: 64\n" for n in "ab")
    )
    svc = WebUIService(models, outputs_dir=tmp_path / "out", devices=["cpu", "cpu"])
    yield svc
    svc.close()


def request(seed: int, steps: int = 3) -> GenerationRequest:
    return GenerationRequest(prompt="a cat", steps=steps, seed=seed, sampler_name="Euler")


def test_device_lists_parse_and_all_falls_back_to_the_cpu():
    assert parse_device_list(" CUDA:0,cuda:1 ") == "cuda:0,cuda:1" and parse_device_list("all") == "all"
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        parse_device_list("cpu,gpu")
    assert [str(d) for d in pick_devices("cpu,cpu")] == ["cpu", "cpu"]
    if not __import__("torch").cuda.is_available():
        assert [str(d) for d in pick_devices("all")] == ["cpu"]


def test_two_workers_run_jobs_at_the_same_time_with_their_own_models(two_cpus: WebUIService):
    assert [w.name for w in two_cpus.queue.workers] == ["cpu", "cpu#2"]
    jobs = [two_cpus.submit(request(seed, steps=6)) for seed in range(4)]
    most = 0
    while not all(j.done for j in jobs):
        most = max(most, len(two_cpus.queue.snapshot().running))
        time.sleep(0.002)
    assert most == 2
    assert {j.worker for j in jobs} == {"cpu", "cpu#2"}
    managers = [d.manager for d in two_cpus._devices]
    assert managers[0] is not managers[1] and all("a" in m.loaded() for m in managers)
    models = [m.loaded()["a"] for m in managers]
    assert models[0] is not models[1]  # one copy per device
    # Whichever worker ran it, a job gives the same pixels as on one device.
    single = two_cpus.submit(request(2, steps=6)).result(TIMEOUT)
    assert jobs[2].result(0).images[0].tobytes() == single.images[0].tobytes()


def test_an_idle_worker_that_holds_the_jobs_model_is_preferred(two_cpus: WebUIService):
    first, second = two_cpus._devices
    first.manager.get("a")
    second.manager.get("b")
    two_cpus.queue.pause()
    job_b = two_cpus.submit(request(1), "b")
    job_a = two_cpus.submit(request(2), "a")
    two_cpus.queue.resume()
    job_b.result(TIMEOUT), job_a.result(TIMEOUT)
    assert (job_b.worker, job_a.worker) == ("cpu#2", "cpu")  # without the preference "b" would take "cpu"
    assert list(first.manager.loaded()) == ["a"] and list(second.manager.loaded()) == ["b"]


def test_interrupt_reaches_the_job_on_either_worker(two_cpus: WebUIService):
    slow = [two_cpus.submit(request(seed, steps=150)) for seed in (1, 2)]
    wait_until(lambda: all(j.progress is not None for j in slow))
    assert {j.worker for j in slow} == {"cpu", "cpu#2"}
    assert two_cpus.interrupt(slow[1].id)
    slow[1].wait(TIMEOUT)
    assert slow[1].state == JobState.INTERRUPTED and slow[0].state == JobState.RUNNING
    assert two_cpus.progress(slow[0].id).state == JobState.RUNNING
    two_cpus.interrupt(slow[0].id)
    slow[0].wait(TIMEOUT)

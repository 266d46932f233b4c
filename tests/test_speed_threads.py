"""--threads: physical cores by default; the API keeps answering while a job runs (issue 19)."""

from __future__ import annotations

import time

import httpx
import pytest
import torch
from fastapi import FastAPI

from tests.support.api import serve
from webui.api import mount_api
from webui.pipeline import GenerationRequest
from webui.service import WebUIService
from webui.threads import default_threads, physical_cores, set_threads

# Two logical CPUs on each of two cores (SMT): 4 logical, 2 physical.
SMT_CPUINFO = "".join(
    f"processor\t: {i}\nphysical id\t: 0\ncore id\t\t: {i % 2}\nflags\t\t: avx2\n\n" for i in range(4)
)
TWO_SOCKETS = "".join(f"processor\t: {i}\nphysical id\t: {i // 2}\ncore id\t\t: {i % 2}\n\n" for i in range(4))


def test_physical_cores_count_cores_not_hardware_threads():
    assert physical_cores(SMT_CPUINFO) == 2
    assert physical_cores(TWO_SOCKETS) == 4  # core ids repeat across sockets
    assert physical_cores("processor\t: 0\nBogoMIPS\t: 50\n") is None  # Arm: no core ids


def test_default_is_physical_cores_within_the_affinity_mask(monkeypatch):
    monkeypatch.setattr("webui.threads.usable_cpus", lambda: 4)
    assert default_threads(SMT_CPUINFO) == 2
    monkeypatch.setattr("webui.threads.usable_cpus", lambda: 1)
    assert default_threads(SMT_CPUINFO) == 1
    assert default_threads("") == 1


def test_set_threads_applies_and_refuses_zero():
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1 and torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="at least 1"):
            set_threads(0)
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_the_api_answers_while_a_job_runs(tmp_path, tiny_checkpoint):
    registry = tmp_path / "models.yaml"
    registry.write_text(f"models:\n  - {{name: tiny, path: {tiny_checkpoint.path}, default: true}}\n")
    service = WebUIService(registry, outputs_dir=None)
    app = FastAPI()
    mount_api(app, service)
    try:
        service.run(GenerationRequest(prompt="warm", steps=1, width=64, height=64), save=False)
        job = service.submit(GenerationRequest(prompt="a cat", steps=150, width=256, height=256), save=False)
        with serve(app) as url:
            while service.current_job is None and not job.done:
                time.sleep(0.01)
            slowest = 0.0
            for _ in range(10):
                started = time.monotonic()
                reply = httpx.get(f"{url}/sdapi/v1/progress", timeout=10)
                slowest = max(slowest, time.monotonic() - started)
                assert reply.status_code == 200
                time.sleep(0.05)
            assert not job.done, "the job should still be running while the API answered"
            assert 0 < reply.json()["progress"] < 1
            assert slowest < 1.0, f"a progress request took {slowest:.2f} s while a job ran"
            service.interrupt()
    finally:
        service.close()

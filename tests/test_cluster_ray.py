"""Workers as Ray actors (``--cluster``) on a local Ray cluster that the test starts (2 CPUs, the tiny model):
12 jobs on 2 actors, both used; an actor killed mid-job (``ray.kill``) still gives 12/12 results, the lost job
run again elsewhere; Interrupt reaches the actor and stops its job within about a step; an actor runs an X/Y/Z
plot, an embedding, a LoRA and a VAE choice to the same pixels as a local device."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from webui.jobs import JobState
from webui.pipeline import GenerationRequest
from webui.scripts.xyz_plot import TXT2IMG_AXES
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


# --- an actor runs what a local device runs: scripts, embeddings, LoRAs, the VAE choice -------------------------

CFG_AXIS = TXT2IMG_AXES.index("CFG Scale")


@pytest.fixture(scope="module")
def user_folders(tmp_path_factory, tiny_checkpoint, tiny_tokenizer_dir) -> Path:
    import torch
    from safetensors.torch import save_file

    from tests.support.lora_files import kohya_specs_from_model, write_kohya_lora
    from tests.support.tiny_model import build_tiny_components
    from webui.models.loading import load_model

    root = tmp_path_factory.mktemp("user")
    (root / "embeddings").mkdir()
    (root / "VAE").mkdir()
    torch.save({"string_to_param": {"*": torch.randn(4, 128)}, "step": 30}, root / "embeddings" / "inkstyle.pt")
    other = build_tiny_components(tiny_tokenizer_dir, seed=9).vae
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(root / "VAE" / "other.safetensors"))
    write_kohya_lora(root / "Lora" / "shiny.safetensors", kohya_specs_from_model(load_model(tiny_checkpoint.path)))
    (root / "models.yaml").write_text(
        f"models:\n  - name: tiny\n    path: {tiny_checkpoint.path}\n    default: true\n    width: 64\n    height: 64\n"
    )
    return root


def with_folders(root: Path, **kwargs) -> WebUIService:
    folders = {"embeddings_dir": root / "embeddings", "vae_dir": root / "VAE", "lora_dir": root / "Lora"}
    return WebUIService(root / "models.yaml", version="test", **folders, **kwargs)


@pytest.mark.slow  # starts Ray and an actor process
def test_an_actor_runs_scripts_embeddings_loras_and_the_vae_choice_as_a_local_device(
    local_ray, user_folders: Path, tmp_path: Path
):
    from webui.pipeline.infotext import parse_infotext
    from webui.scripts import plan_script

    base = GenerationRequest(prompt="a cat", steps=2, seed=3, sampler_name="Euler", width=64, height=64)
    xyz_args = [CFG_AXIS, "3, 9", [], 0, "", [], 0, "", [], True, True, False, False, False, False, False, 0, False]
    grid = replace(base, script=plan_script("x/y/z plot", xyz_args, base, None, lambda name: name))
    extras = replace(base, prompt="a cat inkstyle <lora:shiny:0.8>", sd_vae="other")
    requests = [grid, extras, base]
    cluster = with_folders(user_folders, outputs_dir=tmp_path / "out", cluster="auto", cluster_workers=1)
    try:
        assert [w.name for w in cluster.queue.workers] == ["ray:1"]
        on_actor = [cluster.submit(r).result(TIMEOUT) for r in requests]
    finally:
        cluster.close()
    # The actors run with OMP_NUM_THREADS=1 (local_ray); the local run uses one thread too, since another thread
    # count sums the convolutions in another order and can move a pixel by one level.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    local = with_folders(user_folders)
    try:
        on_device = [local.submit(r).result(TIMEOUT) for r in requests]
    finally:
        local.close()
        torch.set_num_threads(threads)
    for remote, here in zip(on_actor, on_device, strict=True):
        assert len(remote.images) == len(here.images) and remote.infotexts == here.infotexts
        assert [i.tobytes() for i in remote.images] == [i.tobytes() for i in here.images]
    assert len(on_actor[0].images) == 3  # the grid, then its two cells (as A1111 with "include lone images")
    assert on_actor[0].images[0].size[0] == 2 * 64  # the grid: its two cells side by side
    params = parse_infotext(on_actor[1].infotexts[0])
    assert {"TI hashes", "Lora hashes"} <= set(params) and params["VAE"] == "other.safetensors"
    assert on_actor[1].images[0].tobytes() != on_actor[2].images[0].tobytes()  # they changed the pixels

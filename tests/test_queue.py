"""The durable queue: the request codec, the SQLite store, restart order, history, broken databases,
write-once image files, ordering (move, pause, clear, requeue) and the one-lock snapshot."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import fields
from pathlib import Path

import pytest
from PIL import Image

from webui.jobs import Job, JobQueue, JobState
from webui.pipeline import GenerationRequest, GenerationResult, Img2ImgRequest, ResolvedRequest, resolve_request
from webui.queue.codec import UnreadableRequest, UnstorableValue, decode_request, encode_request
from webui.queue.outputs import job_image_path, save_job_images
from webui.queue.store import QueueStore
from webui.sampling import create_sampler_registry

TIMEOUT = 30
SAMPLERS = create_sampler_registry()


def wait_until(predicate, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


def resolved(prompt: str = "a cat", **fields_: object) -> ResolvedRequest:
    return resolve_request(GenerationRequest(prompt=prompt, seed=5, **fields_), SAMPLERS, (64, 64))  # type: ignore[arg-type]


class Runner:
    """Records the prompts it ran; a prompt in ``hold`` waits until released."""

    def __init__(self, hold: set[str] | None = None):
        self.order: list[str] = []
        self.hold = hold or set()
        self.release = threading.Event()
        self.started = threading.Event()

    def __call__(self, job: Job) -> GenerationResult:
        self.order.append(job.request.prompt)
        if job.request.prompt in self.hold:
            self.started.set()
            self.release.wait(TIMEOUT)
        return GenerationResult(seeds=[job.request.seed], request=job.request, interrupted=job.control.interrupted)


def decode(text: str) -> ResolvedRequest:
    return decode_request(text, SAMPLERS)


# --- codec ---------------------------------------------------------------------------------------


def test_codec_round_trips_every_field_of_txt2img_and_img2img_requests():
    txt = resolve_request(
        GenerationRequest(prompt="a (cat:1.2)\nline two", sampler_name="DDIM", seed=-1, sampler_options={"eta": 0.3}),
        SAMPLERS,
        (64, 96),
    )
    back = decode(encode_request(txt))
    assert back == txt  # every field, the sampler (by name), the read-only options and the drawn seed
    assert isinstance(back.sampler_options, type(txt.sampler_options))

    init = Image.new("RGB", (16, 8), (10, 200, 30))
    init.putpixel((3, 4), (1, 2, 3))
    mask = Image.new("L", (16, 8), 0)
    img = resolve_request(
        Img2ImgRequest(prompt="x", seed=3, init_images=[init], mask=mask, denoising_strength=0.4), SAMPLERS, (64, 64)
    )
    back_img = decode(encode_request(img))
    assert back_img.img2img is not None and img.img2img is not None
    assert back_img.img2img.init_images[0].tobytes() == init.tobytes()
    assert back_img.img2img.mask is not None and back_img.img2img.mask.tobytes() == mask.tobytes()
    assert back_img.img2img.denoising_strength == 0.4
    for f in fields(ResolvedRequest):
        if f.name != "img2img":
            assert getattr(back_img, f.name) == getattr(img, f.name), f.name


def test_codec_names_what_it_cannot_store_and_refuses_foreign_or_newer_documents():
    bad = GenerationRequest(prompt="x", sampler_options={"callback": lambda: None})
    with pytest.raises(UnstorableValue, match=r"request\.sampler_options\['callback'\]"):
        encode_request(bad)  # type: ignore[arg-type]
    good = encode_request(resolved())
    with pytest.raises(UnreadableRequest, match="format version 99"):
        decode(good.replace('"version": 1', '"version": 99'))
    with pytest.raises(UnreadableRequest, match="not one of this application's"):
        decode(good.replace("webui.pipeline.requests:ResolvedRequest", "subprocess:Popen"))
    with pytest.raises(UnreadableRequest, match="not installed"):
        decode(good.replace('"__sampler__": "Euler a"', '"__sampler__": "No Such Sampler"'))


# --- restart -------------------------------------------------------------------------------------


def test_pending_jobs_run_again_in_their_order_after_a_crash_and_the_running_one_first(tmp_path: Path):
    db = tmp_path / "queue.sqlite3"
    first = Runner(hold={"p0"})
    queue = JobQueue(first, store=QueueStore.open(db), decode=decode)
    jobs = [queue.submit(Job(resolved(f"p{i}"), owner="ann" if i % 2 else None)) for i in range(5)]
    first.started.wait(TIMEOUT)
    assert queue.move(jobs[4].id, jobs[2].id)  # p4 now runs before p2: the new order is stored too
    # The process "dies" here: nothing is closed. A new process opens the same file.
    second = Runner()
    again = JobQueue(second, store=QueueStore.open(db), decode=decode)
    wait_until(lambda: all(again.get(j.id).done for j in jobs))
    assert second.order == ["p0", "p1", "p4", "p2", "p3"]
    assert [again.get(j.id).owner for j in jobs] == [None, "ann", None, "ann", None]
    assert [again.get(j.id).request for j in jobs] == [j.request for j in jobs]
    rows = {row.id: row for row in again.store.history(limit=10)}
    assert {row.state for row in rows.values()} == {"done"}
    assert rows[jobs[0].id].attempts == 2 and rows[jobs[1].id].attempts == 1
    first.release.set()
    again.close()


def test_a_clean_close_keeps_waiting_and_running_jobs_pending(tmp_path: Path):
    db = tmp_path / "queue.sqlite3"
    runner = Runner(hold={"a"})
    queue = JobQueue(runner, store=QueueStore.open(db), decode=decode)
    jobs = [queue.submit(Job(resolved(p))) for p in "abc"]
    runner.started.wait(TIMEOUT)
    threading.Timer(0.2, runner.release.set).start()
    queue.close()
    assert [j.state for j in jobs] == [JobState.INTERRUPTED] * 3  # in this process: stopped
    store = QueueStore.open(db)
    assert [row.request and decode(row.request).prompt for row in store.pending()] == ["a", "b", "c"]


def test_history_is_pruned_to_the_newest_n_finished_jobs(tmp_path: Path):
    queue = JobQueue(Runner(), store=QueueStore.open(tmp_path / "q.sqlite3"), history=3, decode=decode)
    jobs = [queue.submit(Job(resolved(f"p{i}"))) for i in range(6)]
    wait_until(lambda: all(j.done for j in jobs))
    assert [row.id for row in queue.store.history(limit=10)] == [j.id for j in reversed(jobs[-3:])]
    assert queue.store.count(["done", "failed", "interrupted"]) == 3
    queue.close()


def test_a_job_whose_request_cannot_be_restored_fails_with_the_reason(tmp_path: Path):
    db = tmp_path / "q.sqlite3"
    store = QueueStore.open(db)
    queue = JobQueue(Runner(hold={"a"}), store=store, decode=decode)
    queue.pause()
    job = queue.submit(Job(resolved("a")))
    with sqlite3.connect(db) as raw:
        raw.execute("UPDATE jobs SET request = replace(request, 'Euler a', 'Gone Sampler')")
    again = JobQueue(Runner(), store=QueueStore.open(db), decode=decode)
    row = again.store.get(job.id)
    assert row is not None and row.state == "failed" and "Gone Sampler" in (row.error or "")
    assert again.paused  # pause is remembered


@pytest.mark.parametrize("content", [b"this is not a database" * 100, "other-app"])
def test_a_malformed_database_is_moved_aside_with_a_message_and_the_queue_starts_empty(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes | str
):
    db = tmp_path / "queue.sqlite3"
    if content == "other-app":
        with sqlite3.connect(db) as other:
            other.execute("CREATE TABLE invoices (id INTEGER)")
            other.execute("INSERT INTO invoices VALUES (42)")
        original = db.read_bytes()
    else:
        assert isinstance(content, bytes)
        db.write_bytes(content)
        original = content
    with caplog.at_level(logging.ERROR, logger="webui.queue.store"):
        store = QueueStore.open(db)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("queue.sqlite3.broken-")]
    assert len(aside) == 1 and aside[0].read_bytes() == original  # kept, not overwritten
    assert any(str(db) in r.message and str(aside[0]) in r.message for r in caplog.records)
    assert store.pending() == [] and store.count(["done"]) == 0
    queue = JobQueue(Runner(), store=store, decode=decode)
    assert queue.submit(Job(resolved("x"))).result(TIMEOUT).seeds == [5]


# --- files ---------------------------------------------------------------------------------------


def test_image_i_of_a_job_is_written_once_by_name_and_never_left_partial(tmp_path: Path):
    job = Job(resolved("x", batch_size=2))
    images = [Image.new("RGB", (8, 8), (i * 50, 0, 0)) for i in range(2)]
    result = GenerationResult(images=images, seeds=[5, 6], infotexts=["t0", "t1"], request=job.request)
    (tmp_path / "stale.png.part").write_bytes(b"half")
    paths = save_job_images(tmp_path, job, result)
    assert paths == [job_image_path(tmp_path, job, i, 5 + i) for i in range(2)]
    mtimes = [p.stat().st_mtime_ns for p in paths]
    assert save_job_images(tmp_path, job, result) == paths  # a re-run: the same names, nothing rewritten
    assert [p.stat().st_mtime_ns for p in paths] == mtimes
    assert sorted(p.name for p in paths[0].parent.glob("*.png")) == sorted(p.name for p in paths)
    assert not list(paths[0].parent.glob("*.part"))
    with Image.open(paths[1]) as saved:
        saved.load()
        assert saved.info["parameters"] == "t1" and saved.getpixel((0, 0)) == (50, 0, 0)


# --- order and control ---------------------------------------------------------------------------


def test_move_pause_resume_clear_and_requeue():
    runner = Runner(hold={"a"})
    queue = JobQueue(runner, decode=decode)
    a, b, c, d = (queue.submit(Job(resolved(p), owner="ann" if p in "bd" else "bob")) for p in "abcd")
    runner.started.wait(TIMEOUT)
    assert queue.move(d.id, "top") and [j.request.prompt for j in queue.waiting] == ["d", "b", "c"]
    assert queue.move(d.id, "bottom") and [j.request.prompt for j in queue.waiting] == ["b", "c", "d"]
    assert queue.move(d.id, c.id) and [j.request.prompt for j in queue.waiting] == ["b", "d", "c"]
    assert not queue.move(a.id, "top")  # running: not movable
    queue.pause()
    runner.release.set()
    a.result(TIMEOUT)
    time.sleep(0.1)
    assert b.state == JobState.QUEUED and queue.snapshot().paused  # nothing new starts while paused
    assert queue.clear(owner="bob") == 1 and c.state == JobState.INTERRUPTED
    queue.resume()
    d.result(TIMEOUT)
    assert runner.order == ["a", "b", "d"]
    copy = queue.requeue(a.id)
    assert copy.id != a.id and copy.result(TIMEOUT).seeds == [5] and copy.owner == "bob"
    queue.close()


def test_progress_reads_running_and_waiting_in_one_snapshot():
    """A job moving from waiting to running is always in one of the two lists of a snapshot."""
    queue = JobQueue(Runner())
    queue.pause()
    jobs = [queue.submit(Job(resolved(f"p{i}"))) for i in range(300)]
    seen: list[int] = []
    queue.resume()
    while not all(j.done for j in jobs):
        snap = queue.snapshot()
        done_after = sum(j.done for j in jobs)
        seen.append(len(snap.running) + len(snap.waiting) + done_after)
    assert seen and min(seen) >= len(jobs)
    queue.close()


def test_codec_stores_plugin_schedules_and_hires_upscalers_by_name(tmp_path: Path):
    """Objects that a registry holds (a plugin schedule, a hires fix's upscaler) go in by name and come back from the
    registries: every new schedule (SGM Uniform, Align Your Steps...) and every upscaler keep the job durable."""
    from dataclasses import replace

    from webui.pipeline.hires import HiresRequest
    from webui.upscalers import UpscalerRegistry

    (tmp_path / "4x-test.pth").write_bytes(b"not read: a model upscaler loads on first use")
    upscalers = UpscalerRegistry(tmp_path)
    lanczos = resolve_request(
        GenerationRequest(prompt="a", seed=5, hires=HiresRequest(hr_upscaler="Lanczos", hr_scheduler="Beta")),
        SAMPLERS,
        (64, 64),
    )
    assert lanczos.hires is not None
    # (a model upscaler needs spandrel to be chosen; here it is put in place directly, as resolving would)
    model_upscaler = replace(lanczos, hires=replace(lanczos.hires, upscaler=upscalers.get("4x-test")))
    for original in (
        resolve_request(GenerationRequest(prompt="a", seed=5, scheduler="SGM Uniform"), SAMPLERS, (64, 64)),
        resolve_request(GenerationRequest(prompt="a", seed=5, scheduler="align_your_steps"), SAMPLERS, (64, 64)),
        lanczos,
        model_upscaler,
    ):
        back = decode_request(encode_request(original), SAMPLERS, upscalers)
        assert back == original
    assert decode_request(encode_request(lanczos), SAMPLERS).hires.upscaler.name == "Lanczos"
    with pytest.raises(UnreadableRequest, match="upscaler '4x-test' is gone"):
        decode_request(encode_request(model_upscaler), SAMPLERS, UpscalerRegistry(tmp_path / "empty"))


def test_codec_gives_a_lora_its_file_back_as_a_path_it_can_open(tmp_path: Path):
    from dataclasses import replace

    from webui.extra_networks.lora_merge import LoraUse

    file = tmp_path / "shiny.safetensors"
    file.write_bytes(b"12345")
    original = replace(resolved(), loras=(LoraUse("shiny", file, 0.8, 0.8, "abc"),))
    back = decode(encode_request(original))
    assert back == original
    assert back.loras[0].path.stat().st_size == 5  # a restored or remote job opens the file (a PurePath cannot)

"""WebUIService / JobQueue: FIFO order, queue positions, interrupt/skip, errors that don't wedge the queue."""

from __future__ import annotations

import gc
import threading
import time
import weakref

import pytest

from tests.support.fakes import FakeService, interface_gaps
from webui.jobs import Job, JobQueue, JobState
from webui.pipeline.errors import InvalidRequest
from webui.pipeline.requests import GenerationRequest, GenerationResult
from webui.service import WebUIService

TIMEOUT = 60


def wait_until(predicate, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


class Scripted:
    """A job runner whose jobs wait for a per-job event and record the order they ran in."""

    def __init__(self):
        self.order: list[str] = []
        self.release: dict[str, threading.Event] = {}
        self.fail: set[str] = set()

    def __call__(self, job: Job) -> GenerationResult:
        self.order.append(job.request.prompt)
        event = self.release.setdefault(job.request.prompt, threading.Event())
        event.wait(TIMEOUT)
        if job.request.prompt in self.fail:
            raise RuntimeError(f"boom in {job.request.prompt}")
        return GenerationResult(seeds=[1], request=job.request, interrupted=job.control.interrupted)


def submit(queue: JobQueue, runner: Scripted, prompt: str) -> Job:
    runner.release.setdefault(prompt, threading.Event())
    return queue.submit(Job(GenerationRequest(prompt=prompt)))


def test_jobs_run_one_at_a_time_in_fifo_order_with_queue_positions():
    runner = Scripted()
    queue = JobQueue(runner)
    try:
        jobs = [submit(queue, runner, p) for p in "abcd"]
        wait_until(lambda: jobs[0].state == JobState.RUNNING)
        assert [j.queue_position for j in jobs] == [0, 1, 2, 3]
        assert [j.state for j in jobs] == [JobState.RUNNING, JobState.QUEUED, JobState.QUEUED, JobState.QUEUED]
        assert len({j.id for j in jobs}) == 4
        runner.release["a"].set()
        wait_until(lambda: jobs[1].state == JobState.RUNNING)
        assert jobs[0].state == JobState.DONE and jobs[0].queue_position is None
        assert [j.queue_position for j in jobs[1:]] == [0, 1, 2]
        for p in "bcd":
            runner.release[p].set()
        assert [j.result(TIMEOUT).request.prompt for j in jobs] == list("abcd")
        assert runner.order == list("abcd")
        assert queue.get(jobs[2].id) is jobs[2]
    finally:
        for event in runner.release.values():
            event.set()
        queue.close()


def test_a_failing_job_stores_its_error_and_the_queue_goes_on():
    runner = Scripted()
    runner.fail.add("bad")
    queue = JobQueue(runner)
    try:
        bad, good = submit(queue, runner, "bad"), submit(queue, runner, "good")
        runner.release["bad"].set()
        runner.release["good"].set()
        assert good.result(TIMEOUT).seeds == [1]
        assert bad.state == JobState.ERROR and "boom in bad" in bad.error_message
        with pytest.raises(RuntimeError, match="boom in bad"):
            bad.result(0)
    finally:
        queue.close()


def test_interrupting_a_queued_job_removes_it_and_later_jobs_move_up():
    runner = Scripted()
    queue = JobQueue(runner)
    try:
        first, second, third = (submit(queue, runner, p) for p in ("1", "2", "3"))
        wait_until(lambda: first.state == JobState.RUNNING)
        second.interrupt()
        assert second.state == JobState.INTERRUPTED and second.done and second.result(0).interrupted
        assert third.queue_position == 1
        runner.release["1"].set()
        runner.release["3"].set()
        assert third.result(TIMEOUT).request.prompt == "3"
        assert runner.order == ["1", "3"]
    finally:
        queue.close()


def test_result_timeout_and_close_finishes_waiting_jobs():
    runner = Scripted()
    queue = JobQueue(runner)
    running, waiting = submit(queue, runner, "r"), submit(queue, runner, "w")
    wait_until(lambda: running.state == JobState.RUNNING)
    with pytest.raises(TimeoutError):
        running.result(0.01)
    runner.release["r"].set()
    queue.close()
    assert waiting.state == JobState.INTERRUPTED
    assert running.wait(TIMEOUT) and running.state in (JobState.DONE, JobState.INTERRUPTED)
    with pytest.raises(RuntimeError):
        queue.submit(Job(GenerationRequest()))


def test_job_states_read_as_their_values_and_only_move_forward():
    assert [state.value for state in JobState] == ["queued", "running", "done", "error", "interrupted"]
    assert JobState.DONE == "done" and f"{JobState.DONE}" == str(JobState.DONE) == "done"
    queue = JobQueue(lambda job: GenerationResult(seeds=[7], request=job.request))
    try:
        job = queue.submit(Job(GenerationRequest()))
        assert job.result(TIMEOUT).seeds == [7] and job.state == JobState.DONE
        with pytest.raises(RuntimeError, match="no transition from done to running"):
            job._move(JobState.RUNNING)
        with pytest.raises(ValueError, match="submitted before"):
            queue.submit(job)
        assert job.state == JobState.DONE and queue.jobs == [job]
    finally:
        queue.close()


@pytest.fixture(scope="module")
def service(tiny_checkpoint, tmp_path_factory):
    svc = WebUIService(tiny_checkpoint.models_yaml, outputs_dir=tmp_path_factory.mktemp("outputs"), version="test")
    yield svc
    svc.close()


def test_the_service_and_its_stand_in_offer_the_whole_interface_the_ui_and_api_use(service):
    assert interface_gaps(service) == []
    assert interface_gaps(FakeService()) == []

    class RenamedParameter(FakeService):
        def submit(
            self, request: GenerationRequest, model: str | None = None, *, save: bool = True, owner: str | None = None
        ) -> Job:
            return super().submit(request, model, save=save, owner=owner)

    assert [gap.split(":")[0] for gap in interface_gaps(RenamedParameter())] == ["submit"]
    assert "close: missing" in interface_gaps(object())


def test_service_generates_saves_and_reports_progress(service):
    job = service.submit(GenerationRequest(prompt="the cat", steps=3, seed=5, batch_size=2))
    result = job.result(TIMEOUT)
    assert job.state == JobState.DONE and result.seeds == [5, 6]
    assert len(result.paths) == 2 and all(p.is_file() for p in result.paths)
    assert "Version: test" in result.infotexts[0] and "Model: tiny" in result.infotexts[0]
    snapshot = service.progress(job.id)
    assert snapshot.state == JobState.DONE and snapshot.progress == 1.0 and snapshot.step == 3 == snapshot.total_steps
    assert snapshot.preview is not None
    assert service.progress().state == "idle"
    unsaved = service.run(GenerationRequest(prompt="x", steps=1, seed=5), save=False, timeout=TIMEOUT)
    assert unsaved.images and unsaved.paths == []


def test_service_rejects_bad_requests_at_submit(service):
    before = len(service.jobs)
    with pytest.raises(InvalidRequest) as info:
        service.submit(GenerationRequest(width=100))
    assert info.value.field == "width"
    with pytest.raises(InvalidRequest) as info:
        service.submit(GenerationRequest(sampler_name="nope"))
    assert info.value.field == "sampler_name"
    assert len(service.jobs) == before


def test_service_interrupt_and_skip_act_on_the_running_job(service):
    long = GenerationRequest(prompt="p", steps=150, seed=1, n_iter=3, sampler_name="Euler")
    job = service.submit(long)
    after = service.submit(GenerationRequest(prompt="q", steps=2, seed=2))
    wait_until(lambda: job.progress is not None and job.progress.step >= 2)
    assert service.progress().job_id == job.id and service.progress().state == JobState.RUNNING
    assert service.progress(after.id).queue_position == 1
    assert service.skip()  # abandon batch 1 of 3
    wait_until(lambda: job.progress.image_index >= 1)
    assert service.interrupt()
    result = job.result(TIMEOUT)
    assert job.state == JobState.INTERRUPTED and result.interrupted
    # Batch 1 was skipped; batch 2's current latent is kept, marked as interrupted.
    assert result.seeds == [2] and len(result.images) == 1 and "Interrupted: step " in result.infotexts[0]
    assert after.result(TIMEOUT).seeds == [2] and after.state == JobState.DONE
    assert not service.interrupt()  # nothing running


def test_step_time_per_latent_pixel_is_measured_from_finished_jobs(tiny_checkpoint):
    svc = WebUIService(tiny_checkpoint.models_yaml)
    try:
        assert svc.estimate_seconds(64, 64, 8) is None  # nothing measured yet: no number
        job = svc.submit(GenerationRequest(prompt="p", steps=6, seed=1, width=64, height=64, batch_size=2))
        job.result(TIMEOUT)
        per_step = svc.estimate_seconds(64, 64, 1, images=2)
        # Sampling 6 steps took about what the estimate says (the job's time includes encode and decode).
        assert per_step is not None and 0 < per_step * 5 <= job.finished_at - job.started_at
        assert svc.estimate_seconds(128, 128, 8) == pytest.approx(4 * 8 * svc.estimate_seconds(64, 64, 1))
    finally:
        svc.close()


def test_service_errors_do_not_wedge_the_queue(service):
    bad = service.submit(GenerationRequest(prompt="p", steps=1), model_name="missing")
    good = service.submit(GenerationRequest(prompt="p", steps=1, seed=3))
    assert good.result(TIMEOUT).seeds == [3]
    assert bad.state == JobState.ERROR and "missing" in bad.error_message
    assert service.progress(bad.id).state == JobState.ERROR


def test_service_built_from_models_yaml_uses_the_entry_native_size_and_reports_hashes(tiny_checkpoint, tmp_path):
    svc = WebUIService(tiny_checkpoint.models_yaml, device="cpu", outputs_dir=tmp_path)
    try:
        assert [e.name for e in svc.registry.entries] == ["tiny"]
        sha = svc.model_sha256("tiny")  # a small file: hashed without loading it
        assert sha is not None and len(sha) == 64
        result = svc.run(GenerationRequest(prompt="the cat", steps=2, seed=1), timeout=TIMEOUT)
        assert result.images[0].size == (64, 64)  # width/height None -> the entry's 64x64
        assert svc.native_size() == (64, 64)
        assert f"Model hash: {sha[:10]}" in result.infotexts[0] and "Model: tiny" in result.infotexts[0]
        assert svc.model_sha256("tiny") == sha and svc.model_sha256("nope") is None
        assert svc.reload_registry().names == ["tiny"]
        assert svc.token_count("the cat") == (2, 75)  # the model is loaded now
        defaults = svc.default_request()
        assert (defaults.width, defaults.height, defaults.steps, defaults.cfg_scale) == (64, 64, 20, 7.0)
        assert result.paths[0].parent.parent.name == "txt2img"
    finally:
        svc.close()


def test_switching_models_frees_the_previous_one(tiny_checkpoint, tmp_path):
    models_yaml = tmp_path / "models.yaml"
    models_yaml.write_text(
        "".join(
            ["models:\n"]
            + [
                f"  - name: {name}\n    path: {tiny_checkpoint.path}\n    width: 64\n    height: 64\n"
                for name in ("a", "b")
            ]
        )
    )
    svc = WebUIService(models_yaml, outputs_dir=None)
    try:
        svc.run(GenerationRequest(prompt="the cat", steps=2, seed=1), "a", timeout=TIMEOUT)  # fits a's preview map
        first = weakref.ref(svc.models.loaded()["a"])
        svc.select_model("b")
        gc.collect()
        still_referenced = first() is not None
        assert not still_referenced, "model a stays in memory after the switch to b"
        assert list(svc.models.loaded()) == ["b"]
        assert svc.run(GenerationRequest(prompt="the cat", steps=2, seed=1), timeout=TIMEOUT).images
    finally:
        svc.close()


def test_model_switch_waits_for_the_running_generation(service):
    job = service.submit(GenerationRequest(prompt="p", steps=150, seed=1, n_iter=3, sampler_name="Euler"))
    wait_until(lambda: job.progress is not None)
    switched = threading.Event()
    thread = threading.Thread(target=lambda: (service.select_model("tiny"), switched.set()))
    thread.start()
    assert not switched.wait(0.2)  # blocked behind the running job
    job.interrupt()
    thread.join(TIMEOUT)
    assert switched.is_set() and job.state == JobState.INTERRUPTED


def test_even_a_system_exit_inside_a_job_does_not_stop_the_queue():
    def run(job: Job) -> GenerationResult:
        if job.request.prompt == "exit":
            raise SystemExit(3)
        return GenerationResult(seeds=[2], request=job.request)

    queue = JobQueue(run)
    try:
        fatal, after = queue.submit(Job(GenerationRequest(prompt="exit"))), queue.submit(Job(GenerationRequest()))
        assert after.result(TIMEOUT).seeds == [2]
        assert fatal.state == JobState.ERROR and isinstance(fatal.error, SystemExit)
    finally:
        queue.close()

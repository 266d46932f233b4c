"""Choosing a model that is not on disk, from the UI: the plan is said first, progress shows bytes/speed/ETA,
Cancel stops it, a failure is one message and leaves the loaded model (and the sizes) as they were, one event
per pick; and models.yaml's problems are shown (banner, Models tab rows).

The handler logic (`webui.ui.backend.ModelSwitcher`) runs against `FakeService` first, then against the real
`WebUIService` downloading the tiny checkpoint from a local stand-in hub (tests/support/hub_server.py).
"""

from __future__ import annotations

import threading
import time

import pytest

from tests.support.fakes import FakeService
from tests.support.hub_server import fake_hub, use_hub
from webui.models.registry import load_registry
from webui.pipeline.requests import GenerationRequest
from webui.service import WebUIService
from webui.ui import backend
from webui.ui.backend import ModelSwitcher, SelectionUpdate


@pytest.fixture
def fake():
    service = FakeService()
    service.select_model("tiny")
    yield service
    service.close()


def collect(updates, on_update=None) -> list[SelectionUpdate]:
    seen = []
    for update in updates:
        seen.append(update)
        if on_update is not None:
            on_update(update)
    return seen


# --- the handler logic, with the fake service ---------------------------------------------------------


def test_download_is_announced_then_shows_progress_then_loads_and_sets_the_size(fake):
    fake.hub_sizes["big"] = 4_265_380_512
    updates = collect(ModelSwitcher(fake, poll_interval=0.01).select("big", "s1"))
    announced = next(u.message for u in updates if "downloads" in u.message)
    assert "**big** downloads 4.3 GB from the Hugging Face hub (someone/big/big.safetensors)" in announced
    progress = [u for u in updates if u.message.startswith("Downloading")]
    assert progress and all(u.cancellable and not u.done for u in progress)
    assert "of 4.3 GB" in progress[0].message and "/s" in progress[0].message and "ETA" in progress[0].message
    assert updates.index(next(u for u in updates if "downloads" in u.message)) < updates.index(progress[0])
    last = updates[-1]
    assert last.done and last.model == "big" and last.size == (128, 96) and not last.cancellable
    assert fake.current_model_name == "big" and fake.selects == ["tiny", "big"]


def test_cancel_stops_the_download_and_the_dropdown_goes_back_to_the_loaded_model(fake):
    fake.hub_sizes["big"] = 10**9
    fake.download_steps, fake.download_step_seconds = 100, 0.05  # 5 s unless cancelled
    switcher = ModelSwitcher(fake, poll_interval=0.01)

    def cancel_on_progress(update: SelectionUpdate) -> None:
        if update.message.startswith("Downloading"):
            assert switcher.cancel("s1") and not switcher.cancel("other-session")

    started = time.monotonic()
    updates = collect(switcher.select("big", "s1"), cancel_on_progress)
    assert time.monotonic() - started < 2
    last = updates[-1]
    assert last.done and last.model == "tiny" and last.size is None  # sizes untouched
    assert "cancelled" in last.message and "Still using **tiny**" in last.message
    assert fake.current_model_name == "tiny" and not switcher.busy("s1")


def test_failed_download_is_one_message_keeps_the_model_and_is_not_retried(fake):
    fake.hub_sizes["big"] = 10**9
    fake.download_error = "Could not download big.safetensors for model 'big': HF_HUB_OFFLINE is set (unset it)"
    updates = collect(ModelSwitcher(fake, poll_interval=0.01).select("big", "s1"))
    failures = [u for u in updates if u.done]
    assert len(failures) == 1 and updates[-1] is failures[0]
    assert failures[0].model == "tiny" and failures[0].size is None
    assert "⚠️ Could not load **big**" in failures[0].message and "unset it" in failures[0].message
    assert "Traceback" not in failures[0].message
    assert fake.selects == ["tiny", "big"] and fake.current_model_name == "tiny"


def test_a_repeated_event_for_the_pick_in_progress_does_nothing(fake):
    fake.hub_sizes["big"] = 10**6
    fake.download_steps, fake.download_step_seconds = 10, 0.05
    switcher = ModelSwitcher(fake, poll_interval=0.01)
    first = switcher.select("big", "s1")
    next(first)  # "Checking big…": the selection is in flight
    assert list(switcher.select("big", "s1")) == []  # the blur after the pick: ignored
    assert collect(first)[-1].model == "big"
    assert list(switcher.select("big", "s1")) == []  # the current model: nothing to do
    assert list(switcher.select(None, "s1")) == []
    assert fake.selects == ["tiny", "big"]


def test_models_tab_load_sends_a_model_that_needs_a_download_to_the_checkpoint_list(fake):
    fake.hub_sizes["big"] = 10**9
    with pytest.raises(ValueError, match="must be downloaded first: pick it in the checkpoint list"):
        backend.load_model(fake, "big")
    assert fake.current_model_name == "tiny" and fake.selects == ["tiny"]  # nothing was downloaded or loaded
    backend.load_model(fake, "tiny")  # a model on disk loads as before


def test_a_model_on_disk_loads_without_a_download_message(fake):
    updates = collect(ModelSwitcher(fake, poll_interval=0.01).select("big", "s1"))
    assert [u.message for u in updates] == ["Checking **big**…", "Loading **big**…", "Loaded **big**"]
    assert updates[-1].size == (128, 96)


def test_registry_problems_are_in_the_banner_and_one_row_each(tmp_path, tiny_checkpoint):
    path = tmp_path / "models.yaml"
    path.write_text(
        "models:\n"
        f"  - {{name: tiny, path: {tiny_checkpoint.path}, sampler: DPM++2M}}\n"
        f"  - {{name: demo, pth: {tiny_checkpoint.path}}}\n"
    )
    service = WebUIService(path)
    try:
        problems = [str(p) for p in service.registry.problems]
        assert len(problems) == 2
        banner = backend.problems_banner(service)
        assert "models.yaml has 2 problems (1 invalid, skipped)" in banner
        assert "pth" in banner and "DPM++2M" in banner and "DPM++ 2M" in banner  # with the closest name
        rows = backend.model_status_rows(service)
        assert [r[1] for r in rows] == ["not loaded, default", "invalid entry", "check setting"]
        assert {rows[1][4], rows[2][4]} == set(problems)
        path.write_text(f"models:\n  - {{name: tiny, path: {tiny_checkpoint.path}}}\n")
        service.reload_registry()
        assert backend.problems_banner(service) == "" and len(backend.model_status_rows(service)) == 1
    finally:
        service.close()


def test_broken_default_entry_leaves_the_dropdown_empty_rather_than_another_model(tmp_path, tiny_checkpoint):
    path = tmp_path / "models.yaml"
    path.write_text(
        f"models:\n  - {{name: demo, pth: {tiny_checkpoint.path}, default: true}}\n"
        "  - {name: hub, repo: someone/big, file: big.safetensors}\n"
    )
    service = WebUIService(path)
    try:
        assert service.registry.names == ["hub"] and backend.default_model(service) is None
    finally:
        service.close()


# --- the real service, downloading from a local stand-in hub ---------------------------------------


@pytest.fixture
def hub_service(tmp_path, tiny_checkpoint, monkeypatch):
    """A WebUIService with the local tiny model loaded and 'hub' (the same weights) on a stand-in hub."""
    with fake_hub(chunk_size=128 * 1024, delay=0.05) as hub:
        hub.add("someone/tiny", "tiny.safetensors", tiny_checkpoint.path.read_bytes())
        for name in ("vocab.json", "merges.txt"):
            hub.add("someone/tokenizer", name, (tiny_checkpoint.tokenizer_dir / name).read_bytes())
        use_hub(monkeypatch, hub.url, tmp_path / "hf")
        path = tmp_path / "models.yaml"
        path.write_text(
            "models:\n"
            f"  - {{name: tiny, path: {tiny_checkpoint.path}, width: 64, height: 64}}\n"
            "  - {name: hub, repo: someone/tiny, file: tiny.safetensors, tokenizer: someone/tokenizer,"
            " width: 96, height: 80}\n"
        )
        assert not load_registry(path).errors
        service = WebUIService(path)
        service.select_model("tiny")
        try:
            yield service, hub
        finally:
            service.close()


def test_real_download_through_the_switcher_cancel_keeps_the_loaded_model(hub_service):
    service, hub = hub_service
    switcher = ModelSwitcher(service, poll_interval=0.05)

    def cancel_once_bytes_flow(update: SelectionUpdate) -> None:
        if update.message.startswith("Downloading"):
            switcher.cancel("s1")

    updates = collect(switcher.select("hub", "s1"), cancel_once_bytes_flow)
    assert updates[1].message.startswith("**hub** downloads ") and "MB from the Hugging Face hub" in updates[1].message
    assert any(u.message.startswith("Downloading **hub**") and "ETA" in u.message for u in updates)
    assert updates[-1].done and updates[-1].model == "tiny" and "cancelled" in updates[-1].message
    assert service.current_model_name == "tiny" and list(service.models.loaded()) == ["tiny"]
    assert {s.name: s.needs_download for s in service.model_status()}["hub"] is True  # nothing partial kept


def test_real_download_then_load_switches_and_generate_uses_it(hub_service):
    service, hub = hub_service
    hub.delay = 0.0
    updates = collect(ModelSwitcher(service, poll_interval=0.02).select("hub", "s1"))
    assert updates[-1] == SelectionUpdate("Loaded **hub**", done=True, model="hub", size=(96, 80))
    assert service.current_model_name == "hub" and service.download_plan("hub") is None
    result = service.run(GenerationRequest(prompt="x", steps=1, width=64, height=64, seed=1), timeout=120)
    assert len(result.images) == 1


def test_failed_download_keeps_the_model_and_generate_never_downloads(hub_service):
    service, hub = hub_service
    hub.fail_with = 503
    updates = collect(ModelSwitcher(service, poll_interval=0.02).select("hub", "s1"))
    assert updates[-1].done and updates[-1].model == "tiny" and updates[-1].size is None
    assert "HTTP 503" in updates[-1].message and "Still using **tiny**" in updates[-1].message
    assert service.current_model_name == "tiny"
    requests_after_select = hub.count()
    job = service.submit(GenerationRequest(prompt="x", steps=1, width=64, height=64, seed=1), "hub")
    with pytest.raises(Exception, match="not downloaded yet: select it"):
        job.result(60)
    assert hub.count() == requests_after_select  # Generate asked the hub nothing
    assert service.current_model_name == "tiny"


def test_generation_with_the_loaded_model_goes_on_during_a_download(hub_service):
    service, hub = hub_service
    hub.delay = 0.2  # about 20 s for the whole file: cancelled below
    cancel = threading.Event()
    errors: list[BaseException] = []

    def select() -> None:
        try:
            service.select_model("hub", cancel=cancel)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    thread = threading.Thread(target=select)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while {s.name: s.download for s in service.model_status()}["hub"] is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert {s.name: s.download for s in service.model_status()}["hub"] is not None
        result = service.run(GenerationRequest(prompt="x", steps=1, width=64, height=64, seed=1), timeout=60)
        assert len(result.images) == 1 and thread.is_alive()  # generated while the download went on
    finally:
        cancel.set()
        thread.join(10)
    assert type(errors[0]).__name__ == "DownloadCancelled" and service.current_model_name == "tiny"

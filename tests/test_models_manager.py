"""ModelManager: lazy loading from the registry, one resident model, errors kept per model, thread safety."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import torch

from tests.support.hub_server import fake_hub, use_hub
from webui.models.download import DownloadCancelled, DownloadError, DownloadRequiredError
from webui.models.errors import CheckpointNotFoundError, CorruptCheckpointError
from webui.models.loading import load_model
from webui.models.manager import ModelManager
from webui.models.registry import UnknownModelError, load_registry


def write_registry(tmp_path: Path, tiny_checkpoint, extra: str = "") -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(
        "models:\n"
        f"  - {{name: tiny, path: {tiny_checkpoint.path}, default: true, width: 64, height: 64}}\n"
        f"  - {{name: tiny-bf16, path: {tiny_checkpoint.path}, dtype: bf16}}\n"
        f"  - {{name: missing, path: {tmp_path / 'nope.safetensors'}}}\n" + extra
    )
    return path


@pytest.fixture
def manager(tmp_path, tiny_checkpoint) -> ModelManager:
    return ModelManager(load_registry(write_registry(tmp_path, tiny_checkpoint)), "cpu", torch.float32)


@pytest.mark.slow
def test_get_loads_the_default_once(manager, tiny_checkpoint):
    assert manager.current_name is None
    model = manager.get()
    assert model.name == "tiny" and model.native_size == (64, 64)
    assert model.short_hash == load_model(tiny_checkpoint.path).short_hash
    assert manager.get() is model and manager.get("tiny") is model
    assert [(s.name, s.loaded, s.current, s.default) for s in manager.status()] == [
        ("tiny", True, True, True),
        ("tiny-bf16", False, False, False),
        ("missing", False, False, False),
    ]


@pytest.mark.slow
def test_switching_unloads_the_previous_model_and_applies_entry_dtype(manager):
    manager.get("tiny")
    model = manager.get("tiny-bf16")
    assert manager.current_name == "tiny-bf16"
    assert {p.dtype for p in model.unet.parameters()} == {torch.bfloat16}
    assert [s.name for s in manager.status() if s.loaded] == ["tiny-bf16"]


@pytest.mark.slow
def test_failed_load_is_reported_in_status_and_other_models_still_work(manager):
    with pytest.raises(CheckpointNotFoundError):
        manager.get("missing")
    error = {s.name: s.error for s in manager.status()}["missing"]
    assert "nope.safetensors" in error
    assert manager.get("tiny").name == "tiny"


@pytest.mark.slow
def test_unload_frees_and_unknown_names_are_refused(manager):
    manager.get()
    manager.unload("tiny")
    assert manager.current_name is None and not any(s.loaded for s in manager.status())
    with pytest.raises(UnknownModelError, match="available: tiny, tiny-bf16, missing"):
        manager.get("sdxl")


def test_empty_registry_explains_itself(tmp_path):
    manager = ModelManager(load_registry(tmp_path / "absent.yaml"))
    with pytest.raises(UnknownModelError, match="file not found"):
        manager.get()


def test_concurrent_gets_load_once(tmp_path, tiny_checkpoint):
    calls = []

    def counting_loader(path, **kwargs):
        calls.append(path)
        return load_model(path, **kwargs)

    registry = load_registry(write_registry(tmp_path, tiny_checkpoint))
    manager = ModelManager(registry, loader=counting_loader)
    results = []
    threads = [threading.Thread(target=lambda: results.append(manager.get())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len({id(m) for m in results}) == 1


def test_offline_hub_entry_fails_at_once_with_a_clear_message(tmp_path):
    """tests/conftest.py sets HF_HUB_OFFLINE=1: no request is made, the message says what to do."""
    registry_path = tmp_path / "models.yaml"
    registry_path.write_text("models:\n  - {name: hub, repo: nobody/nothing-here, file: x.safetensors}\n")
    manager = ModelManager(load_registry(registry_path), cache_dir=tmp_path / "cache")
    started = time.monotonic()
    with pytest.raises(DownloadError, match="Could not download x.safetensors for model 'hub': HF_HUB_OFFLINE is set"):
        manager.get()
    assert time.monotonic() - started < 2
    assert "unset HF_HUB_OFFLINE" in {s.name: s.error for s in manager.status()}["hub"]


@pytest.mark.slow
def test_set_registry_keeps_resident_models_and_drops_removed_ones(manager, tmp_path, tiny_checkpoint):
    model = manager.get("tiny")
    same = tmp_path / "same.yaml"
    same.write_text(f"models:\n  - {{name: tiny, path: {tiny_checkpoint.path}}}\n")
    manager.set_registry(load_registry(same))
    assert manager.loaded() == {"tiny": model} and manager.current_name == "tiny"
    other = tmp_path / "other.yaml"
    other.write_text(f"models:\n  - {{name: renamed, path: {tiny_checkpoint.path}}}\n")
    manager.set_registry(load_registry(other))
    assert manager.loaded() == {} and manager.current_name is None
    assert manager.get().name == "renamed"


@pytest.mark.slow
def test_status_answers_while_a_model_is_loading(tmp_path, tiny_checkpoint):
    started, release = threading.Event(), threading.Event()

    def slow_loader(path, **kwargs):
        started.set()
        release.wait(10)
        return load_model(path, **kwargs)

    manager = ModelManager(load_registry(write_registry(tmp_path, tiny_checkpoint)), loader=slow_loader)
    loader_thread = threading.Thread(target=manager.get)
    loader_thread.start()
    assert started.wait(10)
    rows = {s.name: s for s in manager.status()}  # must not block behind the load
    assert rows["tiny"].loading and not rows["tiny"].loaded
    release.set()
    loader_thread.join()
    rows = {s.name: s for s in manager.status()}
    assert rows["tiny"].loaded and not rows["tiny"].loading


def test_failed_load_keeps_the_current_model(tmp_path, tiny_checkpoint):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json" + bytes(64))
    path = write_registry(tmp_path, tiny_checkpoint, f"  - {{name: garbage, path: {garbage}}}\n")
    manager = ModelManager(load_registry(path))
    tiny = manager.get("tiny")
    with pytest.raises(CheckpointNotFoundError, match="nope.safetensors"):
        manager.get("missing")  # fails before anything is unloaded
    assert manager.current_name == "tiny" and manager.loaded() == {"tiny": tiny}
    with pytest.raises(CorruptCheckpointError):
        manager.get("garbage")  # fails after the current model was unloaded to make room: it is loaded back
    assert manager.current_name == "tiny" and list(manager.loaded()) == ["tiny"]
    assert manager.get().name == "tiny"
    assert "garbage.safetensors" in {s.name: s.error for s in manager.status()}["garbage"]


def test_broken_models_yaml_on_refresh_keeps_the_models_and_shows_why(manager, tmp_path):
    model = manager.get("tiny")
    broken = tmp_path / "broken.yaml"
    broken.write_text("models: [\n")
    manager.set_registry(load_registry(broken))
    assert manager.registry.names == ["tiny", "tiny-bf16", "missing"] and manager.loaded() == {"tiny": model}
    assert "not valid YAML" in str(manager.registry.errors[0]) and "kept" in str(manager.registry.errors[0])


def test_recommendations_are_checked_now_and_after_every_refresh(tmp_path, tiny_checkpoint):
    path = write_registry(tmp_path, tiny_checkpoint)
    manager = ModelManager(load_registry(path))
    assert manager.set_known_samplers(["Euler", "DPM++ 2M"], ["Automatic", "Karras"]) == []
    path.write_text(path.read_text().replace("default: true,", "default: true, sampler: DPM++2M,"))
    manager.set_registry(load_registry(path))
    assert [str(w).split(": ", 1)[1] for w in manager.registry.warnings] == [
        "unknown sampler 'DPM++2M' (did you mean 'DPM++ 2M'?); the app's default is used for this model"
    ]
    assert manager.entry("tiny").sampler is None


def test_default_entry_that_is_invalid_leaves_no_model_selected(tmp_path, tiny_checkpoint):
    path = tmp_path / "models.yaml"
    path.write_text(
        f"models:\n  - {{name: tiny, pth: {tiny_checkpoint.path}, default: true}}\n"
        "  - {name: hub, repo: someone/big, file: big.safetensors}\n"
    )
    manager = ModelManager(load_registry(path))
    with pytest.raises(UnknownModelError, match=r"no model is selected: .*#1 \('tiny'\)"):
        manager.get()
    assert manager.loaded() == {} and not any(s.default for s in manager.status())


# --- hub entries, against a local stand-in for the hub (tests/hub_server.py) -------------------------


@pytest.fixture
def hub_manager(tmp_path, tiny_checkpoint, monkeypatch):
    """A manager with the local tiny model loaded and a hub entry 'hub' (the same 12 MB of weights)."""
    with fake_hub(chunk_size=256 * 1024) as hub:
        hub.add("someone/tiny", "tiny.safetensors", tiny_checkpoint.path.read_bytes())
        for name in ("vocab.json", "merges.txt"):
            hub.add("someone/tokenizer", name, (tiny_checkpoint.tokenizer_dir / name).read_bytes())
        cache = use_hub(monkeypatch, hub.url, tmp_path / "hf")
        hub_entry = "  - {name: hub, repo: someone/tiny, file: tiny.safetensors, tokenizer: someone/tokenizer}\n"
        path = write_registry(tmp_path, tiny_checkpoint, hub_entry)
        manager = ModelManager(load_registry(path), cache_dir=cache)
        manager.get("tiny")
        yield manager, hub


def test_hub_model_is_described_downloaded_once_and_loaded(hub_manager, tiny_checkpoint):
    manager, hub = hub_manager
    assert {s.name: s.needs_download for s in manager.status()}["hub"] is True
    plan = manager.download_plan("hub")
    assert plan.size == tiny_checkpoint.path.stat().st_size and plan.tokenizer == "someone/tokenizer"
    seen = []
    manager.ensure_downloaded("hub", progress=seen.append)  # step 1, outside any lock
    assert seen and seen[-1].finished and seen[-1].done == plan.size
    model = manager.get("hub", download=False)  # step 2: from disk only
    assert model.name == "hub" and model.short_hash == load_model(tiny_checkpoint.path).short_hash
    assert manager.current_name == "hub" and {s.name: s.needs_download for s in manager.status()}["hub"] is False
    gets = [path for method, path in hub.requests if method == "GET"]
    assert gets.count("/someone/tiny/resolve/main/tiny.safetensors") == 1
    assert manager.download_plan("hub") is None


def test_download_holds_no_lock_other_requests_go_on(hub_manager):
    manager, hub = hub_manager
    hub.delay = 0.2  # slow enough to be caught in the middle
    cancel, outcome = threading.Event(), []

    def download() -> None:
        try:
            manager.ensure_downloaded("hub", cancel=cancel)
        except BaseException as exc:  # noqa: BLE001 - examined below
            outcome.append(exc)

    worker = threading.Thread(target=download)
    worker.start()
    deadline = time.monotonic() + 10
    while {s.name: s.download for s in manager.status()}["hub"] is None and time.monotonic() < deadline:
        time.sleep(0.02)
    row = {s.name: s for s in manager.status()}["hub"]
    assert row.download is not None and 0 < row.download.done < row.download.total
    started = time.monotonic()
    assert manager.get("tiny").name == "tiny"  # the resident model: at once
    assert manager.load("tiny-bf16").name == "tiny-bf16"  # even loading another model from disk
    assert time.monotonic() - started < 5 and worker.is_alive()
    cancel.set()
    worker.join(5)
    assert len(outcome) == 1 and isinstance(outcome[0], DownloadCancelled)
    assert manager.current_name == "tiny-bf16" and {s.name: s.error for s in manager.status()}["hub"] is None


def test_concurrent_requests_share_one_download(hub_manager):
    manager, hub = hub_manager
    hub.delay = 0.02  # about a second: the three requests overlap
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(manager.ensure_downloaded("hub"))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 3 and len(set(results)) == 1 and os.path.getsize(results[0]) > 0
    assert [p for m, p in hub.requests if m == "GET"].count("/someone/tiny/resolve/main/tiny.safetensors") == 1


def test_failed_download_is_one_attempt_and_the_current_model_stays(hub_manager):
    manager, hub = hub_manager
    hub.fail_with = 503
    with pytest.raises(DownloadError, match="answered HTTP 503"):
        manager.get("hub")
    assert hub.count() == 1 and manager.current_name == "tiny" and list(manager.loaded()) == ["tiny"]
    assert "HTTP 503" in {s.name: s.error for s in manager.status()}["hub"]


def test_generation_path_never_starts_a_download(hub_manager):
    manager, hub = hub_manager
    with pytest.raises(DownloadRequiredError, match="select it to download tiny.safetensors from someone/tiny"):
        manager.get("hub", download=False)
    assert hub.count() == 0 and manager.current_name == "tiny"

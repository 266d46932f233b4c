"""ModelManager: lazy loading from the registry, one resident model, errors kept per model, thread safety."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from webui.models.checkpoint import CheckpointNotFoundError, load_model
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
        ("tiny", True, True, True), ("tiny-bf16", False, False, False), ("missing", False, False, False)
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


@pytest.mark.slow
def test_hub_entry_resolves_through_the_download_function(tmp_path, tiny_checkpoint, monkeypatch):
    """The hub code path is wired (download itself is never exercised: tests are offline)."""
    import webui.models.download as download

    registry_path = tmp_path / "models.yaml"
    registry_path.write_text("models:\n  - {name: hub, repo: someone/tiny, file: tiny.safetensors}\n")
    monkeypatch.setattr(download, "fetch_model_file", lambda entry, cache_dir=None: tiny_checkpoint.path)
    model = ModelManager(load_registry(registry_path)).get()
    assert model.name == "hub"


def test_offline_hub_entry_fails_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    registry_path = tmp_path / "models.yaml"
    registry_path.write_text("models:\n  - {name: hub, repo: nobody/nothing-here, file: x.safetensors}\n")
    manager = ModelManager(load_registry(registry_path), cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="could not get x.safetensors from https://huggingface.co/nobody/nothing"):
        manager.get()


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

"""The sha256 cache (path + size + mtime, A1111's cache.json idea) and hashing in the background."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import pytest

from webui.models import hash_cache as hash_cache_module
from webui.models.hash_cache import BackgroundHasher, HashCache
from webui.models.loading import load_model
from webui.models.manager import ModelManager
from webui.models.registry import load_registry


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def reads(monkeypatch) -> list[Path]:
    """Every whole-file read the cache makes."""
    seen: list[Path] = []
    real = hash_cache_module.file_sha256

    def counting(path: Path, chunk_size: int = 1 << 20) -> str:
        seen.append(Path(path))
        return real(path, chunk_size)

    monkeypatch.setattr(hash_cache_module, "file_sha256", counting)
    return seen


def test_a_file_is_read_once_and_the_hash_survives_a_restart(tmp_path, reads):
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"weights" * 1000)
    cache_file = tmp_path / "cache.json"
    assert HashCache(cache_file).sha256(model) == sha(b"weights" * 1000)
    assert HashCache(cache_file).sha256(model) == sha(b"weights" * 1000)  # a new process: read from JSON
    assert len(reads) == 1
    stored = json.loads(cache_file.read_text())["sha256"][str(model.resolve())]
    assert stored == {"size": 7000, "mtime_ns": model.stat().st_mtime_ns, "sha256": sha(b"weights" * 1000)}


def test_a_changed_file_is_hashed_again(tmp_path, reads):
    model = tmp_path / "model.ckpt"
    model.write_bytes(b"a" * 100)
    cache = HashCache(tmp_path / "cache.json")
    first = cache.sha256(model)
    model.write_bytes(b"b" * 100)  # same size, new content and mtime
    stat = model.stat()
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert cache.get(model) is None
    assert cache.sha256(model) == sha(b"b" * 100) != first
    assert len(reads) == 2


def test_a_moved_file_keeps_its_hash_only_if_size_and_mtime_match(tmp_path, reads):
    old = tmp_path / "a" / "model.safetensors"
    old.parent.mkdir()
    old.write_bytes(b"x" * 64)
    cache = HashCache(tmp_path / "cache.json")
    digest = cache.sha256(old)
    moved = tmp_path / "b" / "model.safetensors"
    moved.parent.mkdir()
    old.rename(moved)  # mv keeps size and mtime
    assert cache.get(moved) == digest and len(reads) == 1

    old.write_bytes(b"y" * 64)  # a different file under the old path's name, same size...
    os.utime(old, ns=(0, moved.stat().st_mtime_ns + 5_000_000_000))  # ...but another mtime
    again = tmp_path / "c" / "model.safetensors"
    again.parent.mkdir()
    old.rename(again)
    assert cache.get(again) is None
    assert cache.sha256(again) == sha(b"y" * 64)


def test_an_unreadable_cache_file_is_ignored(tmp_path):
    cache_file = tmp_path / "cache.json"
    cache_file.write_text("{not json")
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"1234")
    assert HashCache(cache_file).sha256(model) == sha(b"1234")
    assert json.loads(cache_file.read_text())["format"] == 1


def test_background_hasher_answers_at_once_and_calls_back(tmp_path, monkeypatch):
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"slow" * 100)
    release = threading.Event()
    real = hash_cache_module.file_sha256

    def slow(path: Path, chunk_size: int = 1 << 20) -> str:
        release.wait(10)
        return real(path, chunk_size)

    monkeypatch.setattr(hash_cache_module, "file_sha256", slow)
    hasher = BackgroundHasher(HashCache())
    done: list[str] = []
    assert hasher.request(model, done.append) is None  # queued, not waited for
    assert done == [] and not hasher.wait(0.05)
    release.set()
    assert hasher.wait(10) and done == [sha(b"slow" * 100)]
    assert hasher.request(model, done.append) == sha(b"slow" * 100)  # now cached: answered at once


def test_manager_loads_without_waiting_for_the_hash_then_fills_it_in(tmp_path, tiny_checkpoint, monkeypatch):
    release = threading.Event()
    real = hash_cache_module.file_sha256

    def slow(path: Path, chunk_size: int = 1 << 20) -> str:
        release.wait(10)
        return real(path, chunk_size)

    monkeypatch.setattr(hash_cache_module, "file_sha256", slow)
    registry = tmp_path / "models.yaml"
    registry.write_text(f"models:\n  - {{name: tiny, path: {tiny_checkpoint.path}, default: true}}\n")
    cache = HashCache(tmp_path / "cache.json")
    manager = ModelManager(load_registry(registry), hash_cache=cache)
    model = manager.get()  # returns while the hash is still being computed
    assert model.sha256 is None and model.short_hash is None
    release.set()
    assert manager.hasher is not None and manager.hasher.wait(10)
    expected = load_model(tiny_checkpoint.path).sha256
    assert model.sha256 == expected and model.short_hash == expected[:10]

    manager.unload()
    again = manager.get()  # a seen file: the hash comes from the cache with the model
    assert again is not model and again.sha256 == expected

"""--models-in-memory N: up to N models stay loaded, the least recently used is dropped first."""

from __future__ import annotations

from pathlib import Path

import pytest

from webui.models.loading import load_model
from webui.models.manager import ModelManager
from webui.models.registry import load_registry


@pytest.fixture
def loads(tmp_path, tiny_checkpoint) -> tuple[Path, list[str]]:
    registry = tmp_path / "models.yaml"
    registry.write_text(
        "models:\n" + "".join(f"  - {{name: {n}, path: {tiny_checkpoint.path}}}\n" for n in ("a", "b", "c"))
    )
    return registry, []


def manager_with(loads, max_loaded: int) -> ModelManager:
    registry, calls = loads

    def counting_loader(path, **kwargs):
        calls.append(kwargs["name"])
        return load_model(path, **kwargs)

    return ModelManager(load_registry(registry), max_loaded=max_loaded, loader=counting_loader)


def test_two_in_memory_switch_back_and_forth_without_reloading(loads):
    manager = manager_with(loads, 2)
    a, b = manager.get("a"), manager.get("b")
    for _ in range(3):
        assert manager.get("a") is a and manager.get("b") is b
    assert loads[1] == ["a", "b"]
    assert manager.current_name == "b" and set(manager.loaded()) == {"a", "b"}


def test_the_least_recently_used_model_is_dropped_first(loads):
    manager = manager_with(loads, 2)
    a = manager.get("a")
    manager.get("b")
    assert manager.get("a") is a  # a is now the most recently used...
    manager.get("c")  # ...so b goes
    assert list(manager.loaded()) == ["a", "c"]
    assert manager.get("a") is a and loads[1] == ["a", "b", "c"]
    manager.get("b")  # c was used before a: c goes
    assert list(manager.loaded()) == ["a", "b"] and loads[1] == ["a", "b", "c", "b"]


def test_one_in_memory_is_the_default_and_unloads_before_loading(loads):
    registry, calls = loads
    manager = ModelManager(load_registry(registry))
    assert manager.max_loaded == 1
    manager = manager_with(loads, 1)
    manager.get("a")
    manager.get("b")
    manager.get("a")
    assert list(manager.loaded()) == ["a"] and calls == ["a", "b", "a"]


def test_a_second_device_keeps_the_first_ones_lru_size_and_loads_its_own_models(loads):
    """--device cpu,cpu with --models-in-memory 2: the second device's manager has the same LRU size (it was 1
    before, so A/B switching reloaded there) and loads its own copies."""
    first = manager_with(loads, 2)
    second = first.for_device("cpu")
    assert second.max_loaded == 2 and second.hasher is first.hasher and second.speed is first.speed
    a = first.get("a")
    a2, _ = second.get("a"), second.get("b")
    assert a2 is not a and second.get("a") is a2
    assert loads[1] == ["a", "a", "b"]

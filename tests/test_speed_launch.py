"""launch.py's speed and memory flags reach the service (issue 19)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def launch():
    spec = importlib.util.spec_from_file_location("launch_under_test", ROOT / "launch.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_models_in_memory_and_the_hash_cache_reach_the_model_manager(launch, tmp_path):
    from webui.server import create_service

    models = tmp_path / "models.yaml"
    models.write_text("models:\n  - {name: m, path: m.safetensors}\n")
    args = launch.build_parser().parse_args(
        ["--models", str(models), "--outputs", str(tmp_path / "out"), "--models-in-memory", "2", "--device", "cpu"]
    )
    options = launch.options_from_args(args)
    assert options.models_in_memory == 2
    service = create_service(options)
    try:
        assert service.models.max_loaded == 2
        assert service.models.hasher is not None
        assert service.models.hasher.cache.file == tmp_path / "out" / "cache.json"
    finally:
        service.close()


def test_defaults_keep_one_model_in_memory(launch, tmp_path):
    options = launch.options_from_args(launch.build_parser().parse_args([]))
    assert options.models_in_memory == 1


def test_threads_and_vae_tiling_flags(launch, tmp_path):
    import torch

    from webui.server import create_service

    models = tmp_path / "models.yaml"
    models.write_text("models:\n  - {name: m, path: m.safetensors}\n")
    args = launch.build_parser().parse_args(
        ["--models", str(models), "--outputs", str(tmp_path), "--threads", "1", "--vae-tiling", "on"]
    )
    options = launch.options_from_args(args)
    assert (options.threads, options.vae_tiling) == (1, "on")
    before = torch.get_num_threads()
    service = create_service(options)
    try:
        assert torch.get_num_threads() == 1 and service.models.vae_tiling == "on"
    finally:
        service.close()
        torch.set_num_threads(before)


def test_compile_flag_reaches_the_model_manager(launch, tmp_path):
    from webui.server import create_service

    models = tmp_path / "models.yaml"
    models.write_text("models:\n  - {name: m, path: m.safetensors}\n")
    base = ["--models", str(models), "--outputs", str(tmp_path), "--device", "cpu"]
    assert launch.options_from_args(launch.build_parser().parse_args(base)).compile is False
    service = create_service(launch.options_from_args(launch.build_parser().parse_args([*base, "--compile"])))
    try:
        assert service.models.speed is not None and service.models.speed.compile is True
    finally:
        service.close()


def test_medvram_and_lowvram_flags(launch, tmp_path):
    parse = launch.build_parser().parse_args
    assert launch.options_from_args(parse([])).vram == "normal"
    assert launch.options_from_args(parse(["--medvram"])).vram == "medvram"
    assert launch.options_from_args(parse(["--lowvram"])).vram == "lowvram"
    with pytest.raises(SystemExit):
        parse(["--medvram", "--lowvram"])

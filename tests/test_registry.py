"""models.yaml: valid entries load, each mistake is reported once with file, entry and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from webui.models.registry import UnknownModelError, load_registry

REPO_ROOT = Path(__file__).resolve().parents[1]


def registry_from(tmp_path: Path, text: str):
    path = tmp_path / "models.yaml"
    path.write_text(text)
    return load_registry(path)


def test_repository_models_yaml_is_valid_and_has_sd15():
    registry = load_registry(REPO_ROOT / "models.yaml")
    assert registry.errors == []
    sd15 = next(e for e in registry.entries if e.repo == "stable-diffusion-v1-5/stable-diffusion-v1-5")
    assert sd15.file == "v1-5-pruned-emaonly.safetensors"
    assert sd15.tokenizer == "openai/clip-vit-large-patch14"
    assert sd15.is_hub and sd15.native_size == (512, 512)
    assert registry.default is not None


def test_paths_resolve_against_the_yaml_folder_and_fields_are_typed(tmp_path):
    (tmp_path / "tok").mkdir()
    registry = registry_from(tmp_path, """
models:
  - name: first
    path: weights/a.safetensors
  - name: second
    path: b
    default: true
    width: 256
    height: 384
    tokenizer: tok
    dtype: bf16
    cfg_scale: 5
    steps: 12
  - name: hub
    repo: someone/model
    file: m.safetensors
    tokenizer: openai/clip-vit-large-patch14
""")
    assert registry.errors == []
    first, second, hub = registry.entries
    assert first.path == (tmp_path / "weights" / "a.safetensors").resolve()
    assert registry.default is second and second.native_size == (256, 384)
    assert second.tokenizer == str((tmp_path / "tok").resolve())
    assert second.cfg_scale == 5.0 and isinstance(second.cfg_scale, float)
    assert hub.is_hub and hub.tokenizer == "openai/clip-vit-large-patch14"
    assert first.native_size == (512, 512)


def test_first_entry_is_default_when_none_is_marked(tmp_path):
    registry = registry_from(tmp_path, "models:\n  - {name: a, path: a}\n  - {name: b, path: b}\n")
    assert registry.default.name == "a"


@pytest.mark.parametrize(
    ("entry", "field", "words"),
    [
        ("{name: bad, path: x, width: big}", "width", ["must be an integer", "'big'"]),
        ("{name: bad, path: x, default: yes please}", "default", ["true or false"]),
        ("{name: bad, path: 3}", "path", ["must be a string"]),
        ("{name: bad, path: x, widht: 512}", "widht", ["unknown field", "did you mean 'width'"]),
        ("{name: bad, path: x, colour: red}", "colour", ["unknown field", "known fields"]),
        ("{name: bad}", "path", ["missing"]),
        ("{name: bad, path: x, repo: a/b, file: c}", "path", ["not both"]),
        ("{name: bad, repo: a/b}", "file", ["together"]),
        ("{path: x}", "name", ["missing"]),
        ("{name: bad, path: x, width: 500}", "width", ["multiple of 8"]),
        ("{name: bad, path: x, dtype: fp8}", "dtype", ["one of auto, fp16, bf16, fp32"]),
        ("{name: bad, path: x, steps: 0}", "steps", ["at least 1"]),
        ("{name: bad, path: x, width: true}", "width", ["integer"]),
    ],
)
def test_bad_entry_is_reported_and_the_others_still_load(tmp_path, entry, field, words):
    text = f"models:\n  - {{name: good, path: g}}\n  - {entry}\n  - {{name: also, path: h}}\n"
    registry = registry_from(tmp_path, text)
    assert registry.names == ["good", "also"]
    assert len(registry.errors) == 1
    error = registry.errors[0]
    assert error.file == tmp_path / "models.yaml" and error.field == field and error.entry.startswith("#2")
    text = str(error)
    assert "models.yaml" in text and "#2" in text
    for word in words:
        assert word in text, text


def test_duplicate_name_keeps_the_first(tmp_path):
    registry = registry_from(tmp_path, "models:\n  - {name: a, path: one}\n  - {name: a, path: two}\n")
    assert [e.path.name for e in registry.entries] == ["one"]
    assert len(registry.errors) == 1
    assert "duplicate name" in str(registry.errors[0]) and "#1" in str(registry.errors[0])


def test_second_default_is_reported_but_loaded(tmp_path):
    registry = registry_from(
        tmp_path, "models:\n  - {name: a, path: a, default: true}\n  - {name: b, path: b, default: true}\n"
    )
    assert registry.names == ["a", "b"] and registry.default.name == "a"
    assert len(registry.errors) == 1 and registry.errors[0].field == "default"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("models: [\n", "not valid YAML"),
        ("- just a list\n", "top-level 'models:'"),
        ("models: {name: a}\n", "must be a list"),
        ("models:\n  - just a string\n", "must be a mapping"),
    ],
)
def test_broken_file_gives_one_file_level_error(tmp_path, text, words):
    registry = registry_from(tmp_path, text)
    assert registry.entries == []
    assert len(registry.errors) == 1 and words in str(registry.errors[0])


def test_missing_file_is_an_error_not_an_exception(tmp_path):
    registry = load_registry(tmp_path / "nope.yaml")
    assert registry.entries == [] and registry.default is None
    assert "file not found" in str(registry.errors[0])


def test_get_accepts_names_titles_and_file_names(tmp_path):
    registry = registry_from(tmp_path, "models:\n  - {name: Demo, path: models/demo.safetensors}\n")
    for query in ("Demo", "demo", "Demo [0123456789]", "demo.safetensors"):
        assert registry.get(query).name == "Demo"
    with pytest.raises(UnknownModelError, match="available: Demo"):
        registry.get("sdxl")

"""models.yaml: valid entries load, each mistake is reported once with file, entry and field."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from webui.models.registry import UnknownModelError, check_recommendations, load_registry

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
    registry = registry_from(
        tmp_path,
        """
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
""",
    )
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


def test_second_default_is_a_warning_and_the_entry_is_still_offered(tmp_path):
    registry = registry_from(
        tmp_path, "models:\n  - {name: a, path: a, default: true}\n  - {name: b, path: b, default: true}\n"
    )
    assert registry.names == ["a", "b"] and registry.default.name == "a"
    assert registry.errors == []
    assert len(registry.warnings) == 1 and registry.warnings[0].field == "default"
    assert "#1 ('a') is already the default" in str(registry.warnings[0])


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("models: [\n", "not valid YAML"),
        ("- just a list\n", "top-level 'models:'"),
        ("models: {name: a}\n", "must be a list"),
        ("models: []\n", "lists no models"),
        ("models:\n", "lists no models"),
    ],
)
def test_broken_file_gives_one_file_level_error(tmp_path, text, words):
    registry = registry_from(tmp_path, text)
    assert registry.entries == []
    assert registry.errors == [registry.file_error]
    assert words in str(registry.file_error) and "models.yaml" in str(registry.file_error)


def test_yaml_syntax_error_is_one_line_with_its_line_number(tmp_path):
    registry = registry_from(tmp_path, "models:\n  - name: a\n    path: [unclosed\n")
    line = str(registry.file_error)
    assert "\n" not in line and "not valid YAML" in line and "line 4" in line, line


def test_unreadable_file_and_folder_are_file_errors(tmp_path):
    folder = tmp_path / "folder.yaml"
    folder.mkdir()
    assert load_registry(folder).file_error.message == "is a folder, not a YAML file"
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    assert load_registry(binary).file_error.message.startswith("cannot be read")


def test_an_invalid_entry_is_not_a_file_error(tmp_path):
    registry = registry_from(tmp_path, "models:\n  - just a string\n  - {name: b, path: b}\n")
    assert registry.file_error is None and registry.names == ["b"]
    assert "must be a mapping" in str(registry.errors[0])


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


# --- the default model is never silently replaced ---------------------------------------------------


def repository_yaml_with(tmp_path: Path, old: str, new: str) -> Path:
    """The repository's models.yaml with one edit, in a temporary folder (paths resolve as in the repo)."""
    text = (REPO_ROOT / "models.yaml").read_text()
    assert old in text
    path = tmp_path / "models.yaml"
    path.write_text(text.replace(old, new).replace("models/demo/", f"{REPO_ROOT}/models/demo/"))
    return path


def test_pth_typo_in_the_default_entry_selects_no_model_and_says_why(tmp_path):
    """The issue's case: a 'pth:' typo in the demo entry made the 4 GB hub model the default, silently."""
    registry = load_registry(repository_yaml_with(tmp_path, "    path: models/demo", "    pth: models/demo"))
    assert registry.names == ["v1-5-pruned-emaonly"]  # the other entry is still offered...
    assert registry.default is None  # ...but not selected in the demo's place
    typo = [e for e in registry.errors if e.field == "pth"]
    assert len(typo) == 1 and typo[0].message == "unknown field 'pth' (did you mean 'path'?)"
    assert typo[0].entry == "#1 ('demo')"
    assert not [e for e in registry.errors if e.field == "path"]  # the typo is the one line, not also "missing"
    assert registry.default_error in registry.errors
    assert "#1 ('demo')" in str(registry.default_error) and "no model is selected" in str(registry.default_error)
    assert len(registry.errors) == 2


def test_invalid_first_entry_without_a_marked_default_selects_no_model(tmp_path):
    registry = registry_from(tmp_path, "models:\n  - {name: a, path: a, width: 500}\n  - {name: b, path: b}\n")
    assert registry.names == ["b"] and registry.default is None
    assert "is the first entry" in str(registry.default_error)


def test_marked_default_wins_over_an_invalid_entry_before_it(tmp_path):
    registry = registry_from(
        tmp_path, "models:\n  - {name: a, path: a, width: 500}\n  - {name: b, path: b, default: true}\n"
    )
    assert registry.default.name == "b" and registry.default_error is None and len(registry.errors) == 1


def test_invalid_entry_marked_default_is_not_replaced_by_a_later_one(tmp_path):
    registry = registry_from(tmp_path, 'models:\n  - {name: a, path: a}\n  - {name: b, default: "true"}\n')
    assert registry.names == ["a"] and registry.default is None
    assert "#2 ('b')" in str(registry.default_error)


def test_problems_are_plain_records_with_a_message(tmp_path):
    registry = registry_from(tmp_path, "models:\n  - {name: a, path: a, widht: 64}\n  - {name: b, path: b}\n")
    problem = registry.errors[0]
    assert dataclasses.is_dataclass(problem)
    assert (problem.file, problem.entry, problem.field) == (tmp_path / "models.yaml", "#1 ('a')", "widht")
    assert problem.message == "unknown field 'widht' (did you mean 'width'?)"
    assert str(problem) == f"{tmp_path / 'models.yaml'}, model #1 ('a'), field 'widht': {problem.message}"
    assert registry.problems == [*registry.errors, *registry.warnings]


# --- recommendations checked against the sampler plugins ---------------------------------------------


def test_unknown_sampler_and_schedule_are_reported_with_the_closest_name_and_dropped(tmp_path):
    from webui.sampling import SCHEDULES, create_sampler_registry

    samplers = create_sampler_registry()
    registry = registry_from(
        tmp_path,
        """
models:
  - {name: a, path: a, sampler: DPM++2M, scheduler: karas, steps: 8}
  - {name: b, path: b, sampler: dpm++ 2m, scheduler: KARRAS}
  - {name: c, path: c, sampler: k_euler_a}
  - {name: d, path: d, sampler: Quantum}
""",
    )
    aliases = [alias for sampler in samplers for alias in sampler.aliases]
    found = check_recommendations(registry, samplers.names, SCHEDULES, sampler_aliases=aliases)
    assert found == registry.warnings and registry.errors == []
    lines = [str(w) for w in found]
    assert [(w.entry, w.field) for w in found] == [
        ("#1 ('a')", "sampler"),
        ("#1 ('a')", "scheduler"),
        ("#4 ('d')", "sampler"),
    ]
    assert "unknown sampler 'DPM++2M' (did you mean 'DPM++ 2M'?)" in lines[0]
    assert "unknown scheduler 'karas' (did you mean 'Karras'?)" in lines[1]
    assert "known: " in lines[2] and "Euler a" in lines[2]
    a, b, c, d = registry.entries
    assert (a.sampler, a.scheduler, a.steps) == (None, None, 8)  # dropped: the app's default is used
    assert (b.sampler, b.scheduler, c.sampler, d.sampler) == ("dpm++ 2m", "KARRAS", "k_euler_a", None)
    assert check_recommendations(registry, samplers.names, SCHEDULES, sampler_aliases=aliases) == []  # idempotent
    assert len(registry.warnings) == 3


def test_registry_module_does_not_import_the_sampler_plugins():
    import subprocess
    import sys

    code = "import sys, webui.models.registry; print('webui.sampling' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    assert result.stdout.strip() == "False"

"""``models.yaml``: the list of models the app offers, validated entry by entry.

Schema (top level ``models:``, a list of mappings)::

    models:
      - name: demo                       # required, unique; shown in the UI and the API
        path: models/demo/demo.safetensors   # a single file or a diffusers folder, relative to this YAML
        default: true                    # the model selected at start (see "The default model" below)
        width: 256                       # native size; generation defaults (else 512)
        height: 256
      - name: v1-5-pruned-emaonly
        repo: stable-diffusion-v1-5/stable-diffusion-v1-5   # or a Hugging Face file, downloaded on first use
        file: v1-5-pruned-emaonly.safetensors
        tokenizer: openai/clip-vit-large-patch14           # folder (relative to this YAML) or hub id

Other optional fields: ``revision`` (hub), ``dtype`` (auto, fp16, bf16, fp32), ``sampler``,
``scheduler``, ``steps``, ``cfg_scale``, ``clip_skip``, ``vae`` (the VAE that "Automatic" picks for this model: a
name in the VAE folder or a path relative to this YAML), ``description`` (shown under the checkpoint
dropdown) and ``examples`` (a list of prompts the model draws well; the UI offers them as one-click examples).

Problems are data, never exceptions: :func:`load_registry` keeps every valid entry and reports each
problem once as a :class:`RegistryProblem` (file, entry, field, message; ``str()`` is the one-line report):

- ``Registry.errors``: what could not be used. An entry with any error is left out whole (an unknown
  field, e.g. a ``pth:`` typo, is an error: "unknown field 'pth' (did you mean 'path'?)").
- ``Registry.warnings``: what was used with a correction: a second ``default: true`` (that entry stays,
  but not as the default), unknown top-level keys, and recommendations (``sampler``, ``scheduler``) that
  name nothing the app knows. The registry does not know the sampler plugins; whoever holds both calls
  :func:`check_recommendations` (the server at start, the model manager on every re-read): an unknown
  name is reported with the closest valid one and dropped from the entry, so the app's default is used.
- ``Registry.file_error``: the file as a whole cannot be used (missing, unreadable, not YAML, no
  ``models:`` list, or a list without entries). The server refuses to start on it, with that one line.

The default model: the entry marked ``default: true`` (the first one so marked), or the first entry of
the list when none is marked, *as written in the file*. If that entry is invalid, nothing else takes its
place: ``Registry.default`` is None (no model is selected at start, the UI shows the error, the user picks
a model) and ``Registry.default_error`` says why. An invalid entry never silently makes another model, for
instance a multi-GB download, the default. An invalid entry counts as marked when its ``default`` is true
(or the string "true").
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

PRECISIONS = ("auto", "fp16", "bf16", "fp32")
SD1_NATIVE_SIZE = (512, 512)  # (width, height) SD 1.x was trained at: the size when nothing else says


@dataclass(frozen=True)
class ModelEntry:
    """One model the app can load."""

    name: str
    path: Path | None = None  # absolute, resolved against the YAML's folder
    repo: str | None = None
    file: str | None = None
    revision: str | None = None
    tokenizer: str | None = None  # an absolute folder path or a hub id
    default: bool = False
    width: int | None = None
    height: int | None = None
    dtype: str = "auto"
    sampler: str | None = None
    scheduler: str | None = None
    steps: int | None = None
    cfg_scale: float | None = None
    clip_skip: int | None = None
    description: str = ""
    label: str | None = field(default=None, compare=False)  # "#1 ('demo')": where it is in models.yaml
    examples: tuple[str, ...] = ()  # prompts that show what the model can draw
    vae: str | None = None  # the VAE "Automatic" uses: a name in the VAE folder, or an absolute path

    @property
    def is_hub(self) -> bool:
        return self.path is None

    @property
    def native_size(self) -> tuple[int, int]:
        """(width, height) to generate at when the request does not say."""
        return (self.width or SD1_NATIVE_SIZE[0], self.height or SD1_NATIVE_SIZE[1])

    @property
    def filename(self) -> str:
        """The file or folder name (what A1111's API calls ``filename``)."""
        return str(self.path) if self.path is not None else f"{self.repo}/{self.file}"


# field name -> (accepted Python types, description for messages)
_FIELD_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "name": ((str,), "a string"),
    "path": ((str,), "a string (file or folder path)"),
    "repo": ((str,), "a string (Hugging Face repo id)"),
    "file": ((str,), "a string (file name in the repo)"),
    "revision": ((str,), "a string"),
    "tokenizer": ((str,), "a string (folder or hub id)"),
    "default": ((bool,), "true or false"),
    "width": ((int,), "an integer"),
    "height": ((int,), "an integer"),
    "dtype": ((str,), f"one of {', '.join(PRECISIONS)}"),
    "sampler": ((str,), "a string"),
    "scheduler": ((str,), "a string"),
    "steps": ((int,), "an integer"),
    "cfg_scale": ((int, float), "a number"),
    "clip_skip": ((int,), "an integer"),
    "description": ((str,), "a string"),
    "examples": ((list,), "a list of prompts"),
    "vae": ((str,), "a string (a VAE file name in the VAE folder, or a path relative to this YAML)"),
}


@dataclass(frozen=True)
class RegistryProblem:
    """One problem in ``models.yaml``: where it is (file, entry, field) and what is wrong.

    ``message`` is the problem alone ("unknown field 'pth' (did you mean 'path'?)"); ``str(problem)`` is
    the one-line report with its place, as printed at start and shown in the UI.
    """

    file: Path
    entry: str | None  # "#2 ('demo')": position in the list (1-based) and name, when known
    field: str | None
    message: str

    def __str__(self) -> str:
        where = str(self.file)
        if self.entry is not None:
            where += f", model {self.entry}"
        if self.field is not None:
            where += f", field {self.field!r}"
        return f"{where}: {self.message}"


RegistryError = RegistryProblem  # the historical name; errors and warnings are the same kind of record


class UnknownModelError(LookupError):
    """A model name that is not in the registry."""


@dataclass
class Registry:
    """The parsed ``models.yaml``: its valid entries and every problem found (see the module docstring)."""

    path: Path | None
    entries: list[ModelEntry] = field(default_factory=list)
    errors: list[RegistryProblem] = field(default_factory=list)
    warnings: list[RegistryProblem] = field(default_factory=list)
    file_error: RegistryProblem | None = None  # the whole file is unusable (also listed in ``errors``)
    default_error: RegistryProblem | None = None  # the intended default entry is invalid (also in ``errors``)

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    @property
    def default(self) -> ModelEntry | None:
        """The entry marked ``default: true``, else the first one; None when that entry is invalid or absent."""
        if self.default_error is not None:
            return None
        return next((e for e in self.entries if e.default), self.entries[0] if self.entries else None)

    @property
    def problems(self) -> list[RegistryProblem]:
        """Errors, then warnings: everything to show in a banner, one line each."""
        return [*self.errors, *self.warnings]

    def get(self, name: str) -> ModelEntry:
        """Look a model up by name; also accepts A1111 titles (``name [hash]``), file names and any case."""
        wanted = name.strip()
        if wanted.endswith("]") and " [" in wanted:
            wanted = wanted[: wanted.rindex(" [")]
        folded = wanted.lower()
        for match in (
            lambda e: e.name == wanted,
            lambda e: e.name.lower() == folded,
            lambda e: folded in (Path(e.filename).name.lower(), Path(e.filename).stem.lower()),
        ):
            found = [e for e in self.entries if match(e)]
            if found:
                return found[0]
        available = ", ".join(self.names) or "none (see the errors in models.yaml)"
        raise UnknownModelError(f"unknown model {name!r}; available: {available}")


def _entry_label(index: int, raw: Any) -> str:
    label = f"#{index + 1}"
    if isinstance(raw, dict) and isinstance(raw.get("name"), str) and raw["name"].strip():
        label = f"{label} ({raw['name'].strip()!r})"
    return label


def _closest(word: str, choices: list[str]) -> str | None:
    """The choice most like ``word`` (ignoring case), or None when nothing is close."""
    by_folded = {c.casefold(): c for c in choices}
    close = difflib.get_close_matches(word.casefold(), list(by_folded), n=1)
    return by_folded[close[0]] if close else None


def _marked_default(raw: Any) -> bool:
    """Whether an entry, valid or not, asks to be the default (``default: true``)."""
    if not isinstance(raw, dict):
        return False
    value = raw.get("default")
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def _check_entry(raw: Any, index: int, yaml_path: Path) -> tuple[ModelEntry | None, list[RegistryProblem]]:
    label = _entry_label(index, raw)
    if not isinstance(raw, dict):
        return None, [RegistryProblem(yaml_path, label, None, f"an entry must be a mapping, got {type(raw).__name__}")]
    errors: list[RegistryProblem] = []

    def error(field_name: str | None, message: str) -> None:
        errors.append(RegistryProblem(yaml_path, label, field_name, message))

    meant: set[str] = set()  # fields that a misspelt key probably stands for
    for key, value in raw.items():
        if key not in _FIELD_TYPES:
            close = _closest(str(key), list(_FIELD_TYPES))
            if close is not None:
                meant.add(close)
            hint = f"did you mean {close!r}?" if close else f"known fields: {', '.join(_FIELD_TYPES)}"
            error(str(key), f"unknown field {str(key)!r} ({hint})")
            continue
        types, description = _FIELD_TYPES[key]
        if value is None and key != "name":
            continue
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            error(key, f"must be {description}, got {type(value).__name__} {value!r}")
    if "name" not in raw:
        if "name" not in meant:
            error("name", "missing; every model needs a unique name")
    elif isinstance(raw["name"], str) and not raw["name"].strip():
        error("name", "must not be empty")
    has_path = raw.get("path") is not None
    has_hub = raw.get("repo") is not None or raw.get("file") is not None
    if has_path and has_hub:
        error("path", "give either 'path' or 'repo' + 'file', not both")
    elif not has_path and not has_hub:
        if not meant & {"path", "repo", "file"}:  # a typo such as 'pth' was reported above; one line is enough
            error("path", "missing; give 'path' (a local file or folder) or 'repo' + 'file' (a Hugging Face file)")
    elif has_hub and (raw.get("repo") is None or raw.get("file") is None):
        missing = "repo" if raw.get("repo") is None else "file"
        if missing not in meant:
            error(missing, "'repo' and 'file' must be given together")
    for key in ("width", "height"):
        value = raw.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and (value <= 0 or value % 8):
            error(key, f"must be a positive multiple of 8, got {value}")
    for key in ("steps", "clip_skip"):
        value = raw.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value < 1:
            error(key, f"must be at least 1, got {value}")
    examples = raw.get("examples")
    if isinstance(examples, list) and not all(isinstance(p, str) and p.strip() for p in examples):
        error("examples", f"must be a list of non-empty prompt strings, got {examples!r}")
    if isinstance(raw.get("dtype"), str) and raw["dtype"] not in PRECISIONS:
        error("dtype", f"must be one of {', '.join(PRECISIONS)}, got {raw['dtype']!r}")
    if errors:
        return None, errors

    values = {k: v for k, v in raw.items() if v is not None}
    values["name"] = values["name"].strip()
    base = yaml_path.parent
    if "path" in values:
        values["path"] = (base / Path(values["path"]).expanduser()).resolve()
    if "tokenizer" in values:
        local = base / Path(values["tokenizer"]).expanduser()
        values["tokenizer"] = str(local.resolve()) if local.exists() else values["tokenizer"]
    if "vae" in values:
        local = base / Path(values["vae"]).expanduser()
        values["vae"] = str(local.resolve()) if local.exists() else values["vae"]
    if "cfg_scale" in values:
        values["cfg_scale"] = float(values["cfg_scale"])
    if "examples" in values:
        values["examples"] = tuple(p.strip() for p in values["examples"])
    return ModelEntry(**values, label=label), []


def _yaml_problem(exc: Exception) -> str:
    """A YAML syntax error in one line, with its line number (PyYAML's own text spans several lines)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"is not valid YAML: {problem}{where}"


def load_registry(yaml_path: str | Path) -> Registry:
    """Read and validate ``models.yaml``; never raises for a bad file, it reports into ``.errors``."""
    import yaml

    yaml_path = Path(yaml_path)
    registry = Registry(path=yaml_path)

    def file_error(message: str) -> Registry:
        registry.file_error = RegistryProblem(yaml_path, None, None, message)
        registry.errors.append(registry.file_error)
        return registry

    try:
        text = yaml_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return file_error("file not found")
    except IsADirectoryError:
        return file_error("is a folder, not a YAML file")
    except PermissionError:
        return file_error("cannot be read: permission denied")
    except (OSError, UnicodeDecodeError) as exc:
        return file_error(f"cannot be read: {exc}")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return file_error(_yaml_problem(exc))
    if not isinstance(data, dict) or "models" not in data:
        return file_error("must be a mapping with a top-level 'models:' list")
    unknown = [str(k) for k in data if k != "models"]
    if unknown:
        registry.warnings.append(
            RegistryProblem(yaml_path, None, None, f"unknown top-level keys {unknown}; only 'models' is read")
        )
    models = data["models"] or []
    if not isinstance(models, list):
        return file_error(f"'models' must be a list of entries, got {type(models).__name__}")
    if not models:
        return file_error("lists no models; add at least one entry under 'models:'")

    marked = [i for i, raw in enumerate(models) if _marked_default(raw)]
    intended = marked[0] if marked else 0  # the entry the file asks to be selected at start
    seen: dict[str, int] = {}
    accepted: set[int] = set()
    for index, raw in enumerate(models):
        entry, errors = _check_entry(raw, index, yaml_path)
        registry.errors.extend(errors)
        if entry is None:
            continue
        if entry.name in seen:
            registry.errors.append(
                RegistryProblem(
                    yaml_path,
                    entry.label,
                    "name",
                    f"duplicate name: entry #{seen[entry.name] + 1} already uses it; this entry is ignored",
                )
            )
            continue
        if entry.default and index != intended:
            registry.warnings.append(
                RegistryProblem(
                    yaml_path,
                    entry.label,
                    "default",
                    f"entry {_entry_label(intended, models[intended])} is already the default; "
                    "this entry is offered but not selected at start",
                )
            )
            entry = replace(entry, default=False)
        seen[entry.name] = index
        accepted.add(index)
        registry.entries.append(entry)
    if intended not in accepted:
        how = "is marked 'default: true'" if marked else "is the first entry, so it is the default"
        registry.default_error = RegistryProblem(
            yaml_path,
            _entry_label(intended, models[intended]),
            None,
            f"this entry {how} but is invalid (see above), so no model is selected at start; fix the entry, "
            "or mark a valid one 'default: true'",
        )
        registry.errors.append(registry.default_error)
    return registry


def check_recommendations(
    registry: Registry,
    sampler_names: Iterable[str],
    schedule_names: Iterable[str],
    *,
    sampler_aliases: Iterable[str] = (),
) -> list[RegistryProblem]:
    """Report (and drop) each entry's ``sampler``/``scheduler`` that names nothing the app knows.

    Names match case-insensitively, as requests do. Each unknown one becomes a warning in
    ``registry.warnings`` with the closest valid name, and the entry loses that recommendation, so the
    app's default is used for it. Calling it again finds nothing new. Returns the new warnings.

    Args:
        registry: modified in place.
        sampler_names: the registered samplers (``SamplerRegistry.names``); suggestions come from these.
        schedule_names: the schedule types (``webui.sampling.SCHEDULES``).
        sampler_aliases: other accepted spellings (``Sampler.aliases``), accepted but never suggested.
    """
    samplers, schedules = list(sampler_names), list(schedule_names)
    known = {
        "sampler": ({n.casefold() for n in [*samplers, *sampler_aliases]}, samplers),
        "scheduler": ({n.casefold() for n in schedules}, schedules),
    }
    found: list[RegistryProblem] = []
    for i, entry in enumerate(registry.entries):
        for field_name, (accepted, choices) in known.items():
            value = getattr(entry, field_name)
            if value is None or value.strip().casefold() in accepted:
                continue
            close = _closest(value, choices)
            hint = f"did you mean {close!r}?" if close else f"known: {', '.join(choices) or 'none'}"
            found.append(
                RegistryProblem(
                    registry.path or Path("models.yaml"),
                    entry.label or repr(entry.name),
                    field_name,
                    f"unknown {field_name} {value!r} ({hint}); the app's default is used for this model",
                )
            )
            entry = replace(entry, sampler=None) if field_name == "sampler" else replace(entry, scheduler=None)
        registry.entries[i] = entry
    registry.warnings.extend(found)
    return found

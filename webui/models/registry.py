"""``models.yaml``: the list of models the app offers, validated entry by entry.

Schema (top level ``models:``, a list of mappings)::

    models:
      - name: demo                       # required, unique; shown in the UI and the API
        path: models/demo/demo.safetensors   # a single file or a diffusers folder, relative to this YAML
        default: true                    # the model loaded first (else the first entry)
        width: 256                       # native size; generation defaults (else 512)
        height: 256
      - name: v1-5-pruned-emaonly
        repo: stable-diffusion-v1-5/stable-diffusion-v1-5   # or a Hugging Face file, downloaded on first use
        file: v1-5-pruned-emaonly.safetensors
        tokenizer: openai/clip-vit-large-patch14           # folder (relative to this YAML) or hub id

Other optional fields: ``revision`` (hub), ``dtype`` (auto, fp16, bf16, fp32), ``sampler``,
``scheduler``, ``steps``, ``cfg_scale``, ``clip_skip``, ``description`` (shown under the checkpoint
dropdown) and ``examples`` (a list of prompts the model draws well; the UI offers them as one-click examples).

A broken entry never hides the others: :func:`load_registry` keeps every valid entry and lists each
problem as a :class:`RegistryError` naming the file, the entry and the field.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PRECISIONS = ("auto", "fp16", "bf16", "fp32")
DEFAULT_SIZE = 512


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
    examples: tuple[str, ...] = ()  # prompts that show what the model can draw

    @property
    def is_hub(self) -> bool:
        return self.path is None

    @property
    def native_size(self) -> tuple[int, int]:
        """(width, height) to generate at when the request does not say."""
        return (self.width or DEFAULT_SIZE, self.height or DEFAULT_SIZE)

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
}


@dataclass(frozen=True)
class RegistryError:
    """One problem in ``models.yaml``: where it is (file, entry, field) and what is wrong."""

    file: Path
    entry: str | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = str(self.file)
        if self.entry is not None:
            where += f", model {self.entry}"
        if self.field is not None:
            where += f", field {self.field!r}"
        return f"{where}: {self.message}"


class UnknownModelError(LookupError):
    """A model name that is not in the registry."""


@dataclass
class Registry:
    path: Path | None
    entries: list[ModelEntry] = field(default_factory=list)
    errors: list[RegistryError] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    @property
    def default(self) -> ModelEntry | None:
        """The entry marked ``default: true``, else the first one, else None."""
        return next((e for e in self.entries if e.default), self.entries[0] if self.entries else None)

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


def _check_entry(raw: Any, index: int, yaml_path: Path) -> tuple[ModelEntry | None, list[RegistryError]]:
    label = f"#{index + 1}"
    if not isinstance(raw, dict):
        return None, [RegistryError(yaml_path, label, None, f"an entry must be a mapping, got {type(raw).__name__}")]
    if isinstance(raw.get("name"), str) and raw["name"].strip():
        label = f"{label} ({raw['name'].strip()!r})"
    errors: list[RegistryError] = []

    def error(field_name: str | None, message: str) -> None:
        errors.append(RegistryError(yaml_path, label, field_name, message))

    for key, value in raw.items():
        if key not in _FIELD_TYPES:
            close = difflib.get_close_matches(str(key), list(_FIELD_TYPES), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known fields: {', '.join(_FIELD_TYPES)}"
            error(str(key), f"unknown field{hint}")
            continue
        types, description = _FIELD_TYPES[key]
        if value is None and key != "name":
            continue
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            error(key, f"must be {description}, got {type(value).__name__} {value!r}")
    if "name" not in raw:
        error("name", "missing; every model needs a unique name")
    elif isinstance(raw["name"], str) and not raw["name"].strip():
        error("name", "must not be empty")
    has_path = raw.get("path") is not None
    has_hub = raw.get("repo") is not None or raw.get("file") is not None
    if has_path and has_hub:
        error("path", "give either 'path' or 'repo' + 'file', not both")
    elif not has_path and not has_hub:
        error("path", "missing; give 'path' (a local file or folder) or 'repo' + 'file' (a Hugging Face file)")
    elif has_hub and (raw.get("repo") is None or raw.get("file") is None):
        error("repo" if raw.get("repo") is None else "file", "'repo' and 'file' must be given together")
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
    if "cfg_scale" in values:
        values["cfg_scale"] = float(values["cfg_scale"])
    if "examples" in values:
        values["examples"] = tuple(p.strip() for p in values["examples"])
    return ModelEntry(**values), []


def load_registry(yaml_path: str | Path) -> Registry:
    """Read and validate ``models.yaml``; never raises for a bad file, it reports into ``.errors``."""
    import yaml

    yaml_path = Path(yaml_path)
    registry = Registry(path=yaml_path)

    def file_error(message: str) -> Registry:
        registry.errors.append(RegistryError(yaml_path, None, None, message))
        return registry

    try:
        data = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return file_error("file not found")
    except (OSError, UnicodeDecodeError) as exc:
        return file_error(f"cannot be read: {exc}")
    except yaml.YAMLError as exc:
        return file_error(f"is not valid YAML: {exc}")
    if not isinstance(data, dict) or "models" not in data:
        return file_error("must be a mapping with a top-level 'models:' list")
    unknown = [str(k) for k in data if k != "models"]
    if unknown:
        file_error(f"unknown top-level keys {unknown}; only 'models' is read")
    models = data["models"] or []
    if not isinstance(models, list):
        return file_error(f"'models' must be a list of entries, got {type(models).__name__}")

    seen: dict[str, int] = {}
    for index, raw in enumerate(models):
        entry, errors = _check_entry(raw, index, yaml_path)
        registry.errors.extend(errors)
        if entry is None:
            continue
        if entry.name in seen:
            registry.errors.append(RegistryError(
                yaml_path, f"#{index + 1} ({entry.name!r})", "name",
                f"duplicate name: entry #{seen[entry.name] + 1} already uses it; this entry is ignored",
            ))
            continue
        if entry.default and registry.default is not None and registry.default.default:
            registry.errors.append(RegistryError(
                yaml_path, f"#{index + 1} ({entry.name!r})", "default",
                f"{registry.default.name!r} is already the default; this entry is loaded but not the default",
            ))
            entry = ModelEntry(**{**entry.__dict__, "default": False})
        seen[entry.name] = index
        registry.entries.append(entry)
    return registry

"""Everything the UI asks the service, in one place (no gradio here, so it is testable without a browser).

The UI talks only to `webui.service.WebUIService`; these helpers turn its answers into the plain lists and
strings that the widgets display.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webui.sampling import SCHEDULES

DEFAULT_SIZE = 512


@dataclass(frozen=True)
class ModelChoice:
    """One models.yaml entry as the model dropdown shows it, with the defaults it suggests."""

    name: str
    width: int | None = None
    height: int | None = None
    sampler: str | None = None
    scheduler: str | None = None
    steps: int | None = None
    cfg_scale: float | None = None


def registry(service: Any) -> Any:
    """The parsed models.yaml (``ModelManager.registry``)."""
    return getattr(service.models, "registry", None) or service.registry


def model_choices(service: Any) -> list[ModelChoice]:
    """Every valid models.yaml entry, in file order."""
    return [
        ModelChoice(
            name=entry.name,
            width=getattr(entry, "width", None),
            height=getattr(entry, "height", None),
            sampler=getattr(entry, "sampler", None),
            scheduler=getattr(entry, "scheduler", None),
            steps=getattr(entry, "steps", None),
            cfg_scale=getattr(entry, "cfg_scale", None),
        )
        for entry in registry(service).entries
    ]


def default_model(service: Any) -> str | None:
    """The model selected when the page opens: the loaded one, else the registry default, else the first."""
    current = getattr(service.models, "current_name", None)
    if current:
        return current
    default = registry(service).default
    if default is not None:
        return default if isinstance(default, str) else default.name
    entries = model_choices(service)
    return entries[0].name if entries else None


def find_model(service: Any, name: str | None) -> ModelChoice | None:
    return next((m for m in model_choices(service) if m.name == name), None)


def sampler_names(service: Any) -> list[str]:
    """Names of every registered sampler plugin (built-in, installed and from --samplers-dir)."""
    return [sampler.name for sampler in service.samplers.samplers]


def schedule_names() -> list[str]:
    """The schedule types the sampling package knows ("Automatic", "Karras", ...)."""
    return list(SCHEDULES)


MODEL_STATUS_HEADERS = ["Model", "Status", "Source", "Hash", "Error"]


def _source(entry: Any) -> str:
    if getattr(entry, "path", None):
        return str(entry.path)
    repo, file = getattr(entry, "repo", None), getattr(entry, "file", None)
    return f"{repo}/{file}" if repo and file else str(repo or "")


def model_status_rows(service: Any) -> list[list[str]]:
    """One row per models.yaml entry (and per broken entry) for the Models tab table."""
    reg = registry(service)
    entries = {entry.name: entry for entry in reg.entries}
    rows = []
    for status in service.models.status():
        error = getattr(status, "error", None) or ""
        if getattr(status, "loaded", False):
            state = "loaded (current)" if getattr(status, "current", True) else "loaded"
        else:
            state = "load failed" if error else "not loaded"
        if getattr(status, "default", False):
            state += ", default"
        hash_ = getattr(status, "short_hash", None) or ""
        rows.append([status.name, state, _source(entries.get(status.name)), hash_, str(error)])
    for error in getattr(reg, "errors", []) or []:
        where = getattr(error, "entry", None) or Path(str(getattr(error, "file", "models.yaml"))).name
        rows.append([str(where), "invalid entry", str(getattr(error, "file", "")), "", str(error)])
    return rows


def load_model(service: Any, name: str) -> None:
    """Load ``name`` and make it current (blocks while it loads)."""
    service.select_model(name)


def unload_model(service: Any, name: str) -> None:
    """Free ``name``; waits for the running generation (the service's device lock) and drops its preview map."""
    service.unload_model(name)


def token_counter_text(service: Any, model_name: str | None, prompt: str, negative: str, steps: int) -> str:
    """``"Prompt: 12/75 · Negative: 0/75 tokens"``, or ``""`` when the model is not loaded yet."""
    count = getattr(service, "token_count", None)
    if count is None:
        return ""
    parts = []
    for label, text in (("Prompt", prompt), ("Negative", negative)):
        try:
            counted = count(text or "", steps, model_name or None)
        except Exception:  # noqa: BLE001 - a counter must never get in the way of typing
            return ""
        if counted is None:
            return ""
        parts.append(f"{label}: {counted[0]}/{counted[1]}")
    return " · ".join(parts) + " tokens"

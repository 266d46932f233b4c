"""Everything the UI asks the service, in one place (no gradio here, so it is testable without a browser).

The UI talks to the service only through `webui.service.Service` (what `WebUIService` implements); these
helpers turn its answers into the plain lists and strings that the widgets display.
"""

from __future__ import annotations

from dataclasses import dataclass

from webui.models.registry import ModelEntry
from webui.sampling import SCHEDULES
from webui.service import Service


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


def model_choices(service: Service) -> list[ModelChoice]:
    """Every valid models.yaml entry, in file order."""
    return [
        ModelChoice(
            name=entry.name,
            width=entry.width,
            height=entry.height,
            sampler=entry.sampler,
            scheduler=entry.scheduler,
            steps=entry.steps,
            cfg_scale=entry.cfg_scale,
        )
        for entry in service.registry.entries
    ]


def default_model(service: Service) -> str | None:
    """The model selected when the page opens: the loaded one, else the registry default, else the first."""
    current = service.current_model_name
    if current:
        return current
    default = service.registry.default  # the default entry, else the first one
    return default.name if default is not None else None


def find_model(service: Service, name: str | None) -> ModelChoice | None:
    return next((m for m in model_choices(service) if m.name == name), None)


def sampler_names(service: Service) -> list[str]:
    """Names of every registered sampler plugin (built-in, installed and from --samplers-dir)."""
    return [sampler.name for sampler in service.samplers.samplers]


def schedule_names() -> list[str]:
    """The schedule types the sampling package knows ("Automatic", "Karras", ...)."""

    return list(SCHEDULES)


MODEL_STATUS_HEADERS = ["Model", "Status", "Source", "Hash", "Error"]


def _source(entry: ModelEntry | None) -> str:
    if entry is None:
        return ""
    if entry.path is not None:
        return str(entry.path)
    return f"{entry.repo}/{entry.file}" if entry.repo and entry.file else str(entry.repo or "")


def model_status_rows(service: Service) -> list[list[str]]:
    """One row per models.yaml entry (and per broken entry) for the Models tab table."""
    reg = service.registry
    entries = {entry.name: entry for entry in reg.entries}
    rows = []
    for status in service.model_status():
        error = status.error or ""
        if status.loaded:
            state = "loaded (current)" if status.current else "loaded"
        else:
            state = "load failed" if error else "not loaded"
        if status.default:
            state += ", default"
        rows.append([status.name, state, _source(entries.get(status.name)), status.short_hash or "", error])
    for problem in reg.errors:
        rows.append([problem.entry or problem.file.name, "invalid entry", str(problem.file), "", str(problem)])
    return rows


def load_model(service: Service, name: str) -> None:
    """Load ``name`` and make it current (blocks while it loads)."""
    service.select_model(name)


def unload_model(service: Service, name: str) -> None:
    """Free ``name``; waits for the running generation (the service's device lock) and drops its preview map."""
    service.unload_model(name)


def token_counter_text(service: Service, model_name: str | None, prompt: str, negative: str, steps: int) -> str:
    """``"Prompt: 12/75 · Negative: 0/75 tokens"``, or ``""`` when the model is not loaded yet."""
    parts = []
    for label, text in (("Prompt", prompt), ("Negative", negative)):
        try:
            counted = service.token_count(text or "", steps, model_name or None)
        except Exception:  # noqa: BLE001 - a counter must never get in the way of typing
            return ""
        if counted is None:
            return ""
        parts.append(f"{label}: {counted[0]}/{counted[1]}")
    return " · ".join(parts) + " tokens"

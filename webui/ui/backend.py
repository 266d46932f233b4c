"""Everything the UI asks the service, in one place (no gradio here, so it is testable without a browser).

The UI talks to the service only through `webui.service.Service` (what `WebUIService` implements); these
helpers turn its answers into the plain lists and strings that the widgets display.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from webui.models.download import DownloadCancelled, DownloadPlan, DownloadProgress
from webui.models.registry import ModelEntry, RegistryProblem
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
    """The model selected when the page opens: the loaded one, else the registry default (None when the
    intended default entry is invalid: the dropdown then stays empty rather than pointing at another model)."""
    current = service.current_model_name
    if current:
        return current
    default = service.registry.default  # the default entry, else the first one; None if that one is broken
    return default.name if default is not None else None


def find_model(service: Service, name: str | None) -> ModelChoice | None:
    return next((m for m in model_choices(service) if m.name == name), None)


def sampler_names(service: Service) -> list[str]:
    """Names of every registered sampler plugin (built-in, installed and from --samplers-dir)."""
    return [sampler.name for sampler in service.samplers.samplers]


def schedule_names(service: Service) -> list[str]:
    """The schedule types: the core ones ("Automatic", "Karras", ...), then those of schedule plugins."""

    return list(service.samplers.schedule_names)


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
    for problem in reg.warnings:
        rows.append([problem.entry or problem.file.name, "check setting", str(problem.file), "", str(problem)])
    return rows


def registry_problems(service: Service) -> list[RegistryProblem]:
    """Every error and warning of models.yaml (entries skipped, unknown sampler or schedule...)."""
    return list(service.registry.problems)


def problems_banner(service: Service) -> str:
    """HTML for the banner at the top of the page: a one-line summary that opens onto one line per problem;
    ``""`` when models.yaml has none."""
    problems = registry_problems(service)
    if not problems:
        return ""
    errors = len(service.registry.errors)
    count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
    summary = f"models.yaml has {count}" + (f" ({errors} invalid, skipped)" if errors else "")
    items = "".join(f"<li>{html.escape(str(problem))}</li>" for problem in problems)
    return (
        f'<details class="sd-problems" id="models_problems_details"><summary>⚠️ {html.escape(summary)}: '
        f"{html.escape(problems[0].message)}{' …' if len(problems) > 1 else ''}</summary><ul>{items}</ul>"
        "<p>Fix models.yaml, then press Refresh in the Models tab.</p></details>"
    )


@dataclass(frozen=True)
class SelectionUpdate:
    """What the model row shows while a selection runs (see :class:`ModelSwitcher`).

    ``message`` is Markdown for the status next to the dropdown; ``cancellable`` shows the Cancel button;
    when ``done``, ``model`` is the value the dropdown must show (the new model, or the one still loaded after
    a failure) and ``size`` the new model's width/height (None: leave the size sliders as they are).
    """

    message: str
    cancellable: bool = False
    done: bool = False
    model: str | None = None
    size: tuple[int | None, int | None] | None = None


@dataclass
class _Selection:
    name: str
    cancel: threading.Event = field(default_factory=threading.Event)


class ModelSwitcher:
    """Runs a checkpoint selection from the UI: says what will be downloaded, reports progress, can be cancelled.

    One per page build. A selection runs the service's :meth:`~webui.service.Service.select_model` in its own
    thread (the download holds no lock; only the load waits for the running job) and turns its progress into
    :class:`SelectionUpdate` lines. Selections are kept per browser session, so that a Cancel stops only
    that session's own selection, and a second event for the name already being selected is ignored
    (gradio may report one pick twice).

    Args:
        poll_interval: seconds between progress updates.
    """

    def __init__(self, service: Service, poll_interval: float = 0.25):
        self.service = service
        self.poll_interval = poll_interval
        self._lock = threading.Lock()
        self._running: dict[str, _Selection] = {}  # session -> its selection in flight

    def busy(self, session: str) -> bool:
        with self._lock:
            return session in self._running

    def cancel(self, session: str) -> bool:
        """Cancel ``session``'s selection in flight; False if there is none."""
        with self._lock:
            selection = self._running.get(session)
        if selection is None:
            return False
        selection.cancel.set()
        return True

    def select(self, name: str | None, session: str = "") -> Iterator[SelectionUpdate]:
        """Select ``name`` for ``session``; yields nothing when there is nothing to do (no name, the current
        model, or the same name already being selected)."""
        if not name or name == self.service.current_model_name:
            return
        with self._lock:
            running = self._running.get(session)
            if running is not None and running.name == name:
                return
            if running is not None:  # another pick while one runs: that one is abandoned
                running.cancel.set()
            selection = self._running[session] = _Selection(name)
        try:
            yield from self._run(selection)
        finally:
            selection.cancel.set()  # the page went away (or it ended): nobody is waiting for a download any more
            with self._lock:
                if self._running.get(session) is selection:
                    del self._running[session]

    def _run(self, selection: _Selection) -> Iterator[SelectionUpdate]:
        name = selection.name
        yield SelectionUpdate(f"Checking **{name}**…", cancellable=True)
        try:
            plan = self.service.download_plan(name)
        except Exception as exc:  # noqa: BLE001 - an unknown name, an unreadable entry: said in the status line
            yield self._failed(name, exc)
            return
        if selection.cancel.is_set():
            yield self._failed(name, DownloadCancelled("cancelled"))
            return
        if plan is not None:
            yield SelectionUpdate(f"**{name}** {plan.message}. Starting the download…", cancellable=True)
        else:
            yield SelectionUpdate(f"Loading **{name}**…")

        latest: list[DownloadProgress] = []
        outcome: list[BaseException | None] = []

        def work() -> None:
            try:
                self.service.select_model(name, latest.append, selection.cancel)
                outcome.append(None)
            except BaseException as exc:  # noqa: BLE001 - handed to the UI thread below
                outcome.append(exc)

        worker = threading.Thread(target=work, name=f"select-{name}", daemon=True)
        worker.start()
        shown: DownloadProgress | None = None
        while worker.is_alive():
            worker.join(self.poll_interval)
            progress = latest[-1] if latest else None
            if progress is not None and progress is not shown and plan is not None:
                shown = progress
                yield self._progress(name, plan, progress)
        error = outcome[0] if outcome else RuntimeError("the selection stopped without a result")
        if error is not None:
            yield self._failed(name, error)
            return
        entry = find_model(self.service, name)
        size = (entry.width, entry.height) if entry is not None and (entry.width or entry.height) else None
        yield SelectionUpdate(f"Loaded **{name}**", done=True, model=name, size=size)

    @staticmethod
    def _progress(name: str, plan: DownloadPlan, progress: DownloadProgress) -> SelectionUpdate:
        if progress.finished:
            return SelectionUpdate(f"Downloaded **{name}** ({progress.message}). Loading it…")
        fraction = progress.fraction
        bar = f'\n\n<progress value="{fraction:.3f}" max="1"></progress>' if fraction is not None else ""
        return SelectionUpdate(
            f"Downloading **{name}** from {plan.repo}: {progress.message}{bar}",
            cancellable=True,
        )

    def _failed(self, name: str, error: BaseException) -> SelectionUpdate:
        still = self.service.current_model_name
        keeping = f" Still using **{still}**." if still else ""
        if isinstance(error, DownloadCancelled):
            message = f"Download of **{name}** cancelled; nothing was kept.{keeping}"
        else:
            message = f"⚠️ Could not load **{name}**: {error}{keeping}"
        return SelectionUpdate(message, done=True, model=still)


def load_model(service: Service, name: str) -> None:
    """Load ``name`` and make it current (blocks while it loads), for the Models tab's Load button.

    Raises:
        ValueError: ``name`` must be downloaded first. The Models tab has no progress or Cancel for a
            download, and would hold its one slot meanwhile: the checkpoint list at the top has both.
    """
    if any(row.name == name and row.needs_download for row in service.model_status()):
        raise ValueError(
            "it must be downloaded first: pick it in the checkpoint list at the top of the page, which shows "
            "the download's progress and can cancel it"
        )
    service.select_model(name)


def unload_model(service: Service, name: str) -> None:
    """Free ``name``; waits for the running generation (the service's device lock) and drops its preview map."""
    service.unload_model(name)

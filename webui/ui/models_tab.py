"""The Models tab: every models.yaml entry with its status; load / unload; loading errors in plain words."""

from __future__ import annotations

from typing import Any

import gradio as gr

from webui.service import Service
from webui.ui import backend


def build_models_tab(service: Service, model: gr.Dropdown, banner: gr.HTML | None = None) -> None:
    """Lay out the tab (inside the caller's ``gr.Tab``); loading here also selects the model on top.

    The table has a row per model and one per models.yaml problem (invalid entry, unknown sampler...);
    Refresh re-reads models.yaml and updates those rows, the dropdowns and the page's problems ``banner``.
    """
    names = [m.name for m in backend.model_choices(service)]
    table = gr.Dataframe(
        value=backend.model_status_rows(service),
        headers=backend.MODEL_STATUS_HEADERS,
        interactive=False,
        label="Models (from models.yaml)",
        elem_id="models_table",
        wrap=True,
    )
    with gr.Row():
        chosen = gr.Dropdown(names, value=model.value, label="Model", elem_id="models_choice", scale=3)
        load = gr.Button("Load", variant="primary", elem_id="models_load", scale=1)
        unload = gr.Button("Unload", elem_id="models_unload", scale=1)
        refresh = gr.Button("Refresh", elem_id="models_refresh", scale=1)  # re-reads models.yaml
    message = gr.Markdown(elem_id="models_message")

    def do_load(name: str | None) -> tuple[list, str, Any]:
        if not name:
            raise gr.Error("Pick a model first.")
        try:
            backend.load_model(service, name)
        except Exception as exc:
            return backend.model_status_rows(service), f"**Could not load {name}:** {exc}", gr.skip()
        return backend.model_status_rows(service), f"Loaded **{name}**.", name

    def do_unload(name: str | None) -> tuple[list, str]:
        if not name:
            raise gr.Error("Pick a model first.")
        try:
            backend.unload_model(service, name)
        except Exception as exc:
            return backend.model_status_rows(service), f"**Could not unload {name}:** {exc}"
        return backend.model_status_rows(service), f"Unloaded **{name}**."

    load.click(
        do_load,
        chosen,
        [table, message, model],
        concurrency_id="models",
        concurrency_limit=1,
        api_visibility="undocumented",
    )
    unload.click(
        do_unload, chosen, [table, message], concurrency_id="models", concurrency_limit=1, api_visibility="undocumented"
    )

    def do_refresh(current: str | None, picked: str | None) -> list[Any]:
        service.reload_registry()
        names = [m.name for m in backend.model_choices(service)]
        count = f"{len(names)} model{'s' if len(names) != 1 else ''} in models.yaml"
        problems = len(backend.registry_problems(service))
        if problems:
            count += f", {problems} problem{'s' if problems != 1 else ''} (listed above)"
        updates: list[Any] = [
            backend.model_status_rows(service),
            f"Re-read models.yaml: {count}.",
            gr.Dropdown(choices=names, value=current if current in names else backend.default_model(service)),
            gr.Dropdown(choices=names, value=picked if picked in names else None),
        ]
        if banner is not None:
            html = backend.problems_banner(service)
            updates.append(gr.HTML(html, visible=bool(html)))
        return updates

    refresh.click(
        do_refresh,
        [model, chosen],
        [table, message, model, chosen, *([banner] if banner is not None else [])],
        concurrency_id="models",
        concurrency_limit=1,
        api_visibility="undocumented",
    )

"""The "SD VAE" dropdown beside the checkpoint and the "Textual Inversion" panel under the prompts (issue 15).

The panel lists the embeddings folder as a table (word, vectors, steps, trained on, file) with a search box
and a refresh button; clicking a word inserts it at the cursor of the tab's prompt or negative prompt (the
one last focused), as A1111's extra-network cards do. Embeddings of another width are listed greyed out as
skipped, unreadable files with their message.
"""

from __future__ import annotations

import html
from typing import Any

import gradio as gr

from webui.extra_networks.embeddings import Embedding
from webui.service import Service
from webui.ui.common import QUIET

# Page script: a click on a word inserts it at the cursor of the tab's last focused prompt box (the prompt by
# default), with a space before it when needed, and tells gradio the text changed.
INSERT_WORD_JS = """
() => {
  if (window.sdInsertWordInstalled) return;  // each tab's panel asks for it; one listener is enough
  window.sdInsertWordInstalled = true;
  const lastBox = {};
  document.addEventListener("focusin", (event) => {
    const box = event.target.closest && event.target.closest("[id$='_prompt'], [id$='_neg_prompt']");
    if (box && event.target.tagName === "TEXTAREA") lastBox[box.id.split("_")[0]] = event.target;
  });
  document.addEventListener("click", (event) => {
    const card = event.target.closest && event.target.closest(".sd-ti-word");
    if (!card) return;
    event.preventDefault();
    const tab = card.dataset.tab;
    let area = lastBox[tab];
    if (!area || !area.isConnected) area = document.querySelector(`#${tab}_prompt textarea`);
    if (!area) return;
    const word = card.dataset.word;
    const start = area.selectionStart ?? area.value.length, end = area.selectionEnd ?? start;
    const before = area.value.slice(0, start), after = area.value.slice(end);
    const text = (before && !/\\s$/.test(before) ? " " : "") + word + (after && !/^[\\s,]/.test(after) ? " " : "");
    area.value = before + text + after;
    area.selectionStart = area.selectionEnd = before.length + text.length;
    area.dispatchEvent(new Event("input", {bubbles: true}));
    area.focus();
  });
}
"""

CSS = """
.sd-ti-table { width: 100%; font-size: var(--text-sm); }
.sd-ti-table td, .sd-ti-table th { padding: 2px 8px; text-align: left; }
.sd-ti-word { cursor: pointer; border: 1px solid var(--border-color-primary); border-radius: 4px; padding: 1px 6px;
              background: var(--button-secondary-background-fill); }
.sd-ti-skipped { opacity: 0.55; }
"""


def _row(tab: str, embedding: Embedding, skipped: bool) -> str:
    word = html.escape(embedding.name)
    cell = (
        f'<span class="sd-ti-muted">{word}</span>'
        if skipped
        else f'<button class="sd-ti-word" data-tab="{tab}" data-word="{word}" title="Insert {word}">{word}</button>'
    )
    trained = html.escape(embedding.sd_checkpoint_name or embedding.sd_checkpoint or "")
    note = f"skipped: {embedding.shape} wide, the model is not" if skipped else ""
    path = html.escape(embedding.path.name if embedding.path is not None else "")
    step = "" if embedding.step is None else str(embedding.step)
    css = ' class="sd-ti-skipped"' if skipped else ""
    return (
        f"<tr{css}><td>{cell}</td><td>{embedding.vectors}</td><td>{step}</td><td>{trained}</td>"
        f"<td>{path}</td><td>{note}</td></tr>"
    )


def embeddings_html(service: Service, query: str, tab: str) -> str:
    """The panel's table for ``query`` (case-insensitive part of the word; empty: all)."""
    found = service.embeddings()
    needle = (query or "").strip().lower()
    rows = [_row(tab, e, False) for name, e in found.loaded.items() if needle in name.lower()]
    rows += [_row(tab, e, True) for name, e in found.skipped.items() if needle in name.lower()]
    errors = [
        f'<tr class="sd-ti-skipped"><td>{html.escape(name)}</td><td colspan="5">{html.escape(message)}</td></tr>'
        for name, message in found.errors.items()
        if needle in name.lower()
    ]
    if not rows and not errors:
        where = "match the search" if needle else "are in the embeddings folder (models/embeddings)"
        return f"<p>No embeddings {where}.</p>"
    head = "<tr><th>Word</th><th>Vectors</th><th>Steps</th><th>Trained on</th><th>File</th><th></th></tr>"
    return f'<table class="sd-ti-table">{head}{"".join(rows + errors)}</table>'


def build_textual_inversion_panel(tab: str, service: Service) -> gr.HTML:
    """The collapsed "Textual Inversion" panel of ``tab`` (``txt2img`` / ``img2img``); returns its table."""
    with gr.Accordion("Textual Inversion", open=False, elem_id=f"{tab}_ti_panel"):
        with gr.Row(equal_height=True):
            search = gr.Textbox(
                placeholder="Search embeddings", show_label=False, elem_id=f"{tab}_ti_search", scale=4, container=False
            )
            refresh = gr.Button("Refresh", size="sm", elem_id=f"{tab}_ti_refresh", scale=0, min_width=90)
        table = gr.HTML(embeddings_html(service, "", tab), elem_id=f"{tab}_ti_table")

    def show(query: str) -> str:
        return embeddings_html(service, query, tab)

    def reread(query: str) -> str:
        service.refresh_embeddings()
        return embeddings_html(service, query, tab)

    search.change(show, search, table, **QUIET)
    refresh.click(reread, search, table, **QUIET)
    gr.on(triggers=None, fn=None, js=INSERT_WORD_JS, queue=False, api_visibility="undocumented")
    return table


def build_vae_dropdown(service: Service) -> tuple[gr.Dropdown, gr.Button]:
    """The "SD VAE" dropdown (Automatic, None, the VAE folder) and its refresh button, wired to the service."""
    vae = gr.Dropdown(_choices(service), value=service.sd_vae, label="SD VAE", elem_id="sd_vae", scale=2, min_width=180)
    refresh = gr.Button("🔄", size="sm", elem_id="sd_vae_refresh", scale=0, min_width=40)

    def choose(name: str | None) -> Any:
        if name:
            try:
                service.set_sd_vae(name)
            except ValueError as err:
                raise gr.Error(str(err)) from None
        return gr.Dropdown(value=service.sd_vae)

    def reread() -> Any:
        service.refresh_vae()
        return gr.Dropdown(choices=_choices(service), value=service.sd_vae)

    vae.select(choose, vae, vae, **QUIET)
    refresh.click(reread, None, vae, **QUIET)
    return vae, refresh


def _choices(service: Service) -> list[str]:
    return ["Automatic", "None", *(file.name for file in service.vae_files())]


def wire_vae_paste(service: Service, vae: gr.Dropdown, buttons: list[gr.Button], parameters: gr.Textbox) -> None:
    """Sending a PNG's parameters to a tab also selects the VAE its infotext names (A1111 restores ``VAE`` into
    the ``sd_vae`` setting), when that VAE is in the VAE folder; without a ``VAE`` key the choice stays."""
    from webui.pipeline.infotext import parse_infotext

    def restore(text: str) -> Any:
        name = parse_infotext(text or "").get("VAE")
        if not name or name not in _choices(service):
            return gr.skip()
        service.set_sd_vae(name)
        return gr.Dropdown(value=name)

    for button in buttons:
        button.click(restore, parameters, vae, **QUIET)

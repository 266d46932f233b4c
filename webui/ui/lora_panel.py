"""The "Lora" panel under a tab's prompt: the LoRA folder as a searchable table; a click inserts ``<lora:name:1>``.

As AUTOMATIC1111's extra-networks "Lora" tab: one row per file (name, alias, what its kohya metadata says), a
search box that filters on name, alias and path, a refresh button that re-scans the folder, and a click on a row
that puts ``<lora:NAME:1>`` into the prompt where the cursor was (at the end when the box never had the cursor).
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from webui.extra_networks.lora_library import LoraEntry
from webui.service import Service
from webui.ui.common import QUIET

HEADERS = ["Name", "Alias", "Trained on", "Rank", "Folder"]
DEFAULT_WEIGHT = 1
# Runs in the browser (after the server has turned the clicked row into its name): the name becomes a tag
# inserted at the prompt box's cursor (its selectionStart stays when the box loses focus to the click), with a
# space before it after a word and after it before a word (not before ", blue").
INSERT_JS = """
(name, prompt) => {
  const text = prompt || "";
  if (!name) return text;
  const box = document.querySelector("#__PROMPT__ textarea");
  const tag = "<lora:" + name + ":__WEIGHT__>";
  // a box whose value was set by the page (never clicked into) has its cursor at the end
  const at = box && box.value === text ? box.selectionStart : text.length;
  const before = text.slice(0, at), after = text.slice(at);
  const left = before && !/\\s$/.test(before) ? " " : "";
  const right = /^[\\w(<\\[]/.test(after) ? " " : "";
  return before + left + tag + right + after;
}
"""


def lora_rows(entries: list[LoraEntry], query: str = "", folder: Any = None) -> list[list[str]]:
    """Table rows of ``entries`` whose name, alias or path contains every word of ``query`` (any case)."""
    words = query.lower().split()
    rows = []
    for entry in entries:
        haystack = f"{entry.name} {entry.alias} {entry.path}".lower()
        if not all(word in haystack for word in words):
            continue
        meta = entry.metadata
        trained = entry.error or meta.get("ss_sd_model_name") or meta.get("ss_base_model_version") or ""
        sub = entry.path.parent.name if folder is None or entry.path.parent != folder else ""
        alias = entry.alias if entry.alias != entry.name else ""
        rows.append([entry.name, alias, trained, meta.get("ss_network_dim", ""), sub])
    return rows


def build_lora_panel(service: Service, prompt: gr.Textbox, tab: str) -> gr.Dataset:
    """Lay out the panel (closed accordion) below ``prompt`` and wire it; returns the table."""
    folder = getattr(getattr(service, "lora_library", None), "folder", None)
    entries = service.loras()
    with gr.Accordion(f"Lora ({len(entries)})", open=False, elem_id=f"{tab}_lora_panel") as panel:
        with gr.Row():
            search = gr.Textbox(
                label="Search", placeholder="name, alias or folder", scale=4, elem_id=f"{tab}_lora_search"
            )
            refresh = gr.Button("Refresh", size="sm", scale=0, min_width=100, elem_id=f"{tab}_lora_refresh")
        table = gr.Dataset(
            components=["textbox"] * len(HEADERS),
            headers=HEADERS,
            samples=lora_rows(entries, "", folder),
            samples_per_page=20,
            layout="table",
            label="Click a LoRA to add it to the prompt",
            elem_id=f"{tab}_lora_table",
        )
        gr.Markdown(
            "Files in the LoRA folder (`--lora-dir`, default `models/Lora`). In the prompt, "
            "`<lora:NAME:WEIGHT>` sets both weights, `<lora:NAME:TE:UNET>` the text encoder's and the UNet's."
        )

    def filtered(query: str) -> Any:
        return gr.Dataset(samples=lora_rows(service.loras(), query, folder))

    def rescan(query: str) -> tuple[Any, Any]:
        found = service.refresh_loras()
        return gr.Dataset(samples=lora_rows(found, query, folder)), gr.Accordion(label=f"Lora ({len(found)})")

    search.change(filtered, search, table, **QUIET)
    refresh.click(rescan, search, [table, panel], **QUIET)
    js = INSERT_JS.replace("__PROMPT__", f"{tab}_prompt").replace("__WEIGHT__", str(DEFAULT_WEIGHT))
    picked = gr.Textbox(visible=False)  # the clicked row's name, on its way to the browser-side insert
    table.click(lambda row: row[0] if row else "", table, picked, **QUIET).then(
        None, [picked, prompt], prompt, js=js, **QUIET
    )
    return table

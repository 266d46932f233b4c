"""What the page tells a user about the model: the status line at the top, the selected model's description and
example prompts (from models.yaml), and the token counter that explains 75-token chunks.

No gradio here, so that every text is testable without a browser. The service is asked only through its public
answers (`model_status()`, `loaded_model_info()`, `token_count()`) and the registry entries.
"""

from __future__ import annotations

import html

from webui.models.registry import ModelEntry
from webui.pipeline.prompts import CHUNK_LENGTH
from webui.service import Service

NO_MODEL = "no model loaded"
_PRECISIONS = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64"}

TOKEN_CHUNKS_HELP = (
    f"CLIP, the text encoder, reads at most {CHUNK_LENGTH} tokens at a time. A longer prompt is split into "
    f"chunks of {CHUNK_LENGTH} tokens (BREAK starts a new chunk early); each chunk is encoded on its own and "
    "the encodings are joined end to end, as AUTOMATIC1111 does. Every word still counts, but words in different "
    'chunks are not read together, so keep words that belong together ("red star") in one chunk.'
)


def precision_name(dtype: object) -> str:
    """``torch.float16`` -> ``"fp16"`` (the names of ``--precision``)."""
    name = str(dtype).removeprefix("torch.")
    return _PRECISIONS.get(name, name)


def status_line(service: Service) -> str:
    """``"demo · 64×64 · fp32 · cpu"`` for the current model; ``"loading demo…"``; or ``"no model loaded"``.

    Never loads anything and never waits for a load in progress (`Service.model_status` answers at once).
    """
    loading = next((s.name for s in service.model_status() if s.loading), None)
    if loading:
        return f"loading {loading}…"
    info = service.loaded_model_info()
    if info is None:
        return service.current_model_name or NO_MODEL
    width, height = info.native_size
    return " · ".join([info.name, f"{width}×{height}", precision_name(info.dtype), str(info.device)])


def status_html(service: Service) -> str:
    """The status line as shown at the top of the page (``data-loaded`` says whether a model is resident)."""
    text = status_line(service)
    loaded = text != NO_MODEL and not text.startswith("loading ")
    title = (
        "The model in memory: its name, native image size, precision and device."
        if loaded
        else ("Nothing is loaded yet: the first Generate (or choosing a checkpoint) loads the selected model.")
    )
    return (
        f'<div class="sd-status-line" data-loaded="{str(loaded).lower()}" title="{html.escape(title)}">'
        f"Model: {html.escape(text)}</div>"
    )


def _entry(service: Service, name: str | None) -> ModelEntry | None:
    if not name:
        return None
    return next((entry for entry in service.registry.entries if entry.name == name), None)


def description(service: Service, name: str | None) -> str:
    """The ``description`` of ``name``'s models.yaml entry, or ``""``."""
    entry = _entry(service, name)
    return entry.description if entry is not None else ""


def example_prompts(service: Service, name: str | None) -> list[str]:
    """The ``examples`` of ``name``'s models.yaml entry: prompts that show what the model can draw."""
    entry = _entry(service, name)
    return list(entry.examples) if entry is not None else []


def token_counter_html(service: Service, model_name: str | None, prompt: str, negative: str, steps: int) -> str:
    """``"Prompt: 12/75 · Negative: 0/75 tokens"`` with a tooltip on how long prompts are chunked;
    ``"Prompt: 500/525 (7 chunks) · …"`` once a prompt needs more than one chunk; ``""`` before the model is loaded.
    """
    count = service.token_count
    parts = []
    for label, text in (("Prompt", prompt), ("Negative", negative)):
        try:
            counted = count(text or "", steps, model_name or None)
        except Exception:  # noqa: BLE001 - a counter must never get in the way of typing
            return ""
        if counted is None:
            return ""
        tokens, capacity = counted
        chunks = max(1, capacity // CHUNK_LENGTH)
        parts.append(f"{label}: {tokens}/{capacity}" + (f" ({chunks} chunks)" if chunks > 1 else ""))
    chunked = any("chunks)" in part for part in parts)
    return (
        f'<span class="sd-token-counter" data-chunked="{str(chunked).lower()}" '
        f'title="{html.escape(TOKEN_CHUNKS_HELP)}">{html.escape(" · ".join(parts))} tokens</span>'
    )

"""What the page tells a user about the model: the status line at the top, the selected model's description and
example prompts (from models.yaml), and the token counter that explains 75-token chunks.

No gradio here, so that every text is testable without a browser. The service is asked only through its public
answers (`models.status()`, `models.loaded()`, `token_count()`) and the registry entries.
"""

from __future__ import annotations

import html
from typing import Any

from webui.pipeline.prompts import CHUNK_LENGTH
from webui.ui import backend

NO_MODEL = "no model loaded"
_PRECISIONS = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64"}

TOKEN_CHUNKS_HELP = (
    f"CLIP, the text encoder, reads at most {CHUNK_LENGTH} tokens at a time. A longer prompt is split into "
    f"chunks of {CHUNK_LENGTH} tokens (BREAK starts a new chunk early); each chunk is encoded on its own and "
    "the encodings are joined end to end, as AUTOMATIC1111 does. Every word still counts, but words in different "
    "chunks are not read together, so keep words that belong together (\"red star\") in one chunk."
)


def precision_name(dtype: Any) -> str:
    """``torch.float16`` -> ``"fp16"`` (the names of ``--precision``)."""
    name = str(dtype).removeprefix("torch.")
    return _PRECISIONS.get(name, name)


def status_line(service: Any) -> str:
    """``"demo · 64×64 · fp32 · cpu"`` for the current model; ``"loading demo…"``; or ``"no model loaded"``.

    Never loads anything and never waits for a load in progress (`ModelManager.status` answers at once).
    """
    models = service.models
    loading = next((s.name for s in models.status() if getattr(s, "loading", False)), None)
    if loading:
        return f"loading {loading}…"
    name = getattr(models, "current_name", None)
    loaded = getattr(models, "loaded", None)
    model = loaded().get(name) if name and callable(loaded) else None
    if model is None:
        return name or NO_MODEL  # a manager that cannot show its models: the name at least
    width, height = getattr(model, "native_size", None) or (None, None)
    parts = [name]
    if width and height:
        parts.append(f"{width}×{height}")
    parts += [precision_name(getattr(model, "dtype", "")), str(getattr(model, "device", ""))]
    return " · ".join(part for part in parts if part)


def status_html(service: Any) -> str:
    """The status line as shown at the top of the page (``data-loaded`` says whether a model is resident)."""
    text = status_line(service)
    loaded = text != NO_MODEL and not text.startswith("loading ")
    title = "The model in memory: its name, native image size, precision and device." if loaded else (
        "Nothing is loaded yet: the first Generate (or choosing a checkpoint) loads the selected model."
    )
    return (f'<div class="sd-status-line" data-loaded="{str(loaded).lower()}" title="{html.escape(title)}">'
            f"Model: {html.escape(text)}</div>")


def _entry(service: Any, name: str | None) -> Any | None:
    if not name:
        return None
    return next((entry for entry in backend.registry(service).entries if entry.name == name), None)


def description(service: Any, name: str | None) -> str:
    """The ``description`` of ``name``'s models.yaml entry, or ``""``."""
    return str(getattr(_entry(service, name), "description", "") or "")


def example_prompts(service: Any, name: str | None) -> list[str]:
    """The ``examples`` of ``name``'s models.yaml entry: prompts that show what the model can draw."""
    return [str(prompt) for prompt in getattr(_entry(service, name), "examples", ()) or ()]


def token_counter_html(service: Any, model_name: str | None, prompt: str, negative: str, steps: int) -> str:
    """``"Prompt: 12/75 · Negative: 0/75 tokens"`` with a tooltip on how long prompts are chunked;
    ``"Prompt: 500/525 (7 chunks) · …"`` once a prompt needs more than one chunk; ``""`` before the model is loaded.
    """
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
        tokens, capacity = counted
        chunks = max(1, capacity // CHUNK_LENGTH)
        parts.append(f"{label}: {tokens}/{capacity}" + (f" ({chunks} chunks)" if chunks > 1 else ""))
    chunked = any("chunks)" in part for part in parts)
    return (f'<span class="sd-token-counter" data-chunked="{str(chunked).lower()}" '
            f'title="{html.escape(TOKEN_CHUNKS_HELP)}">{html.escape(" · ".join(parts))} tokens</span>')

"""LoRA routes of AUTOMATIC1111's API: ``GET /sdapi/v1/loras`` and ``POST /sdapi/v1/refresh-loras``.

Shapes as A1111 1.10 answers them (``extensions-builtin/Lora/scripts/lora_script.py``): one object per file,
``name`` (file stem), ``alias`` (``ss_output_name`` or the name), ``path`` and ``metadata``, whose JSON-object
strings (kohya's ``ss_tag_frequency``, ``ss_dataset_dirs``) are decoded as A1111's metadata reader does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anyio
from pydantic import BaseModel

from webui.service import Service


class LoraItem(BaseModel):
    name: str
    alias: str
    path: str
    metadata: dict[str, Any]


def decoded_metadata(metadata: dict[str, str]) -> dict[str, Any]:
    """Metadata values that are JSON objects decoded (A1111's ``read_metadata_from_safetensors``)."""
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        out[key] = value
        if isinstance(value, str) and value.startswith("{"):
            try:
                out[key] = json.loads(value)
            except ValueError:
                pass
    return out


class LoraApi:
    def __init__(self, service: Service):
        self.service = service

    async def loras(self) -> list[dict[str, Any]]:
        entries = await anyio.to_thread.run_sync(self.service.loras)
        return [
            {"name": e.name, "alias": e.alias, "path": str(e.path), "metadata": decoded_metadata(e.metadata)}
            for e in entries
        ]

    async def refresh_loras(self) -> None:
        await anyio.to_thread.run_sync(self.service.refresh_loras)
        return None


def lora_routes(service: Service) -> list[tuple[str, Callable[..., Any], list[str], Any]]:
    """``(path, endpoint, methods, response model)`` rows for ``mount_api``'s route table."""
    api = LoraApi(service)
    return [("/loras", api.loras, ["GET"], list[LoraItem]), ("/refresh-loras", api.refresh_loras, ["POST"], None)]

"""AUTOMATIC1111's extra-network routes for embeddings and VAE files (issue 15), with its response shapes.

- ``GET /sdapi/v1/embeddings`` -> ``{"loaded": {word: item}, "skipped": {word: item}}``, each item
  ``{"step", "sd_checkpoint", "sd_checkpoint_name", "shape", "vectors"}``;
- ``POST /sdapi/v1/refresh-embeddings`` -> null;
- ``GET /sdapi/v1/sd-vae`` -> ``[{"model_name", "filename"}]``;
- ``POST /sdapi/v1/refresh-vae`` -> null.

The ``sd_vae`` option (``GET``/``POST /sdapi/v1/options`` and ``override_settings``) lives with the other
options in :mod:`webui.api.routes`; :func:`vae_option` checks its value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
from fastapi import FastAPI
from pydantic import BaseModel

from webui.api.errors import field_error
from webui.api.security import AsciiJSONResponse
from webui.extra_networks.embeddings import Embedding
from webui.pipeline.errors import InvalidRequest
from webui.service import Service


class EmbeddingItem(BaseModel):
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    shape: int
    vectors: int


class EmbeddingsResponse(BaseModel):
    loaded: dict[str, EmbeddingItem]
    skipped: dict[str, EmbeddingItem]


class SDVaeItem(BaseModel):
    model_name: str
    filename: str


def embedding_item(embedding: Embedding) -> dict[str, Any]:
    return {
        "step": embedding.step,
        "sd_checkpoint": embedding.sd_checkpoint,
        "sd_checkpoint_name": embedding.sd_checkpoint_name,
        "shape": embedding.shape,
        "vectors": embedding.vectors,
    }


def vae_option(value: Any, field: str) -> str:
    """An ``sd_vae`` option value as the request field takes it; 422 (naming ``field``) for a non-string."""
    if not isinstance(value, str):
        raise field_error(field, f"must be a VAE name from GET /sdapi/v1/sd-vae, Automatic or None; got {value!r}")
    return value


def set_vae_option(service: Service, value: Any) -> None:
    """``POST /options`` with ``sd_vae``: change the setting, 422 for an unknown name."""
    try:
        service.set_sd_vae(vae_option(value, "sd_vae"))
    except InvalidRequest as exc:
        raise field_error("sd_vae", exc.message) from exc


def add_extra_network_routes(app: FastAPI, service: Service, prefix: str, route_class: Any) -> None:
    """Add the four routes under ``prefix`` (``/sdapi/v1``) with the API's route class (auth, body limit)."""

    async def embeddings() -> dict[str, Any]:
        found = service.embeddings()
        return {
            "loaded": {name: embedding_item(e) for name, e in found.loaded.items()},
            "skipped": {name: embedding_item(e) for name, e in found.skipped.items()},
        }

    async def refresh_embeddings() -> None:
        await anyio.to_thread.run_sync(service.refresh_embeddings)

    async def sd_vae() -> list[dict[str, str]]:
        return [{"model_name": vae.name, "filename": str(vae.path)} for vae in service.vae_files()]

    async def refresh_vae() -> None:
        await anyio.to_thread.run_sync(service.refresh_vae)

    table: list[tuple[str, Callable[..., Any], str, Any]] = [
        ("/embeddings", embeddings, "GET", EmbeddingsResponse),
        ("/refresh-embeddings", refresh_embeddings, "POST", None),
        ("/sd-vae", sd_vae, "GET", list[SDVaeItem]),
        ("/refresh-vae", refresh_vae, "POST", None),
    ]
    for path, endpoint, method, response_model in table:
        app.router.add_api_route(
            prefix + path,
            endpoint,
            methods=[method],
            response_model=response_model,
            response_class=AsciiJSONResponse,
            route_class_override=route_class,
        )

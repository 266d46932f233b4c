"""Error answers of the API, in FastAPI's own validation-error shape so that clients parse one format.

Every 4xx body is ``{"detail": [{"loc": ["body", "<field>"], "msg": "...", "type": "..."}]}`` (or
``["query", ...]`` for query parameters), exactly what FastAPI answers when pydantic rejects a field.
"""

from __future__ import annotations

from fastapi import HTTPException


def field_error(
    field: str, message: str, *, status_code: int = 422, where: str = "body", kind: str = "value_error"
) -> HTTPException:
    """An ``HTTPException`` naming ``field``; a dotted path such as ``init_images.1`` becomes
    ``["body", "init_images", 1]`` as pydantic writes it."""
    loc = [where, *(int(part) if part.isdigit() else part for part in field.split("."))]
    return HTTPException(status_code=status_code, detail=[{"loc": loc, "msg": message, "type": kind}])

"""What every API route checks before its body is read: HTTP Basic credentials (``--api-auth user:pass``,
compared in constant time) and the body size (``ApiLimits.max_body_bytes``).

The checks live in the route class rather than in a FastAPI dependency because FastAPI reads and parses the
request body before it solves dependencies: a dependency would let anyone without a password make the server
read and parse a body of any size. They are not an ASGI middleware either because the API is mounted on
Gradio's app after that app has started, when middleware can no longer be added.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Coroutine, Sequence
from secrets import compare_digest
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.types import Message

Credentials = Sequence[tuple[str, str]]

SECURITY_SCHEME = {"HTTPBasic": {"type": "http", "scheme": "basic"}}


def parse_basic_authorization(header: str | None) -> tuple[str, str] | None:
    """``"Basic dXNlcjpwYXNz"`` -> ``("user", "pass")``; None for a missing or malformed header (RFC 7617)."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def credentials_match(given: tuple[str, str] | None, allowed: Credentials) -> bool:
    """Whether ``given`` is one of ``allowed``, comparing every entry in constant time.

    All entries are compared, whatever matches, so that the time taken does not tell which user names exist.
    """
    if given is None:
        return False
    user, password = given[0].encode(), given[1].encode()
    found = False
    for allowed_user, allowed_password in allowed:
        user_ok = compare_digest(user, allowed_user.encode())
        password_ok = compare_digest(password, allowed_password.encode())
        found |= user_ok & password_ok
    return found


class AsciiJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped: always encodable, even when an error message quotes input
    that is not valid Unicode (Starlette's ``JSONResponse`` would fail to encode it and answer 500)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    """FastAPI's 422 entries without the ``input`` they echo (which may be a 50 MB image, or a NaN)."""
    return [{key: error[key] for key in ("type", "loc", "msg") if key in error} for error in exc.errors()]


def unauthorized() -> JSONResponse:
    return JSONResponse(
        {"detail": "Incorrect username or password"}, status_code=401, headers={"WWW-Authenticate": "Basic"}
    )


def too_large(max_body_bytes: int) -> HTTPException:
    message = f"the request body is larger than this server's limit of {max_body_bytes} bytes"
    return HTTPException(413, detail=[{"loc": ["body"], "msg": message, "type": "too_large"}])


def limit_body(request: Request, max_body_bytes: int) -> Request:
    """``request`` with a body that may not exceed ``max_body_bytes``: refused at once from ``Content-Length``,
    else counted while it streams in (chunked uploads), raising a 413 as soon as the count passes the limit."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_body_bytes:
        raise too_large(max_body_bytes)
    received = 0
    receive = request.receive

    async def counting_receive() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > max_body_bytes:
                raise too_large(max_body_bytes)
        return message

    return Request(request.scope, counting_receive)


def guarded_route_class(credentials: Credentials | None, max_body_bytes: int) -> type[APIRoute]:
    """An ``APIRoute`` class whose routes check, before FastAPI reads the body: the HTTP Basic credentials
    (401 unless one of ``credentials``; no check when None or empty), then the body size (413).

    Its routes also answer their errors (``HTTPException``, validation errors) themselves, as ASCII JSON, so that
    the API's error format does not depend on the exception handlers of the app it is mounted on (Gradio's)."""
    allowed = tuple((str(u), str(p)) for u, p in credentials or ())

    class GuardedRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def guarded(request: Request) -> Response:
                given = parse_basic_authorization(request.headers.get("authorization"))
                if allowed and not credentials_match(given, allowed):
                    return unauthorized()
                try:
                    return await handler(limit_body(request, max_body_bytes))
                except HTTPException as exc:
                    headers = {**(exc.headers or {}), **({"Connection": "close"} if exc.status_code == 413 else {})}
                    return AsciiJSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)
                except RequestValidationError as exc:
                    return AsciiJSONResponse({"detail": validation_errors(exc)}, status_code=422)

            return guarded

    return GuardedRoute

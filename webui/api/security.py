"""HTTP Basic authentication of the API routes (``--api-auth user:pass``), checked before the body is read.

The check lives in the route class rather than in a FastAPI dependency because FastAPI reads and parses the
request body before it solves dependencies: a dependency would let anyone without a password make the server
read and parse a body of up to ``ApiLimits.max_body_bytes``. It is not an ASGI middleware either because the API
is mounted on Gradio's app after that app has started, when middleware can no longer be added.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Coroutine, Sequence
from secrets import compare_digest
from typing import Any

from fastapi import Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

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


def unauthorized() -> JSONResponse:
    return JSONResponse(
        {"detail": "Incorrect username or password"}, status_code=401, headers={"WWW-Authenticate": "Basic"}
    )


def guarded_route_class(credentials: Credentials | None) -> type[APIRoute]:
    """An ``APIRoute`` class whose routes answer 401 unless the request carries one of ``credentials``.

    With ``credentials`` None or empty the routes are open (plain ``APIRoute``).
    """
    if not credentials:
        return APIRoute
    allowed = tuple((str(u), str(p)) for u, p in credentials)

    class GuardedRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def guarded(request: Request) -> Response:
                if not credentials_match(parse_basic_authorization(request.headers.get("authorization")), allowed):
                    return unauthorized()
                return await handler(request)

            return guarded

    return GuardedRoute

"""A tiny local stand-in for the Hugging Face hub, so that downloads are tested for real without internet.

It answers what huggingface_hub and ``webui.models.download`` ask (huggingface_hub 2.x,
``get_hf_file_metadata`` and a plain GET):

- ``HEAD /{org}/{name}/resolve/{revision}/{file}``: 200 with ``X-Repo-Commit`` (40 hex digits), ``ETag``
  and ``Content-Length``; or, with ``lfs_redirect``, a 302 to another host name (``localhost`` instead of
  ``127.0.0.1``, like the hub's CDN) carrying ``X-Linked-Size`` and ``X-Linked-Etag``, as the real hub
  answers for large (LFS/xet) files.
- ``GET`` of the same address (or of the redirect target): the bytes, sent in chunks with a pause after
  each, so that progress and cancel can be watched.

Every request is counted in ``requests``; ``fail_with`` makes every request answer that status code.
Use :func:`fake_hub` (a context manager) or the ``hub`` fixture pattern in the tests.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class FakeHub:
    """The server's state; ``url`` is set once it runs."""

    files: dict[tuple[str, str], bytes] = field(default_factory=dict)  # (repo, file) -> content
    chunk_size: int = 64 * 1024
    delay: float = 0.0  # seconds to wait after each chunk of a GET
    fail_with: int | None = None  # answer every request with this HTTP status
    lfs_redirect: bool = False
    truncate_at: int | None = None  # a GET sends only this many bytes, then drops the connection
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path)
    url: str = ""
    port: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, repo: str, file: str, data: bytes) -> None:
        self.files[(repo, file)] = data

    def count(self, method: str | None = None) -> int:
        with self._lock:
            return sum(1 for m, _ in self.requests if method is None or m == method)

    def _record(self, method: str, path: str) -> None:
        with self._lock:
            self.requests.append((method, path))


def etag_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet: the tests read hub.requests
            pass

        def _find(self) -> bytes | None:
            path = self.path.split("?", 1)[0]
            if path.startswith("/cdn/"):
                wanted = path[len("/cdn/") :]
                return next((d for d in hub.files.values() if etag_of(d) == wanted), None)
            parts = path.strip("/").split("/")
            if len(parts) < 5 or parts[2] != "resolve":
                return None
            repo, file = "/".join(parts[:2]), "/".join(parts[4:])
            return hub.files.get((repo, file))

        def _fail(self, status: int) -> None:
            body = f"error {status}".encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_HEAD(self) -> None:
            hub._record("HEAD", self.path)
            if hub.fail_with is not None:
                return self._fail(hub.fail_with)
            data = self._find()
            if data is None:
                return self._fail(404)
            etag = etag_of(data)
            if hub.lfs_redirect and not self.path.startswith("/cdn/"):
                self.send_response(302)
                self.send_header("Location", f"http://localhost:{hub.port}/cdn/{etag}")
                self.send_header("X-Linked-Size", str(len(data)))
                self.send_header("X-Linked-Etag", f'"{etag}"')
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", '"small-pointer-etag"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{etag}"')
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()

        def do_GET(self) -> None:
            hub._record("GET", self.path)
            if hub.fail_with is not None:
                return self._fail(hub.fail_with)
            data = self._find()
            if data is None:
                return self._fail(404)
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            sent = data if hub.truncate_at is None else data[: hub.truncate_at]
            self.close_connection = hub.truncate_at is not None
            try:
                for start in range(0, len(sent), hub.chunk_size):
                    self.wfile.write(sent[start : start + hub.chunk_size])
                    self.wfile.flush()
                    if hub.delay:
                        time.sleep(hub.delay)
            except (BrokenPipeError, ConnectionResetError):  # the client cancelled
                pass

    return Handler


@contextmanager
def fake_hub(**kwargs: object) -> Iterator[FakeHub]:
    """Serve a :class:`FakeHub` on 127.0.0.1 (a free port) in a thread while the block runs."""
    hub = FakeHub(**kwargs)  # type: ignore[arg-type]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    server.daemon_threads = True
    hub.port = server.server_address[1]
    hub.url = f"http://127.0.0.1:{hub.port}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def use_hub(monkeypatch, endpoint: str, home: Path) -> Path:
    """Point huggingface_hub at ``endpoint`` with a private cache under ``home``; returns the cache folder.

    The tests run with ``HF_HUB_OFFLINE=1`` (tests/conftest.py), which huggingface_hub reads once, at import,
    into ``constants.HF_HUB_OFFLINE``; so the constant is patched along with the environment (both restored
    after the test). ``HF_ENDPOINT`` is read by ``webui.models.download`` when a download starts.
    """
    from huggingface_hub import constants

    cache = home / "hub"
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", True)  # no real login token to the stand-in
    return cache

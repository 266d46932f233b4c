"""``callback_url``: when a queue API job finishes, its images are POSTed there, as agent-scheduler does:
``multipart/form-data`` with the fields ``task_id`` and ``status`` and one ``files`` part per PNG.

Uploads run on their own thread, so a slow or dead receiver never holds up the queue. A failed attempt
(connection error, HTTP 5xx or 429) is retried with exponential backoff; after the last one the failure is
logged and the callback dropped. Other 4xx answers are not retried.

A callback URL is checked when the job is queued and again before every attempt (the name may resolve
elsewhere by then): it must be http(s), and no address of its host may be this machine (loopback, the
machine's own addresses, "unspecified"), link-local (169.254.0.0/16, fe80::/10: cloud metadata services
live there) or a known metadata address, unless the server was started with ``--allow-local-callbacks``.
Otherwise anyone who may queue a job could make the server send requests to services only it can reach.

With a queue database (:meth:`CallbackSender.resume`), each callback is written to it before it is first sent and
marked when it got its answer or was given up, so a callback not yet delivered when the app stops or crashes is
sent at the next start, as is the callback of a job that finished just before (from the images it saved). A
receiver gets each finished job's callback once; only a crash between its answer and that mark sends it again
(``task_id`` tells the two apart).
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import logging
import queue
import socket
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from webui.pipeline.outputs import png_bytes_info
from webui.queue.store import QueueStore, StoredCallback, StoredJob

if TYPE_CHECKING:
    from webui.jobs import Job

logger = logging.getLogger(__name__)

METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "100.100.100.200", "fd00:ec2::254", "169.254.170.2")
)
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class CallbackRefused(ValueError):
    """The callback URL may not be used (the message says why)."""


def own_addresses() -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """This machine's addresses as far as its host name and a routing probe tell (best effort)."""
    found: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            found.add(ipaddress.ip_address(info[4][0]))
    except OSError:
        pass
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))  # sends nothing; only picks the outgoing interface
            found.add(ipaddress.ip_address(probe.getsockname()[0]))
        except OSError:
            pass
    return found


def check_callback_url(
    url: str,
    *,
    allow_local: bool = False,
    own: Iterable[ipaddress.IPv4Address | ipaddress.IPv6Address] = (),
    resolve: Callable[[str], list[str]] | None = None,
) -> None:
    """Raise :class:`CallbackRefused` unless ``url`` may receive callbacks (see the module docstring)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CallbackRefused(f"callback_url must be an http:// or https:// URL with a host, got {url!r}")
    if allow_local:
        return
    try:
        addresses = (resolve or _resolve)(parts.hostname)
    except OSError as err:
        raise CallbackRefused(f"callback_url host {parts.hostname!r} cannot be resolved: {err}") from None
    mine = set(own)
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if address.is_loopback or address.is_unspecified or address in mine:
            why = "this server itself"
        elif address.is_link_local or address in METADATA_ADDRESSES:
            why = "a link-local or cloud metadata address"
        else:
            continue
        raise CallbackRefused(
            f"callback_url {url!r} points at {why} ({address}); start the server with --allow-local-callbacks "
            "to allow that"
        )


def _resolve(host: str) -> list[str]:
    return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, None)})


@dataclass(frozen=True)
class Upload:
    """One callback: where, and what (file name, PNG bytes)."""

    url: str
    task_id: str
    status: str
    files: tuple[tuple[str, bytes], ...]


def job_upload(url: str, job: Job) -> Upload:
    """The callback of a finished job: its images as PNG with their infotexts (``status`` as agent-scheduler)."""
    result = job._result
    files: list[tuple[str, bytes]] = []
    if result is not None:
        for i, image in enumerate(result.images):
            text = result.infotexts[i] if i < len(result.infotexts) else None
            buffer = io.BytesIO()
            image.save(buffer, format="PNG", pnginfo=png_bytes_info(text))
            name = result.paths[i].name if i < len(result.paths) else f"{job.id}-{i}.png"
            files.append((name, buffer.getvalue()))
    return Upload(url, job.id, job.state.stored, tuple(files))


def stored_job_upload(row: StoredJob) -> Upload:
    """The callback of a job that finished in an earlier run, from the images it saved (those still on disk)."""
    paths = [Path(p) for p in (row.result or {}).get("images", [])]
    files = tuple((path.name, path.read_bytes()) for path in paths if path.is_file())
    return Upload(str(row.meta["callback_url"]), row.id, row.state, files)


def multipart_body(fields: dict[str, str], files: Iterable[tuple[str, bytes]]) -> tuple[bytes, str]:
    """``multipart/form-data`` of text ``fields`` and ``files`` parts (all named ``files``, image/png)."""
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for filename, data in files:
        safe = filename.replace('"', "_").replace("\r", "_").replace("\n", "_")
        out.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{safe}"\r\n'
            "Content-Type: image/png\r\n\r\n".encode()
        )
        out.write(data)
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


class CallbackSender:
    """Sends :class:`Upload` s on one background thread, with retries; never blocks the caller.

    Args:
        allow_local: skip the address check (``--allow-local-callbacks``).
        attempts: tries per callback; ``backoff`` seconds before the second, doubling after.
        timeout: seconds per attempt.
    """

    def __init__(self, *, allow_local: bool = False, attempts: int = 4, backoff: float = 1.0, timeout: float = 10.0):
        self.allow_local = allow_local
        self.attempts = attempts
        self.backoff = backoff
        self.timeout = timeout
        self._own = own_addresses()
        self._pending: queue.Queue[Upload | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()  # set by close(): waits between retries end at once
        self._store: QueueStore | None = None  # where callbacks are kept until answered (see resume)

    def check(self, url: str) -> None:
        check_callback_url(url, allow_local=self.allow_local, own=self._own)

    def resume(self, store: QueueStore) -> None:
        """Keep callbacks in ``store`` from now on, and send those an earlier run left unsent: the recorded ones
        not yet answered, then those of jobs that finished without one recorded. Call it before the queue runs."""
        self._store = store
        for callback in store.pending_callbacks():
            self.send(Upload(callback.url, callback.job_id, callback.status, callback.files))
        for row in store.finished_without_callback():
            logger.warning("callback for job %s was not sent before the app stopped; sending it now", row.id)
            self._record_and_send(stored_job_upload(row))

    def job_finished(self, job: Job) -> None:
        """A queue listener: queue the job's callback if it has a ``callback_url``."""
        url = job.meta.get("callback_url")
        if url:
            self._record_and_send(job_upload(url, job))

    def _record_and_send(self, upload: Upload) -> None:
        if self._store is not None:
            self._store.add_callback(StoredCallback(upload.task_id, upload.url, upload.status, upload.files))
        self.send(upload)

    def send(self, upload: Upload) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="webui-callbacks", daemon=True)
                self._thread.start()
        self._pending.put(upload)

    def close(self, timeout: float = 5.0) -> None:
        """Stop after the upload in progress (callbacks still waiting for a retry are dropped, logged)."""
        self._stop.set()
        self._pending.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def _work(self) -> None:
        while (upload := self._pending.get()) is not None:
            delivered = self._deliver(upload)
            if self._store is None or (self._stop.is_set() and not delivered):
                continue  # stopped before an answer: it stays pending, for the next start
            try:
                self._store.end_callback(upload.task_id, delivered)
            except sqlite3.Error as err:  # the store closed under a slow last upload: it is sent again next start
                logger.warning("callback for job %s: could not mark it sent: %s", upload.task_id, err)

    def _deliver(self, upload: Upload) -> bool:
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            try:
                self.check(upload.url)
                status = self._post(upload)
            except CallbackRefused as err:
                logger.error("callback for job %s refused: %s", upload.task_id, err)
                return False
            except OSError as err:
                problem, retry = f"{type(err).__name__}: {err}", True
            else:
                if status < 400:
                    return True
                problem, retry = f"HTTP {status}", status in RETRY_STATUSES
            if not retry or attempt == self.attempts:
                logger.error(
                    "callback for job %s to %s failed after %d attempt(s): %s",
                    upload.task_id,
                    upload.url,
                    attempt,
                    problem,
                )
                return False
            logger.warning("callback for job %s: %s; retrying in %.1f s", upload.task_id, problem, delay)
            if self._stop.wait(delay):
                logger.error("callback for job %s dropped: the server is stopping", upload.task_id)
                return False
            delay *= 2
        return False

    def _post(self, upload: Upload) -> int:
        parts = urlsplit(upload.url)
        body, content_type = multipart_body({"task_id": upload.task_id, "status": upload.status}, upload.files)
        kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        connection = kind(parts.netloc, timeout=self.timeout)
        try:
            path = parts.path or "/"
            connection.request(
                "POST", path + (f"?{parts.query}" if parts.query else ""), body, {"Content-Type": content_type}
            )
            response = connection.getresponse()
            response.read()
            return response.status
        finally:
            connection.close()

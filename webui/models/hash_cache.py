"""A model file's sha256, computed once: a small JSON cache and a background hasher.

Reading a 4 GB checkpoint for its sha256 takes about 10 s; doing that on every load made switching
back to a model slow. Like AUTOMATIC1111's ``cache.json``, the hash is kept by absolute path and is
valid while the file's size and modification time (nanoseconds) are unchanged. A file that was moved
or renamed keeps its hash when an entry with the same file name, size and mtime exists (``mv`` keeps
both); any edit changes the mtime, so the file is hashed again.

A file not in the cache is hashed by :class:`BackgroundHasher` on its own thread while the model
loads and generates: the first image never waits for it (its infotext lacks ``Model hash`` until
the hash is known, as A1111's does for an unhashed model).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from webui.models.hashing import file_sha256

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1


@dataclass(frozen=True)
class FileStamp:
    """What identifies one version of a file without reading it."""

    path: str  # absolute
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileStamp:
        resolved = Path(path).resolve()
        stat = resolved.stat()
        return cls(str(resolved), stat.st_size, stat.st_mtime_ns)


class HashCache:
    """sha256 of files by path, valid while size and mtime match; thread-safe.

    Args:
        file: the JSON file it is kept in (read at construction, rewritten atomically after every new
            hash); None keeps it in memory only.
    """

    def __init__(self, file: Path | None = None):
        self.file = Path(file) if file is not None else None
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, int | str]] = self._read()

    def _read(self) -> dict[str, dict[str, int | str]]:
        if self.file is None or not self.file.is_file():
            return {}
        try:
            data = json.loads(self.file.read_text(encoding="utf-8"))
            entries = data["sha256"] if data.get("format") == CACHE_FORMAT else {}
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            logger.warning("ignoring the unreadable hash cache %s: %s", self.file, exc)
            return {}
        return {
            path: entry
            for path, entry in entries.items()
            if isinstance(entry, dict) and {"size", "mtime_ns", "sha256"} <= entry.keys()
        }

    def get(self, path: Path) -> str | None:
        """The cached sha256 of ``path`` if it is still valid (never reads the file); None otherwise."""
        try:
            stamp = FileStamp.of(path)
        except OSError:
            return None
        with self._lock:
            entry = self._entries.get(stamp.path)
            if entry is not None and _matches(entry, stamp):
                return str(entry["sha256"])
            name = Path(stamp.path).name
            for other, entry in self._entries.items():  # moved or renamed: same name, size and mtime
                if Path(other).name == name and _matches(entry, stamp):
                    self._store_locked(stamp, str(entry["sha256"]))
                    return str(entry["sha256"])
        return None

    def sha256(self, path: Path) -> str:
        """The sha256 of ``path``: from the cache, else read (the whole file) and stored."""
        cached = self.get(path)
        if cached is not None:
            return cached
        stamp = FileStamp.of(path)
        digest = file_sha256(Path(stamp.path))
        if FileStamp.of(path) != stamp:  # written to while it was read: the digest is of no one version
            raise OSError(f"{path} changed while it was hashed")
        with self._lock:
            self._store_locked(stamp, digest)
        return digest

    def _store_locked(self, stamp: FileStamp, digest: str) -> None:
        self._entries[stamp.path] = {"size": stamp.size, "mtime_ns": stamp.mtime_ns, "sha256": digest}
        if self.file is None:
            return
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.file.with_name(f"{self.file.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"format": CACHE_FORMAT, "sha256": self._entries}, indent=1), encoding="utf-8")
            tmp.replace(self.file)  # atomic: a reader never sees half a file
        except OSError as exc:  # a read-only folder: the hashes still live in memory
            logger.warning("could not write the hash cache %s: %s", self.file, exc)


def _matches(entry: dict[str, int | str], stamp: FileStamp) -> bool:
    return entry["size"] == stamp.size and entry["mtime_ns"] == stamp.mtime_ns


HashCallback = Callable[[str], None]


class BackgroundHasher:
    """Hashes files on one daemon thread, started on the first request (never at import).

    One thread, one file at a time: two multi-GB reads at once would only compete for the disk.
    """

    def __init__(self, cache: HashCache):
        self.cache = cache
        self._queue: queue.Queue[tuple[Path, HashCallback]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()

    def request(self, path: Path, on_done: HashCallback) -> str | None:
        """The cached hash of ``path`` at once, or None after queueing it; ``on_done(sha256)`` is then
        called from the hashing thread (not called if the file cannot be read)."""
        cached = self.cache.get(path)
        if cached is not None:
            return cached
        with self._lock:
            self._idle.clear()
            self._queue.put((Path(path), on_done))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="model-hasher", daemon=True)
                self._thread.start()
        return None

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every queued file is hashed; False on timeout."""
        return self._idle.wait(timeout)

    def _work(self) -> None:
        while True:
            with self._lock:
                if self._queue.empty():
                    self._idle.set()
                    self._thread = None
                    return
                path, on_done = self._queue.get()
            try:
                digest = self.cache.sha256(path)
            except OSError as exc:
                logger.warning("could not hash %s: %s", path, exc)
                continue
            try:
                on_done(digest)
            except Exception:  # noqa: BLE001 - a failing callback must not stop the other files' hashing
                logger.exception("hash callback for %s failed", path)

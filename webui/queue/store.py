"""The durable side of the queue: one SQLite table of jobs (stdlib ``sqlite3``, WAL mode, one writer).

A row is a job: its request (versioned JSON, :mod:`webui.queue.codec`), state, order, timestamps, owner,
output paths and error. States are AUTOMATIC1111 agent-scheduler's: ``pending``, ``running``, ``done``,
``failed``, ``interrupted``. Every transition is one SQL statement committed before the caller goes on, so
what is on disk is never behind what the app has done with a job (WAL with ``synchronous=NORMAL``: a
commit survives a killed process; only a power cut may lose the last ones).

:meth:`QueueStore.open` repairs what a crash left: a job that was ``running`` becomes ``pending`` again at
its old place (it runs again from the start), so pending jobs keep their original order. A file that is not
a readable queue database is moved aside (``queue.sqlite3.broken-<time>``) with a log line saying so, and
the queue starts empty: it is never silently overwritten. ``QueueStore.memory()`` is the same store in
memory, for a service without ``--queue-db``.

One connection, guarded by one lock, does all reads and writes of this process: SQLite allows one writer
at a time anyway, and the lock makes each method atomic for the threads of the app.
"""

from __future__ import annotations

import base64
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

logger = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 1
PENDING, RUNNING, DONE, FAILED, INTERRUPTED = "pending", "running", "done", "failed", "interrupted"
STATES: Final = (PENDING, RUNNING, DONE, FAILED, INTERRUPTED)
FINISHED: Final = (DONE, FAILED, INTERRUPTED)
DEFAULT_HISTORY = 1000

_COLUMNS: Final = (
    "seq",
    "id",
    "kind",
    "state",
    "priority",
    "request",
    "model_name",
    "save",
    "owner",
    "meta",
    "created_at",
    "started_at",
    "finished_at",
    "error",
    "result",
    "attempts",
)
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'running', 'done', 'failed', 'interrupted')),
    priority REAL NOT NULL,
    request TEXT,
    model_name TEXT,
    save INTEGER NOT NULL,
    owner TEXT,
    meta TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    error TEXT,
    result TEXT,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, priority, seq);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS callbacks (
    job_id TEXT PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'dropped')),
    url TEXT NOT NULL,
    status TEXT NOT NULL,
    files TEXT NOT NULL
);
"""
# ``callbacks``: the callback of each finished job that has a ``callback_url``, written before it is first sent
# and marked delivered (or dropped: refused, or failed every retry) after; a ``pending`` one is sent again at the
# next start. ``files`` is a JSON list of ``[name, base64 PNG]`` (the upload itself: a job may save no file).
# Added to schema 1 by ``CREATE TABLE IF NOT EXISTS``, so an older queue database simply gains it.


class BrokenQueueDatabase(RuntimeError):
    """The file is not a queue database this version can use (the message says why)."""


@dataclass
class StoredJob:
    """One row. ``request`` is the codec's JSON (None: the request could not be stored, see ``meta``);
    ``result`` holds ``images`` (paths), ``infotexts`` and ``seeds`` once the job finished."""

    id: str
    kind: str
    state: str
    priority: float
    request: str | None
    model_name: str | None = None
    save: bool = True
    owner: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    result: dict[str, Any] | None = None
    attempts: int = 0
    seq: int | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


@dataclass(frozen=True)
class StoredCallback:
    """A finished job's callback: where, the job's status, and the files (name, PNG bytes)."""

    job_id: str
    url: str
    status: str
    files: tuple[tuple[str, bytes], ...]


class QueueStore:
    """The jobs table. Use :meth:`open` (a file, repaired and checked) or :meth:`memory`.

    Args:
        path: the database file, or ``":memory:"``.
    """

    def __init__(self, path: str | Path):
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        try:
            self._setup()
        except BaseException:
            self._db.close()
            raise

    @classmethod
    def memory(cls) -> QueueStore:
        return cls(":memory:")

    @classmethod
    def open(cls, path: str | Path) -> QueueStore:
        """The store in ``path`` (created if missing), with crashed ``running`` jobs back to ``pending``.

        A file that is no usable queue database is moved aside and an empty store started, with an error
        logged that names both files.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            store = cls(path)
        except (sqlite3.DatabaseError, BrokenQueueDatabase) as err:
            aside = path.with_name(f"{path.name}.broken-{time.strftime('%Y%m%d-%H%M%S')}")
            for suffix in ("", "-wal", "-shm"):
                source = Path(f"{path}{suffix}")
                if source.exists():
                    source.rename(f"{aside}{suffix}")
            logger.error(
                "error: the queue database %s cannot be used (%s); moved it to %s and started with an empty queue",
                path,
                err,
                aside,
            )
            store = cls(path)
        store.recover()
        return store

    def _setup(self) -> None:
        db = self._db
        # Read-only checks first, so that a file that is not ours is not changed before it is moved aside.
        # "file is not a database" (garbage) surfaces here, on the first statement that reads the header.
        check = db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise BrokenQueueDatabase(f"integrity check failed: {check}")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if version not in (0, SCHEMA_VERSION) or (version == 0 and tables - {"sqlite_sequence"}):
            raise BrokenQueueDatabase(f"not a queue database of this app (schema {version}, tables {sorted(tables)})")
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if self.path != ":memory:" and str(mode).lower() != "wal":
            raise BrokenQueueDatabase(f"cannot use write-ahead logging (journal mode {mode})")
        db.execute("PRAGMA synchronous=NORMAL")
        older = "jobs" in tables and "callbacks" not in tables  # a database from before durable callbacks
        db.executescript(_SCHEMA)
        if older:  # its finished jobs' callbacks were sent by the app that ran them: never send them again
            db.execute(
                "INSERT INTO callbacks (job_id, state, url, status, files) SELECT id, 'delivered',"
                " json_extract(meta, '$.callback_url'), state, '[]' FROM jobs"
                " WHERE state IN ('done', 'failed', 'interrupted') AND json_extract(meta, '$.callback_url') IS NOT NULL"
            )
        columns = tuple(row[1] for row in db.execute("PRAGMA table_info(jobs)"))
        if columns != _COLUMNS:
            raise BrokenQueueDatabase(f"the jobs table has columns {columns}")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- writes ------------------------------------------------------------------------------------

    def add(self, job: StoredJob) -> int:
        """Insert a new job; returns its sequence number (the order of submission)."""
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO jobs (id, kind, state, priority, request, model_name, save, owner, meta, created_at,"
                " started_at, finished_at, error, result, attempts) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    job.id,
                    job.kind,
                    job.state,
                    job.priority,
                    job.request,
                    job.model_name,
                    int(job.save),
                    job.owner,
                    json.dumps(job.meta),
                    job.created_at,
                    job.started_at,
                    job.finished_at,
                    job.error,
                    None if job.result is None else json.dumps(job.result),
                    job.attempts,
                ),
            )
            job.seq = cursor.lastrowid
            return int(cursor.lastrowid or 0)

    def mark_running(self, job_id: str, started_at: float) -> None:
        self._write(
            "UPDATE jobs SET state = 'running', started_at = ?, attempts = attempts + 1 WHERE id = ?",
            (started_at, job_id),
        )

    def mark_pending(self, job_id: str) -> None:
        """Back in line at its old place (its worker was lost)."""
        self._write("UPDATE jobs SET state = 'pending', started_at = NULL WHERE id = ?", (job_id,))

    def finish(
        self, job_id: str, state: str, finished_at: float, error: str | None, result: dict[str, Any] | None
    ) -> None:
        if state not in FINISHED:
            raise ValueError(f"{state!r} is not a finished state ({', '.join(FINISHED)})")
        self._write(
            "UPDATE jobs SET state = ?, finished_at = ?, error = ?, result = ? WHERE id = ?",
            (state, finished_at, error, None if result is None else json.dumps(result), job_id),
        )

    def set_priorities(self, priorities: Iterable[tuple[str, float]]) -> None:
        """Give jobs new places in the queue (lower runs first), in one transaction."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("UPDATE jobs SET priority = ? WHERE id = ?", [(p, i) for i, p in priorities])
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def delete(self, job_ids: Sequence[str]) -> None:
        with self._lock:
            self._db.executemany("DELETE FROM jobs WHERE id = ?", [(i,) for i in job_ids])

    def prune(self, keep: int) -> int:
        """Delete all but the ``keep`` most recently finished jobs; returns how many went."""
        with self._lock:
            cursor = self._db.execute(
                "DELETE FROM jobs WHERE state IN ('done', 'failed', 'interrupted') AND seq NOT IN ("
                " SELECT seq FROM jobs WHERE state IN ('done', 'failed', 'interrupted')"
                " ORDER BY finished_at DESC, seq DESC LIMIT ?)",
                (max(0, keep),),
            )
            self._db.execute("DELETE FROM callbacks WHERE state != 'pending' AND job_id NOT IN (SELECT id FROM jobs)")
            return cursor.rowcount

    def recover(self) -> list[str]:
        """After a crash: the jobs left ``running`` are ``pending`` again (same place); returns their ids."""
        with self._lock:
            ids = [row[0] for row in self._db.execute("SELECT id FROM jobs WHERE state = 'running' ORDER BY seq")]
            self._db.execute("UPDATE jobs SET state = 'pending', started_at = NULL WHERE state = 'running'")
        if ids:
            logger.warning("queue: %d job(s) were running when the app stopped; they run again: %s", len(ids), ids)
        return ids

    def add_callback(self, callback: StoredCallback) -> None:
        """Record a finished job's callback as ``pending`` (before it is first sent)."""
        files = json.dumps([[name, base64.b64encode(data).decode("ascii")] for name, data in callback.files])
        self._write(
            "INSERT OR REPLACE INTO callbacks (job_id, state, url, status, files) VALUES (?, 'pending', ?, ?, ?)",
            (callback.job_id, callback.url, callback.status, files),
        )

    def end_callback(self, job_id: str, delivered: bool) -> None:
        """The callback got its answer (``delivered``) or was given up; its files are not kept."""
        state = "delivered" if delivered else "dropped"
        self._write("UPDATE callbacks SET state = ?, files = '[]' WHERE job_id = ?", (state, job_id))

    def pending_callbacks(self) -> list[StoredCallback]:
        """Callbacks recorded but not yet answered, oldest job first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT c.job_id, c.url, c.status, c.files FROM callbacks c LEFT JOIN jobs j ON j.id = c.job_id"
                " WHERE c.state = 'pending' ORDER BY j.seq"
            ).fetchall()
        return [
            StoredCallback(job_id, url, status, tuple((n, base64.b64decode(d)) for n, d in json.loads(files)))
            for job_id, url, status, files in rows
        ]

    def finished_without_callback(self) -> list[StoredJob]:
        """Finished jobs with a ``callback_url`` whose callback was never recorded (the app stopped between the
        job's end and its callback), oldest first."""
        return self._select(
            "WHERE state IN ('done', 'failed', 'interrupted') AND json_extract(meta, '$.callback_url') IS NOT NULL"
            " AND id NOT IN (SELECT job_id FROM callbacks) ORDER BY seq",
            (),
        )

    def set_setting(self, key: str, value: Any) -> None:
        self._write("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def _write(self, sql: str, args: tuple[Any, ...]) -> None:
        with self._lock:
            self._db.execute(sql, args)

    # --- reads -------------------------------------------------------------------------------------

    def setting(self, key: str, default: Any = None) -> Any:
        with self._lock:
            row = self._db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def get(self, job_id: str) -> StoredJob | None:
        return next(iter(self._select("WHERE id = ?", (job_id,))), None)

    def pending(self) -> list[StoredJob]:
        """Pending jobs, next first."""
        return self._select("WHERE state = 'pending' ORDER BY priority, seq", ())

    def history(
        self, limit: int = 20, offset: int = 0, owner: str | None = None, states: Sequence[str] = FINISHED
    ) -> list[StoredJob]:
        """Finished jobs (or those in ``states``), latest first; only ``owner``'s when given."""
        marks = ",".join("?" * len(states))
        where = f"WHERE state IN ({marks})" + (" AND owner = ?" if owner is not None else "")
        args = (*states, *((owner,) if owner is not None else ()))
        return self._select(f"{where} ORDER BY finished_at DESC, seq DESC LIMIT ? OFFSET ?", (*args, limit, offset))

    def count(self, states: Sequence[str], owner: str | None = None) -> int:
        marks = ",".join("?" * len(states))
        sql = f"SELECT COUNT(*) FROM jobs WHERE state IN ({marks})" + (" AND owner = ?" if owner is not None else "")
        with self._lock:
            return int(self._db.execute(sql, (*states, *((owner,) if owner is not None else ()))).fetchone()[0])

    def _select(self, where: str, args: tuple[Any, ...]) -> list[StoredJob]:
        with self._lock:
            rows = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs {where}", args).fetchall()
        return [_row_job(row) for row in rows]


def _row_job(row: Sequence[Any]) -> StoredJob:
    values = dict(zip(_COLUMNS, row, strict=True))
    values["save"] = bool(values["save"])
    values["meta"] = json.loads(values["meta"]) if values["meta"] else {}
    values["result"] = json.loads(values["result"]) if values["result"] else None
    return StoredJob(**values)

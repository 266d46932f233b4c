"""Hub entries of ``models.yaml`` (``repo`` + ``file`` on Hugging Face): said before, fetched once, cancellable.

Three steps, all plain data, none of them holding a lock of the app:

1. :func:`cached_model_file` answers from the disk alone whether the file is there already.
2. :func:`plan_download` describes what a download would do before it starts (:class:`DownloadPlan`:
   "downloads 4.3 GB from the Hugging Face hub (repo/file) into ~/.cache/huggingface/hub"); the size
   comes from the hub's file metadata (one HEAD request), or is "unknown" when the hub cannot be asked.
3. :func:`fetch_model_file` downloads it: progress (:class:`DownloadProgress`: bytes done/total, speed,
   ETA) goes to a callback about four times a second and to the log every few seconds; a
   ``threading.Event`` cancels it at the next received chunk (within a second while data flows; on a
   stalled connection at the latest when the 10 s read timeout fires).

Exactly one attempt: one metadata request, then one GET; nothing is retried (huggingface_hub's
``hf_hub_download`` retries a failed metadata request five times with back-off, about 25 s offline, and
resumes broken transfers five times, each with log lines; here a failure is one :class:`DownloadError`
whose message says what failed, why, and the exact fix, logged as one line without traceback).
huggingface_hub still provides the URL, the metadata request (with its login token and proxy settings),
offline mode (``HF_HUB_OFFLINE``) and the cache lookup; the file is written into huggingface_hub's own
cache layout (``models--org--name/blobs``, ``snapshots/<commit>/``, ``refs/``), so that
``try_to_load_from_cache`` and ``hf cache scan`` see it like any other download. A cancelled or failed
download leaves no partial file: the bytes go to ``blobs/<etag>.<random>.incomplete``, removed on any
failure (as huggingface_hub itself does since 1.x; nothing is resumed).

``HF_ENDPOINT`` (a hub mirror) is read when a download starts, so it can be set after import.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

from webui.models.errors import CheckpointError
from webui.models.registry import ModelEntry
from webui.models.text_encoder import TOKENIZER_FILES

logger = logging.getLogger(__name__)

HUB = "the Hugging Face hub"
METADATA_TIMEOUT = 10.0  # seconds for the HEAD request (huggingface_hub's default)
READ_TIMEOUT = 10.0  # seconds without a byte before a transfer counts as broken
CALLBACK_EVERY = 0.25  # seconds between progress callbacks
LOG_EVERY = 5.0  # seconds between progress lines in the log
REQUIRED_TOKENIZER_FILES = ("vocab.json", "merges.txt")

ProgressCallback = Callable[["DownloadProgress"], None]


class DownloadError(CheckpointError):
    """A hub model could not be downloaded (no network, offline mode, unknown repo or file, disk full)."""


class DownloadCancelled(DownloadError):
    """The download was cancelled through its ``cancel`` event; nothing was kept."""


class DownloadRequiredError(DownloadError):
    """The model's file is not on disk and the caller asked not to download it."""


def human_size(n: int | None) -> str:
    """``4265380512`` -> ``"4.3 GB"`` (decimal units, as the hub shows sizes)."""
    if n is None:
        return "size unknown"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _home_relative(path: Path) -> str:
    """``/home/me/.cache/x`` -> ``~/.cache/x`` for messages."""
    try:
        return "~/" + str(path.relative_to(Path.home()))
    except ValueError:
        return str(path)


@dataclass(frozen=True)
class DownloadPlan:
    """What selecting a hub model will download, known before anything is downloaded."""

    model: str
    repo: str
    file: str
    revision: str
    url: str  # the file's address on the hub (or on HF_ENDPOINT)
    cache_dir: Path  # the Hugging Face cache it goes into
    size: int | None  # bytes, from the hub's metadata; None when the hub could not be asked
    size_note: str | None = None  # why the size is unknown ("HF_HUB_OFFLINE is set", "cannot be reached: ...")
    tokenizer: str | None = None  # hub id of a tokenizer fetched too (a few small files); None if not needed

    @property
    def message(self) -> str:
        """One line for the UI: "downloads 4.3 GB from the Hugging Face hub (repo/file) into ~/.cache/..."."""
        size = human_size(self.size) if self.size is not None else "a file of unknown size"
        text = f"downloads {size} from {HUB} ({self.repo}/{self.file}) into {_home_relative(self.cache_dir)}"
        if self.tokenizer:
            text += f", and the tokenizer {self.tokenizer} (under 2 MB)"
        if self.size_note:
            text += f"; {self.size_note}"
        return text


@dataclass(frozen=True)
class DownloadProgress:
    """A snapshot of a running download, as the progress callback receives it."""

    model: str
    file: str
    done: int  # bytes received
    total: int | None  # bytes expected (None: the server did not say)
    elapsed: float  # seconds since the transfer started
    speed: float  # bytes per second, averaged over the last few seconds
    finished: bool = False

    @property
    def fraction(self) -> float | None:
        return min(1.0, self.done / self.total) if self.total else None

    @property
    def eta_seconds(self) -> float | None:
        if self.total is None or self.speed <= 0:
            return None
        return max(0.0, (self.total - self.done) / self.speed)

    @property
    def message(self) -> str:
        """``"1.2 GB of 4.3 GB (28%) · 25.3 MB/s · ETA 2:03"``."""
        parts = [f"{human_size(self.done)} of {human_size(self.total)}"]
        if self.fraction is not None:
            parts[0] += f" ({self.fraction:.0%})"
        parts.append(f"{human_size(int(self.speed))}/s")
        if self.finished:
            parts.append(f"done in {_clock(self.elapsed)}")
        elif self.eta_seconds is not None:
            parts.append(f"ETA {_clock(self.eta_seconds)}")
        return " · ".join(parts)


# --- where things are ---------------------------------------------------------------------------


def _hub():
    """huggingface_hub, imported when first needed (it is not needed to start the app)."""
    import huggingface_hub

    return huggingface_hub


def hub_endpoint(endpoint: str | None = None) -> str:
    """The hub address: ``endpoint``, else ``HF_ENDPOINT`` as set now, else huggingface_hub's default."""
    from huggingface_hub import constants

    return (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def hub_cache_dir(cache_dir: Path | str | None = None) -> Path:
    """The Hugging Face cache folder (``HF_HUB_CACHE``, by default ``~/.cache/huggingface/hub``)."""
    from huggingface_hub import constants

    return Path(cache_dir if cache_dir is not None else constants.HF_HUB_CACHE).expanduser()


def file_url(repo: str, file: str, revision: str | None = None, endpoint: str | None = None) -> str:
    return _hub().hf_hub_url(repo, file, revision=revision, endpoint=hub_endpoint(endpoint))


def _cached(repo: str, file: str, revision: str | None, cache_dir: Path | str | None) -> Path | None:
    found = _hub().try_to_load_from_cache(repo, file, cache_dir=str(hub_cache_dir(cache_dir)), revision=revision)
    return Path(found) if isinstance(found, str) else None


def cached_model_file(entry: ModelEntry, cache_dir: Path | str | None = None) -> Path | None:
    """The local weights of ``entry`` if they are on disk now (its ``path``, or the cached hub file); no network."""
    if entry.path is not None:
        return entry.path if entry.path.exists() else None
    assert entry.repo is not None and entry.file is not None  # the registry guarantees repo + file
    return _cached(entry.repo, entry.file, entry.revision, cache_dir)


def _hub_tokenizer(entry: ModelEntry) -> str | None:
    """The hub id of the entry's tokenizer (None: no tokenizer named, or a local folder)."""
    if not entry.tokenizer or Path(entry.tokenizer).is_absolute() or Path(entry.tokenizer).exists():
        return None
    return entry.tokenizer


def cached_tokenizer(hub_id: str, cache_dir: Path | str | None = None) -> Path | None:
    """The cached snapshot folder holding ``hub_id``'s tokenizer files, if they are on disk."""
    paths = [_cached(hub_id, name, None, cache_dir) for name in REQUIRED_TOKENIZER_FILES]
    if all(p is not None for p in paths) and paths[0].parent == paths[1].parent:  # type: ignore[union-attr]
        return paths[0].parent  # type: ignore[union-attr]
    return None


# --- describing -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Remote:
    url: str  # what to GET (the hub's redirect target for large files)
    commit: str
    etag: str
    size: int | None


class _Failure(Exception):
    """Why one request failed, in words (internal; turned into a DownloadError with the fix)."""

    def __init__(self, why: str, kind: str):
        super().__init__(why)
        self.why, self.kind = why, kind  # kind: offline, network, missing, auth, server, disk, broken, bad-endpoint


def _http_errors() -> tuple[type[Exception], ...]:
    """The transport errors of the HTTP library huggingface_hub uses (httpx2 since 2.x, httpx before)."""
    try:
        import httpx2 as http
    except ImportError:  # pragma: no cover - older huggingface_hub
        import httpx as http  # type: ignore[no-redef]
    return (http.TransportError,)


def _short(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text[:200]


def _classify(exc: Exception, url: str) -> _Failure:
    """One failed request -> what went wrong, in words."""
    from huggingface_hub import errors

    if isinstance(exc, errors.OfflineModeIsEnabled):
        return _Failure("HF_HUB_OFFLINE is set, so nothing is downloaded", "offline")
    if isinstance(exc, errors.GatedRepoError):
        return _Failure("the repository is gated: its terms must be accepted on the hub while logged in", "auth")
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(exc, errors.RevisionNotFoundError):
        return _Failure(f"{url}: the revision does not exist (HTTP {status})", "missing")
    if isinstance(exc, errors.RepositoryNotFoundError) or status in (401, 403):
        return _Failure(
            f"{url} answered HTTP {status}: the repository or revision does not exist, or it is "
            "private and needs a login",
            "auth",
        )
    if isinstance(exc, errors.RemoteEntryNotFoundError) or status == 404:
        return _Failure(f"{url} does not exist (HTTP 404)", "missing")
    if status is not None:
        return _Failure(f"{url} answered HTTP {status}", "server")
    if isinstance(exc, errors.FileMetadataError):
        return _Failure(f"{url} did not answer like a Hugging Face hub ({_short(exc)})", "bad-endpoint")
    if isinstance(exc, _http_errors()):
        host = urlsplit(url).netloc
        return _Failure(f"{HUB} ({host}) cannot be reached: {_short(exc)}", "network")
    return _Failure(f"{type(exc).__name__}: {_short(exc)}", "server")


def _metadata(repo: str, file: str, revision: str | None, endpoint: str | None) -> _Remote:
    """One HEAD request, no retry. Raises _Failure."""
    hub = _hub()
    url = file_url(repo, file, revision, endpoint)
    if hub.is_offline_mode():
        raise _Failure("HF_HUB_OFFLINE is set, so nothing is downloaded", "offline")
    try:
        meta = hub.get_hf_file_metadata(url, timeout=METADATA_TIMEOUT, retry_on_errors=False)
    except Exception as exc:  # noqa: BLE001 - huggingface_hub raises many kinds; each becomes one message
        raise _classify(exc, url) from None
    if meta.commit_hash is None or meta.etag is None:
        raise _Failure(
            f"{url} did not answer like a Hugging Face hub (no X-Repo-Commit or ETag header); "
            "check HF_ENDPOINT and proxy settings",
            "bad-endpoint",
        )
    return _Remote(url=meta.location or url, commit=meta.commit_hash, etag=meta.etag, size=meta.size)


def plan_download(
    entry: ModelEntry, cache_dir: Path | str | None = None, *, endpoint: str | None = None
) -> DownloadPlan | None:
    """What selecting ``entry`` would download; None when nothing is needed (a local path, or cached).

    Asks the hub for the file's size with one HEAD request (at most ``METADATA_TIMEOUT`` seconds); when
    that fails the plan says "size unknown" and why, and the download itself will report the error.
    """
    if entry.path is not None:
        return None
    assert entry.repo is not None and entry.file is not None
    tokenizer = _hub_tokenizer(entry)
    needs_tokenizer = tokenizer is not None and cached_tokenizer(tokenizer, cache_dir) is None
    if cached_model_file(entry, cache_dir) is not None and not needs_tokenizer:
        return None
    size: int | None = None
    note: str | None = None
    try:
        size = _metadata(entry.repo, entry.file, entry.revision, endpoint).size
        if size is None:
            note = "the hub did not give its size"
    except _Failure as failure:
        note = f"the size is unknown: {failure.why}"
    return DownloadPlan(
        model=entry.name,
        repo=entry.repo,
        file=entry.file,
        revision=entry.revision or "main",
        url=file_url(entry.repo, entry.file, entry.revision, endpoint),
        cache_dir=hub_cache_dir(cache_dir),
        size=size,
        size_note=note,
        tokenizer=tokenizer if needs_tokenizer else None,
    )


# --- downloading ----------------------------------------------------------------------------------


class _Meter:
    """Counts bytes, calls the progress callback now and then, logs a line every few seconds."""

    def __init__(self, model: str, file: str, total: int | None, callback: ProgressCallback | None):
        self.model, self.file, self.total, self.callback = model, file, total, callback
        self.done = 0
        self.start = time.monotonic()
        self._samples: list[tuple[float, int]] = [(self.start, 0)]  # (time, bytes) over the last seconds
        self._last_call = self._last_log = self.start

    def snapshot(self, finished: bool = False) -> DownloadProgress:
        now = time.monotonic()
        self._samples = [s for s in self._samples if now - s[0] <= 5.0] or [self._samples[-1]]
        t0, b0 = self._samples[0]
        speed = (self.done - b0) / (now - t0) if now > t0 else 0.0
        return DownloadProgress(self.model, self.file, self.done, self.total, now - self.start, speed, finished)

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._samples[-1][0] >= 0.2:
            self._samples.append((now, self.done))
        if now - self._last_call >= CALLBACK_EVERY:
            self._last_call = now
            self._emit(self.snapshot())
        if now - self._last_log >= LOG_EVERY:
            self._last_log = now
            logger.info("Downloading %s: %s", self.file, self.snapshot().message)

    def finish(self) -> DownloadProgress:
        final = self.snapshot(finished=True)
        self._emit(final)
        return final

    def _emit(self, progress: DownloadProgress) -> None:
        if self.callback is None:
            return
        try:
            self.callback(progress)
        except Exception:  # a broken progress display must not break (or misreport) the download
            logger.warning("the download progress callback failed", exc_info=True)


def _link_into_snapshot(blob: Path, pointer: Path) -> None:
    """``snapshots/<commit>/<file>`` -> ``../../blobs/<etag>``, as huggingface_hub lays out its cache."""
    pointer.parent.mkdir(parents=True, exist_ok=True)
    if pointer.exists() or pointer.is_symlink():
        pointer.unlink()
    try:
        os.symlink(os.path.relpath(blob, pointer.parent), pointer)
    except OSError:  # no symlinks (Windows without developer mode): huggingface_hub moves the blob instead
        shutil.move(str(blob), str(pointer))


def _download(
    repo: str,
    file: str,
    revision: str | None,
    cache_dir: Path | str | None,
    endpoint: str | None,
    meter_for: Callable[[int | None], _Meter],
    cancel: threading.Event | None,
) -> Path:
    """One attempt: metadata, then one GET streamed into the cache. Raises _Failure or DownloadCancelled."""
    hub = _hub()
    from huggingface_hub.file_download import repo_folder_name

    remote = _metadata(repo, file, revision, endpoint)
    storage = hub_cache_dir(cache_dir) / repo_folder_name(repo_id=repo, repo_type="model")
    blob = storage / "blobs" / remote.etag
    pointer = storage / "snapshots" / remote.commit / Path(*file.split("/"))
    if pointer.is_file():
        _write_ref(storage, revision, remote.commit)
        return pointer
    blob.parent.mkdir(parents=True, exist_ok=True)
    if blob.is_file():  # the same content under another revision
        _link_into_snapshot(blob, pointer)
        _write_ref(storage, revision, remote.commit)
        return pointer
    if remote.size is not None and shutil.disk_usage(blob.parent).free < remote.size:
        free = shutil.disk_usage(blob.parent).free
        raise _Failure(
            f"it needs {human_size(remote.size)} free in {blob.parent}, but only {human_size(free)} is free", "disk"
        )

    headers = hub.utils.build_hf_headers()
    headers["Accept-Encoding"] = "identity"  # the byte count must be the file's size
    if urlsplit(remote.url).netloc != urlsplit(hub_endpoint(endpoint)).netloc:
        headers.pop("authorization", None)  # a signed CDN address: the login token stays on the hub
    meter = meter_for(remote.size)
    partial = blob.with_name(f"{remote.etag}.{uuid.uuid4().hex[:8]}.incomplete")
    timeout = _timeout(READ_TIMEOUT)
    try:
        with partial.open("wb") as out:
            try:
                with hub.get_session().stream(
                    "GET", remote.url, headers=headers, timeout=timeout, follow_redirects=True
                ) as response:
                    if response.status_code >= 400:
                        raise _Failure(
                            f"{remote.url} answered HTTP {response.status_code}",
                            "missing" if response.status_code == 404 else "server",
                        )
                    for chunk in response.iter_bytes():
                        if cancel is not None and cancel.is_set():
                            raise DownloadCancelled(f"download of {file} cancelled after {human_size(meter.done)}")
                        out.write(chunk)
                        meter.add(len(chunk))
            except (_Failure, DownloadCancelled):
                raise
            except Exception as exc:  # noqa: BLE001 - transport errors mid-transfer: one message, no retry
                failure = _classify(exc, remote.url)
                if meter.done:
                    failure = _Failure(
                        f"the transfer broke after {human_size(meter.done)} of "
                        f"{human_size(remote.size)} ({failure.why})",
                        "broken",
                    )
                raise failure from None
        if remote.size is not None and meter.done != remote.size:
            raise _Failure(
                f"the transfer ended after {human_size(meter.done)} of {human_size(remote.size)} "
                f"({meter.done} of {remote.size} bytes)",
                "broken",
            )
        meter.finish()
        os.replace(partial, blob)
    finally:
        partial.unlink(missing_ok=True)
    _link_into_snapshot(blob, pointer)
    _write_ref(storage, revision, remote.commit)
    return pointer


def _write_ref(storage: Path, revision: str | None, commit: str) -> None:
    """``refs/main`` -> the commit, so that a lookup by branch name finds the snapshot."""
    revision = revision or "main"
    if revision != commit:
        (storage / "refs").mkdir(parents=True, exist_ok=True)
        (storage / "refs" / revision).write_text(commit)


def _timeout(read: float):
    try:
        import httpx2 as http
    except ImportError:  # pragma: no cover - older huggingface_hub
        import httpx as http  # type: ignore[no-redef]
    return http.Timeout(METADATA_TIMEOUT, read=read)


def _manual_fix(entry: ModelEntry, url: str) -> str:
    """How to put the file in place by hand: exactly which file(s), and where."""
    folder = f"models/{entry.name}"
    text = f"or download {url} into {folder}/ (next to models.yaml)"
    tokenizer = _hub_tokenizer(entry)
    if tokenizer:
        text += (
            f", the tokenizer files {', '.join(TOKENIZER_FILES)} of {tokenizer} "
            f"({hub_endpoint()}/{tokenizer}/tree/main) into {folder}/tokenizer/"
        )
    return (
        f"{text}, and replace the entry's 'repo' and 'file' in models.yaml with "
        f"'path: {folder}/{Path(entry.file or '').name}'"
    )


def _fix(kind: str, entry: ModelEntry) -> str:
    return {
        "offline": "unset HF_HUB_OFFLINE and select the model again",
        "network": "check the network connection (and any proxy settings), then select the model again",
        "missing": "check 'repo', 'file' and 'revision' of this entry in models.yaml",
        "auth": f"accept the model's terms on https://huggingface.co/{entry.repo} if it asks, log in with "
        "`hf auth login` (or set HF_TOKEN), then select the model again",
        "server": "try again later",
        "broken": "select the model again (the download starts over)",
        "disk": "free some space (or make the folder writable), or set HF_HUB_CACHE to another folder, then "
        "select the model again",
        "bad-endpoint": "check HF_ENDPOINT and proxy settings",
    }.get(kind, "select the model again")


def fetch_model_file(
    entry: ModelEntry,
    cache_dir: Path | str | None = None,
    *,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    endpoint: str | None = None,
) -> Path:
    """The local path of ``entry``'s weights: its ``path``, the cached hub file, or the file downloaded now.

    Raises:
        DownloadCancelled: ``cancel`` was set; no partial file is kept.
        DownloadError: the one attempt failed; the message says what, why, and how to fix it (also
            logged as one line).
    """
    if entry.path is not None:
        return entry.path
    if entry.repo is None or entry.file is None:  # the registry refuses such entries; a hand-made one may not
        raise DownloadError(f"model {entry.name!r} has neither a 'path' nor a 'repo' and 'file'")
    found = cached_model_file(entry, cache_dir)
    if found is not None:
        return found
    url = file_url(entry.repo, entry.file, entry.revision, endpoint)
    cache = hub_cache_dir(cache_dir)

    def meter_for(total: int | None) -> _Meter:
        logger.info("Downloading %s (%s) from %s into %s", entry.file, human_size(total), url, cache)
        return _Meter(entry.name, entry.file or "", total, progress)

    try:
        try:
            path = _download(entry.repo, entry.file, entry.revision, cache_dir, endpoint, meter_for, cancel)
        except OSError as exc:  # the cache folder: not writable, disk full mid-way, ...
            raise _Failure(f"writing into {cache} failed: {exc.strerror or exc}", "disk") from None
    except DownloadCancelled as exc:
        logger.info("Model %r: %s; the partial file was removed", entry.name, exc)
        raise DownloadCancelled(f"model {entry.name!r}: {exc}") from None
    except _Failure as failure:
        message = (
            f"Could not download {entry.file} for model {entry.name!r}: {failure.why}. "
            f"To fix it: {_fix(failure.kind, entry)}"
        )
        if failure.kind in ("offline", "network", "server", "auth", "broken", "bad-endpoint"):
            message += f"; {_manual_fix(entry, url)}"
        message += "."
        logger.warning("%s", message)
        raise DownloadError(message) from None
    logger.info("Downloaded %s into %s", entry.file, path)
    return path


def fetch_tokenizer(
    hub_id: str,
    cache_dir: Path | str | None = None,
    *,
    cancel: threading.Event | None = None,
    endpoint: str | None = None,
) -> Path | None:
    """The local folder of ``hub_id``'s CLIP tokenizer files, downloaded if needed; None if unavailable.

    A folder path is returned as it is. A tokenizer that cannot be fetched is not an error here (one log
    line): :func:`~webui.models.loading.load_model` then explains exactly which files to get and where.
    """
    if Path(hub_id).exists():
        return Path(hub_id)
    found = cached_tokenizer(hub_id, cache_dir)
    if found is not None:
        return found
    folder: Path | None = None
    for name in TOKENIZER_FILES:
        try:
            path = _download(
                hub_id, name, None, cache_dir, endpoint, partial(_Meter, hub_id, name, callback=None), cancel
            )
        except _Failure as failure:
            if failure.kind == "missing" and name not in REQUIRED_TOKENIZER_FILES:
                continue  # optional file
            logger.warning("Could not download the tokenizer %s (%s): %s", hub_id, name, failure.why)
            return None
        folder = path.parent
    return folder

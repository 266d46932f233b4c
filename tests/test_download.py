"""Hub downloads for real, against a local stand-in for the hub (tests/hub_server.py): described before they
start, progress with bytes/speed/ETA, cancel within a second without a partial file, one attempt and one
clear line when anything fails, the file in huggingface_hub's own cache layout. Nothing leaves 127.0.0.1."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.support.hub_server import fake_hub, use_hub
from webui.models import download
from webui.models.download import (
    DownloadCancelled,
    DownloadError,
    DownloadProgress,
    fetch_model_file,
    fetch_tokenizer,
    plan_download,
)
from webui.models.registry import ModelEntry

REPO, FILE = "someone/model", "model.safetensors"
ENTRY = ModelEntry("model", repo=REPO, file=FILE)
DATA = os.urandom(3_000_000)


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A stand-in hub serving DATA in 64 kB chunks at about 2 MB/s, with huggingface_hub pointed at it."""
    with fake_hub(delay=0.03) as server:
        server.add(REPO, FILE, DATA)
        server.cache = use_hub(monkeypatch, server.url, tmp_path / "hf")
        yield server


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())


def loud_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_plan_says_size_source_and_destination_before_anything_is_downloaded(hub):
    plan = plan_download(ENTRY)
    assert plan is not None and plan.size == len(DATA) and plan.cache_dir == hub.cache
    assert plan.message == f"downloads 3.0 MB from the Hugging Face hub ({REPO}/{FILE}) into {hub.cache}"
    assert plan.url == f"{hub.url}/{REPO}/resolve/main/{FILE}"
    assert hub.count("GET") == 0 and hub.count("HEAD") == 1 and not hub.cache.exists()
    assert plan_download(ModelEntry("local", path=Path("/models/x.safetensors"))) is None


def test_plan_says_size_unknown_and_why_when_the_hub_cannot_be_asked(hub, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    plan = plan_download(ENTRY)
    assert plan.size is None and "unknown size" in plan.message and "HF_HUB_OFFLINE is set" in plan.message
    assert hub.count() == 0


@pytest.mark.parametrize("lfs_redirect", [False, True], ids=["plain", "lfs-redirect-to-cdn"])
def test_download_reports_growing_progress_and_lands_in_the_hub_cache(hub, lfs_redirect):
    from huggingface_hub import try_to_load_from_cache

    hub.lfs_redirect = lfs_redirect
    seen: list[DownloadProgress] = []
    path = fetch_model_file(ENTRY, progress=seen.append)
    assert path.read_bytes() == DATA
    assert try_to_load_from_cache(REPO, FILE) == str(path)  # huggingface_hub finds it as its own download
    assert path.is_symlink() and path.resolve().parent.name == "blobs"
    done = [p.done for p in seen]
    assert len(seen) >= 3 and done == sorted(done) and done[0] < len(DATA)
    final = seen[-1]
    assert final.finished and final.done == final.total == len(DATA) and final.fraction == 1.0
    assert any(p.eta_seconds is not None and p.eta_seconds > 0 for p in seen[:-1])
    assert all(p.speed > 0 for p in seen[1:])
    assert "3.0 MB of 3.0 MB (100%)" in final.message and "/s" in final.message
    assert [m for m, _ in hub.requests] == ["HEAD", "GET"]  # one metadata request, one transfer
    assert fetch_model_file(ENTRY) == path and len(hub.requests) == 2  # cached: no network at all
    assert plan_download(ENTRY) is None


def test_cancel_stops_within_a_second_and_leaves_no_partial_file(hub):
    from huggingface_hub import try_to_load_from_cache

    cancel, first = threading.Event(), threading.Event()
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            fetch_model_file(ENTRY, progress=lambda p: first.set(), cancel=cancel)
        except BaseException as exc:  # noqa: BLE001 - examined below
            outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    assert first.wait(10)
    cancelled_at = time.monotonic()
    cancel.set()
    worker.join(5)
    assert not worker.is_alive() and time.monotonic() - cancelled_at < 1.0
    assert len(outcome) == 1 and isinstance(outcome[0], DownloadCancelled)
    assert "cancelled" in str(outcome[0])
    assert not [f for f in files_under(hub.cache) if "blobs" in f or "snapshots" in f]  # no partial file kept
    assert try_to_load_from_cache(REPO, FILE) is None
    assert hub.count("GET") == 1


@pytest.mark.parametrize(
    ("status", "why", "fix"),
    [
        (404, "does not exist (HTTP 404)", "check 'repo', 'file' and 'revision'"),
        (500, "answered HTTP 500", "try again later; or download"),
    ],
)
def test_hub_error_is_one_attempt_and_one_clear_line(hub, caplog, capfd, status, why, fix):
    hub.fail_with = status
    caplog.set_level(logging.DEBUG)
    with pytest.raises(DownloadError) as raised:
        fetch_model_file(ENTRY)
    message = str(raised.value)
    assert message.startswith(f"Could not download {FILE} for model 'model': ") and why in message and fix in message
    assert "\n" not in message and raised.value.__cause__ is None and raised.value.__suppress_context__
    assert hub.count() == 1  # no retry (huggingface_hub's hf_hub_download makes 7 requests over ~25 s)
    loud = loud_records(caplog)
    assert [(r.name, r.getMessage(), r.exc_info) for r in loud] == [("webui.models.download", message, None)]
    assert not [r for r in caplog.records if r.name.startswith("huggingface_hub")]
    assert "%|" not in capfd.readouterr().err  # no tqdm bar
    assert not files_under(hub.cache) or all("blobs" not in f for f in files_under(hub.cache))


def test_unreachable_hub_fails_at_once_with_the_manual_fix(hub, monkeypatch, caplog):
    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setenv("HF_ENDPOINT", closed)
    entry = ModelEntry("sd15", repo=REPO, file=FILE, tokenizer="openai/clip-vit-large-patch14")
    started = time.monotonic()
    with pytest.raises(DownloadError) as raised:
        fetch_model_file(entry)
    assert time.monotonic() - started < 3  # one attempt; no back-off
    message = str(raised.value)
    assert "cannot be reached" in message and "check the network connection" in message
    # the exact manual fix: which file, where to put it, what to write in models.yaml
    assert f"download {closed}/{REPO}/resolve/main/{FILE} into models/sd15/" in message
    assert "vocab.json, merges.txt" in message and "into models/sd15/tokenizer/" in message
    assert f"'path: models/sd15/{FILE}'" in message
    assert len(loud_records(caplog)) == 1


def test_offline_mode_makes_no_request_and_says_how_to_turn_it_off(hub, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DownloadError, match="HF_HUB_OFFLINE is set, so nothing is downloaded. To fix it: unset"):
        fetch_model_file(ENTRY)
    assert hub.count() == 0


def test_broken_transfer_is_reported_once_and_nothing_partial_is_kept(hub):
    hub.truncate_at = 1_000_000
    with pytest.raises(DownloadError, match=r"the transfer broke after 1\.0 MB of 3\.0 MB"):
        fetch_model_file(ENTRY)
    assert hub.count("GET") == 1 and not [f for f in files_under(hub.cache) if "blobs" in f]


def test_unwritable_cache_is_a_clear_error_not_a_traceback(hub, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    with pytest.raises(DownloadError, match="writing into .*not-a-folder failed: .*set HF_HUB_CACHE to another"):
        fetch_model_file(ENTRY, blocker)


def test_progress_is_logged_every_few_seconds(hub, monkeypatch, caplog):
    monkeypatch.setattr(download, "LOG_EVERY", 0.3)
    caplog.set_level(logging.INFO, logger="webui.models.download")
    fetch_model_file(ENTRY)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"Downloading {FILE}: ")]
    assert len(lines) >= 2 and all(" of 3.0 MB (" in line and "ETA" in line for line in lines), lines


def test_tokenizer_files_are_fetched_and_optional_ones_may_be_missing(hub, tiny_tokenizer_dir):
    for name in ("vocab.json", "merges.txt"):
        hub.add("someone/tokenizer", name, (tiny_tokenizer_dir / name).read_bytes())
    folder = fetch_tokenizer("someone/tokenizer")
    assert folder is not None
    assert (folder / "vocab.json").read_bytes() == (tiny_tokenizer_dir / "vocab.json").read_bytes()
    assert (folder / "merges.txt").is_file() and not (folder / "tokenizer_config.json").exists()
    assert fetch_tokenizer("someone/tokenizer") == folder and hub.count("GET") == 2  # cached afterwards
    assert fetch_tokenizer("nobody/nothing") is None

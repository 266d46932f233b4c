"""callback_url: a local HTTP server receives each finished job's images exactly once (multipart, as
agent-scheduler sends them), retries with backoff, a dead receiver never holds up the queue, and URLs that
point at this machine or at link-local/metadata addresses are refused; a callback not delivered when the app is
killed is delivered once after the restart (kept in the queue database)."""

from __future__ import annotations

import email.parser
import email.policy
import io
import ipaddress
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from PIL import Image

from webui.pipeline import GenerationRequest
from webui.queue.callbacks import CallbackRefused, CallbackSender, Upload, check_callback_url
from webui.service import WebUIService

TIMEOUT = 120


class Receiver:
    """A local HTTP server recording every multipart POST; the first ``fail_first`` answers are 503, each given
    after ``slow`` seconds."""

    def __init__(self, fail_first: int = 0, slow: float = 0.0):
        self.posts: list[dict] = []
        self.attempts = 0
        self.fail_first = fail_first
        self.slow = slow
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                data = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.attempts += 1
                if receiver.attempts <= receiver.fail_first:
                    time.sleep(receiver.slow)
                    self.send_response(503)
                    self.end_headers()
                    return
                head = f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode()
                message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + data)
                fields, files = {}, []
                for part in message.iter_parts():
                    name = part.get_param("name", header="content-disposition")
                    if name == "files":
                        files.append((part.get_filename(), part.get_content_type(), part.get_payload(decode=True)))
                    else:
                        fields[name] = part.get_content().strip()
                receiver.posts.append({"path": self.path, **fields, "files": files})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook?key=1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def wait_until(predicate, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_each_finished_job_posts_its_images_exactly_once(tiny_checkpoint, tmp_path: Path, receiver: Receiver):
    service = WebUIService(
        tiny_checkpoint.models_yaml,
        outputs_dir=tmp_path / "out",
        queue_db=tmp_path / "q.sqlite3",
        allow_local_callbacks=True,
    )
    try:
        jobs = [
            service.submit(
                GenerationRequest(prompt=f"p{i}", steps=2, seed=i * 10, batch_size=2, sampler_name="Euler"),
                meta={"callback_url": receiver.url},
            )
            for i in range(3)
        ]
        plain = service.submit(GenerationRequest(prompt="no callback", steps=2, seed=1, sampler_name="Euler"))
        for job in [*jobs, plain]:
            job.result(TIMEOUT)
        wait_until(lambda: len(receiver.posts) >= 3)
        time.sleep(0.5)  # nothing more arrives
        assert sorted(p["task_id"] for p in receiver.posts) == sorted(j.id for j in jobs)
        for post in receiver.posts:
            job = next(j for j in jobs if j.id == post["task_id"])
            assert post["status"] == "done" and post["path"] == "/hook?key=1"
            result = job.result(0)
            assert [name for name, _, _ in post["files"]] == [p.name for p in result.paths]
            assert {kind for _, kind, _ in post["files"]} == {"image/png"}
            for (_, _, data), path, text in zip(post["files"], result.paths, result.infotexts, strict=True):
                assert data == path.read_bytes() or Image.open(io.BytesIO(data)).tobytes() == Image.open(path).tobytes()
                assert Image.open(io.BytesIO(data)).info["parameters"] == text
    finally:
        service.close()


def test_a_failing_receiver_is_retried_with_backoff_and_gets_the_upload_once():
    receiver = Receiver(fail_first=2)
    sender = CallbackSender(allow_local=True, attempts=4, backoff=0.05)
    try:
        started = time.monotonic()
        sender.send(Upload(receiver.url, "task-1", "done", (("a.png", b"\x89PNG-a"),)))
        wait_until(lambda: receiver.posts, timeout=10)
        assert receiver.attempts == 3 and len(receiver.posts) == 1
        assert time.monotonic() - started >= 0.05 + 0.1  # waited 0.05 s, then 0.1 s
        assert receiver.posts[0]["files"] == [("a.png", "image/png", b"\x89PNG-a")]
    finally:
        sender.close()
        receiver.close()


def test_a_dead_callback_never_holds_up_the_queue(tiny_checkpoint, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    service = WebUIService(tiny_checkpoint.models_yaml, outputs_dir=None, allow_local_callbacks=True)
    service.callbacks.backoff = 2.0  # the retries of the dead URL take seconds
    try:
        request = GenerationRequest(prompt="x", steps=2, seed=1, sampler_name="Euler")
        first = service.submit(request, meta={"callback_url": "http://127.0.0.1:9/dead"})
        first.result(TIMEOUT)
        started = time.monotonic()
        second = service.submit(request)
        second.result(TIMEOUT)
        assert time.monotonic() - started < 2.0  # not behind the callback's retries
    finally:
        service.close()


@pytest.mark.parametrize(
    ("url", "addresses"),
    [
        ("http://localhost:7860/x", ["127.0.0.1"]),
        ("http://127.0.0.2/x", ["127.0.0.2"]),
        ("http://[::1]/x", ["::1"]),
        ("http://169.254.169.254/latest/meta-data/", ["169.254.169.254"]),
        ("http://metadata.google.internal/computeMetadata/v1/", ["169.254.169.254"]),
        ("http://[fe80::1]/x", ["fe80::1"]),
        ("http://[fd00:ec2::254]/x", ["fd00:ec2::254"]),
        ("http://0.0.0.0:7860/", ["0.0.0.0"]),
        ("http://[::ffff:127.0.0.1]/", ["::ffff:127.0.0.1"]),
        ("http://rebind.example/x", ["93.184.216.34", "127.0.0.1"]),  # any bad address refuses the name
        ("http://me.example/x", ["192.168.1.20"]),  # this machine's own LAN address
    ],
)
def test_callbacks_to_this_machine_or_link_local_addresses_are_refused(url: str, addresses: list[str]):
    own = [ipaddress.ip_address("192.168.1.20")]
    with pytest.raises(CallbackRefused, match="--allow-local-callbacks"):
        check_callback_url(url, own=own, resolve=lambda host: addresses)
    check_callback_url(url, own=own, resolve=lambda host: addresses, allow_local=True)  # the flag allows it


def test_ordinary_callback_urls_pass_and_odd_schemes_do_not():
    check_callback_url("https://hooks.example/a?b=c", resolve=lambda host: ["93.184.216.34"])
    check_callback_url("http://bot.lan:8080/done", resolve=lambda host: ["192.168.1.50"])  # another LAN machine
    for bad in ("file:///etc/passwd", "ftp://x/y", "http:///nohost", "gopher://a"):
        with pytest.raises(CallbackRefused, match="http:// or https://"):
            check_callback_url(bad, allow_local=True)


# --- durable callbacks: kept in the queue database until answered ---------------------------------------------


@pytest.mark.slow  # three app starts in subprocesses
def test_a_callback_not_delivered_at_a_kill_9_is_delivered_once_after_the_restart(tiny_checkpoint, tmp_path: Path):
    from tests.test_queue_crash import Q, free_port, start_app, wait_ready

    # Down (503, each after 6 s: the app's 4 tries then take over 30 s) until the app is killed.
    receiver = Receiver(fail_first=10**9, slow=6.0)
    outputs, db, log = tmp_path / "outputs", tmp_path / "queue.sqlite3", tmp_path / "app.log"

    def app_at(port: int) -> tuple[subprocess.Popen, httpx.Client]:
        app = start_app(tiny_checkpoint.models_yaml, outputs, db, port, log, "--allow-local-callbacks")
        wait_ready(f"http://127.0.0.1:{port}", app, log)
        return app, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)

    def stop(app: subprocess.Popen, sig: int) -> None:
        app.send_signal(sig)
        try:
            app.wait(30)
        except subprocess.TimeoutExpired:
            app.kill()
            app.wait(30)

    try:
        app, client = app_at(free_port())
        try:
            body = {"steps": 2, "batch_size": 2, "sampler_name": "Euler", "callback_url": receiver.url}
            ids = [client.post(f"{Q}/queue/txt2img", json={**body, "prompt": f"p{i}", "seed": i}).json()["task_id"]
                   for i in range(2)]  # fmt: skip
            # The first callback is failing (tries 6 s apart or more), the second waits behind it.
            wait_until(lambda: receiver.attempts >= 1 and client.get(f"{Q}/history").json()["total"] == 2)
        finally:
            stop(app, signal.SIGKILL)
        assert receiver.posts == []
        receiver.fail_first = receiver.attempts  # the receiver is back
        app, client = app_at(free_port())
        try:
            wait_until(lambda: len(receiver.posts) >= 2)
            time.sleep(1.0)  # nothing more arrives
        finally:
            stop(app, signal.SIGINT)
        assert sorted(p["task_id"] for p in receiver.posts) == sorted(ids)
        assert all(p["status"] == "done" and len(p["files"]) == 2 for p in receiver.posts)
        for post in receiver.posts:  # the images the job saved, with their infotexts
            for name, _, data in post["files"]:
                assert (
                    name.split("-")[1] == post["task_id"][:8]
                    and "Seed:" in Image.open(io.BytesIO(data)).info["parameters"]
                )
        app, client = app_at(free_port())  # a third start sends nothing again
        try:
            time.sleep(1.5)
        finally:
            stop(app, signal.SIGINT)
        assert len(receiver.posts) == 2
    finally:
        receiver.close()


def test_the_store_keeps_callbacks_until_answered_and_finds_finished_jobs_without_one(
    tmp_path: Path, receiver: Receiver
):
    from webui.queue.store import QueueStore, StoredCallback, StoredJob

    image = tmp_path / "120000-abcdefgh-0-1.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(image)
    urls = [f"{receiver.url}&job={i}" for i in range(4)]
    store = QueueStore.open(tmp_path / "q.sqlite3")
    for i in range(4):
        meta = {"callback_url": urls[i]} if i != 2 else {}
        store.add(StoredJob(f"job{i}", "txt2img", "pending", float(i), "{}", meta=meta, created_at=float(i)))
        store.finish(f"job{i}", "done", 10.0 + i, None, {"images": [str(image)], "infotexts": [], "seeds": [1]})
    store.add_callback(StoredCallback("job0", urls[0], "done", (("a.png", b"\x89PNG-a"),)))
    store.add_callback(StoredCallback("job1", urls[1], "done", (("b.png", b"\x89PNG-b"),)))
    store.end_callback("job0", delivered=True)
    store.close()
    # After a restart: job1's recorded callback is still due, with its files; job3 finished before its callback
    # was recorded; job0 was answered and job2 has no callback_url.
    again = QueueStore.open(tmp_path / "q.sqlite3")
    assert again.pending_callbacks() == [StoredCallback("job1", urls[1], "done", (("b.png", b"\x89PNG-b"),))]
    assert [row.id for row in again.finished_without_callback()] == ["job3"]
    sender = CallbackSender(allow_local=True)
    try:
        sender.resume(again)
        wait_until(lambda: len(receiver.posts) >= 2 and again.pending_callbacks() == [], timeout=10)
        time.sleep(0.3)  # nothing more arrives
    finally:
        sender.close()
    assert [(p["task_id"], p["files"]) for p in receiver.posts] == [
        ("job1", [("b.png", "image/png", b"\x89PNG-b")]),
        ("job3", [(image.name, "image/png", image.read_bytes())]),
    ]
    assert again.finished_without_callback() == []
    again.close()


def test_a_queue_database_from_before_durable_callbacks_sends_no_old_callback_again(tmp_path: Path):
    import sqlite3

    from webui.queue.store import QueueStore, StoredJob

    store = QueueStore.open(tmp_path / "q.sqlite3")
    store.add(StoredJob("old", "txt2img", "pending", 0.0, "{}", meta={"callback_url": "http://a.example/"}))
    store.finish("old", "done", 1.0, None, {"images": [], "infotexts": [], "seeds": []})
    store.close()
    with sqlite3.connect(tmp_path / "q.sqlite3") as db:
        db.execute("DROP TABLE callbacks")  # as the previous version wrote it
    again = QueueStore.open(tmp_path / "q.sqlite3")
    assert again.get("old") is not None  # kept, not moved aside
    assert again.finished_without_callback() == [] and again.pending_callbacks() == []
    again.close()

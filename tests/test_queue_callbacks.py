"""callback_url: a local HTTP server receives each finished job's images exactly once (multipart, as
agent-scheduler sends them), retries with backoff, a dead receiver never holds up the queue, and URLs that
point at this machine or at link-local/metadata addresses are refused."""

from __future__ import annotations

import email.parser
import email.policy
import io
import ipaddress
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from webui.pipeline import GenerationRequest
from webui.queue.callbacks import CallbackRefused, CallbackSender, Upload, check_callback_url
from webui.service import WebUIService

TIMEOUT = 120


class Receiver:
    """A local HTTP server recording every multipart POST; the first ``fail_first`` answers are 503."""

    def __init__(self, fail_first: int = 0):
        self.posts: list[dict] = []
        self.attempts = 0
        self.fail_first = fail_first
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                data = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.attempts += 1
                if receiver.attempts <= receiver.fail_first:
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

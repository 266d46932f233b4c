"""launch.py's flags and webui.server's start rules: secure by default, --listen binds 0.0.0.0, a share
tunnel that cannot be created (no internet here) costs one line and the app keeps serving locally.

Refusals are checked on the real ``python launch.py`` (they happen before any model is loaded, so they
are fast); serving is checked in-process with the stand-in service from support/fakes.py.
"""

from __future__ import annotations

import importlib.util
import io
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from webui.server import (
    InsecureLaunchError,
    ServerOptions,
    check_exposure,
    parse_credentials,
    read_credentials_file,
    serve,
    start,
)

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch.py"
FLAGS = [
    "--port",
    "--listen",
    "--share",
    "--gradio-auth",
    "--gradio-auth-path",
    "--api",
    "--api-auth",
    "--models",
    "--device",
    "--precision",
    "--outputs",
    "--samplers-dir",
    "--inbrowser",
    "--insecure-no-auth",
]


def run_launch(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    return subprocess.run(
        [sys.executable, str(LAUNCH), *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def models_yaml(tmp_path: Path, text: str = "models:\n  - {name: m, path: m.safetensors}\n") -> Path:
    """A models.yaml the start accepts (the start refuses a missing one; the weights are read only on use)."""
    path = tmp_path / "models.yaml"
    path.write_text(text)
    return path


def options(tmp_path: Path, **kwargs) -> ServerOptions:
    kwargs.setdefault("models", tmp_path / "models.yaml")
    return ServerOptions(outputs=tmp_path / "outputs", port=free_port(), **kwargs)


# --- parsing -----------------------------------------------------------------------------------


def test_help_explains_every_flag():
    result = run_launch("--help")
    assert result.returncode == 0
    for flag in FLAGS:
        assert flag in result.stdout, flag
    assert "0.0.0.0" in result.stdout and "user:password" in result.stdout


def test_credentials_are_user_password_pairs_separated_by_commas():
    assert parse_credentials("alice:pw, bob:a:b:c") == (("alice", "pw"), ("bob", "a:b:c"))
    for bad in ("alice", "alice:", ":pw", ""):
        with pytest.raises(ValueError, match="user:password"):
            parse_credentials(bad)


def test_credentials_file_allows_lines_commas_and_comments(tmp_path: Path):
    path = tmp_path / "auth.txt"
    path.write_text("# users\nalice:pw1\nbob:pw2, carol:pw3  # trailing comment\n\n")
    assert read_credentials_file(path) == (("alice", "pw1"), ("bob", "pw2"), ("carol", "pw3"))
    with pytest.raises(ValueError, match="cannot read credentials file"):
        read_credentials_file(tmp_path / "missing.txt")


def test_bad_gradio_auth_is_an_argparse_error():
    result = run_launch("--gradio-auth", "nopassword")
    assert result.returncode == 2 and "expected user:password" in result.stderr


# --- secure by default ------------------------------------------------------------------------------


@pytest.mark.slow  # starts launch.py in a subprocess: seconds each
@pytest.mark.parametrize("flag", ["--share", "--listen"])
def test_exposed_without_auth_refuses_to_start_and_says_how_to_add_it(flag: str, tmp_path: Path):
    result = run_launch(flag, "--models", str(tmp_path / "models.yaml"), "--port", str(free_port()))
    assert result.returncode != 0
    assert "Refusing to start" in result.stderr and "--gradio-auth user:password" in result.stderr
    assert "--insecure-no-auth" in result.stderr
    assert "Running on" not in result.stdout


@pytest.mark.slow  # starts launch.py in a subprocess: seconds each
def test_api_on_the_network_needs_its_own_password(tmp_path: Path):
    result = run_launch("--listen", "--api", "--gradio-auth", "u:p", "--port", str(free_port()))
    assert result.returncode != 0 and "--api-auth user:password" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_unavailable_device_is_a_one_line_error(tmp_path: Path, device: str):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = run_launch("--device", device, "--models", str(models_yaml(tmp_path)), "--port", str(free_port()))
    assert result.returncode == 2 and f"device {device!r} was requested but no CUDA GPU is available" in result.stderr
    assert "Traceback" not in result.stderr


def _launch_module():
    spec = importlib.util.spec_from_file_location("launch_under_test", LAUNCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_device_flag_accepts_a_cuda_index_and_refuses_other_spellings(tmp_path: Path, capsys):
    launch = _launch_module()
    parser = launch.build_parser()
    assert parser.parse_args([]).device == "auto"
    args = parser.parse_args(["--device", "CUDA:1", "--models", str(tmp_path / "models.yaml")])
    assert args.device == "cuda:1" and launch.options_from_args(args).device == "cuda:1"
    for bad in ("cuda:x", "cuda:0,tpu", "tpu"):  # a list of devices is valid since #20
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(["--device", bad])
        assert exit_info.value.code == 2
        assert "argument --device: unknown device" in capsys.readouterr().err


def test_a_cuda_index_past_the_last_gpu_is_a_one_line_error(tmp_path: Path, monkeypatch, capsys):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as a machine with two GPUs reports it
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert serve(options(tmp_path, device="cuda:2", models=models_yaml(tmp_path))) == 2
    assert capsys.readouterr().err.strip() == (
        "error: device 'cuda:2' does not exist: this machine has 2 CUDA GPU(s), cuda:0 to cuda:1"
    )


@pytest.mark.slow
def test_port_in_use_is_a_clear_error(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_launch("--device", "cpu", "--models", str(models_yaml(tmp_path)), "--port", str(port))
    assert result.returncode == 2 and "error:" in result.stderr and str(port) in result.stderr
    assert "Traceback" not in result.stderr


# --- the models file ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda d: d / "nope.yaml", "file not found; give the path of your models.yaml with --models PATH"),
        (lambda d: d, "is a folder, not a YAML file; give the models.yaml file inside it"),
        (lambda d: models_yaml(d, "models:\n  - {name: a\n"), "is not valid YAML"),
        (lambda d: models_yaml(d, "models: []\n"), "lists no models"),
        (lambda d: models_yaml(d, "- a list\n"), "top-level 'models:' list"),
    ],
)
@pytest.mark.slow  # starts launch.py in a subprocess: seconds each
def test_unusable_models_file_stops_the_start_with_one_line(tmp_path: Path, make, words):
    path = make(tmp_path)
    result = run_launch("--models", str(path), "--port", str(free_port()))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [result.stderr.strip()], result.stderr  # exactly one line
    assert result.stderr.startswith(f"error: --models {path}: ") and words in result.stderr, result.stderr
    assert "Running on" not in result.stdout


@pytest.mark.slow  # starts launch.py in a subprocess: seconds each
def test_every_models_yaml_problem_is_one_line_at_start(tmp_path: Path):
    """The issue's cases: a 'pth:' typo in the default entry and 'sampler: DPM++2M' are reported before serving
    (the port is taken so that the start ends right after the report)."""
    path = models_yaml(
        tmp_path,
        (
            "models:\n"
            "  - {name: demo, pth: models/demo.safetensors, default: true}\n"
            "  - {name: other, path: other.safetensors, sampler: DPM++2M, scheduler: karas}\n"
        ),
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = run_launch(
            "--device", "cpu", "--models", str(path), "--port", str(taken.getsockname()[1]), timeout=180
        )
    lines = result.stderr.splitlines()
    assert lines[:4] == [
        f"error: {path}, model #1 ('demo'), field 'pth': unknown field 'pth' (did you mean 'path'?)",
        f"error: {path}, model #1 ('demo'): this entry is marked 'default: true' but is invalid (see above), so no "
        "model is selected at start; fix the entry, or mark a valid one 'default: true'",
        f"warning: {path}, model #2 ('other'), field 'sampler': unknown sampler 'DPM++2M' (did you mean "
        "'DPM++ 2M'?); the app's default is used for this model",
        f"warning: {path}, model #2 ('other'), field 'scheduler': unknown scheduler 'karas' (did you mean "
        "'Karras'?); the app's default is used for this model",
    ], result.stderr
    assert "Traceback" not in result.stderr


def test_exposure_rules(tmp_path: Path):
    assert check_exposure(options(tmp_path)) == []  # localhost only: no password needed
    assert check_exposure(options(tmp_path, api=True)) == []
    assert check_exposure(options(tmp_path, share=True, gradio_auth=(("u", "p"),))) == []
    assert (
        check_exposure(options(tmp_path, listen=True, gradio_auth=(("u", "p"),), api=True, api_auth=(("a", "b"),)))
        == []
    )
    with pytest.raises(InsecureLaunchError, match="--share publishes the app"):
        check_exposure(options(tmp_path, share=True))
    warnings = check_exposure(options(tmp_path, listen=True, insecure_no_auth=True))
    assert any("WITHOUT A PASSWORD" in line for line in warnings)


# --- serving --------------------------------------------------------------------------------------


def _listening_addresses(port: int) -> set[str]:
    """Local addresses in LISTEN state on ``port`` (from /proc/net/tcp: hex IPv4 little endian)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


@pytest.fixture
def stand_in_service():
    from tests.support.fakes import FakeService

    service = FakeService()
    yield service
    service.close()


def test_listen_binds_all_interfaces(tmp_path: Path, stand_in_service):
    opts = options(tmp_path, listen=True, gradio_auth=(("u", "p"),))
    out = io.StringIO()
    server = start(opts, stand_in_service, out=out)
    try:
        assert _listening_addresses(opts.port) == {"0.0.0.0"}
        assert httpx.get(f"http://127.0.0.1:{opts.port}/config").status_code == 401  # login required
    finally:
        server.close()
    assert "bound to 0.0.0.0" in out.getvalue()


def test_default_binds_loopback_only(tmp_path: Path, stand_in_service):
    opts = options(tmp_path)
    server = start(opts, stand_in_service, out=io.StringIO())
    try:
        assert _listening_addresses(opts.port) == {"127.0.0.1"}
        assert httpx.get(f"http://127.0.0.1:{opts.port}/config").status_code == 200
    finally:
        server.close()


@pytest.mark.slow
def test_share_without_internet_prints_one_line_and_keeps_serving_locally(tmp_path: Path, stand_in_service):
    opts = options(tmp_path, share=True, gradio_auth=(("u", "p"),))
    out = io.StringIO()
    server = start(opts, stand_in_service, out=out)
    try:
        page = httpx.get(f"http://127.0.0.1:{opts.port}/")
        assert page.status_code == 200
    finally:
        server.close()
    lines = out.getvalue().splitlines()
    if server.share_url:  # a machine with internet got a real link
        assert any(server.share_url in line for line in lines)
    else:
        assert sum("share link" in line for line in lines) == 1
        assert any("Running on local URL" in line for line in lines)


def test_insecure_no_auth_serves_with_a_loud_warning(tmp_path: Path, stand_in_service):
    opts = options(tmp_path, listen=True, insecure_no_auth=True)
    out = io.StringIO()
    server = start(opts, stand_in_service, out=out)
    try:
        assert httpx.get(f"http://127.0.0.1:{opts.port}/config").status_code == 200
    finally:
        server.close()
    assert "WITHOUT A PASSWORD" in out.getvalue()


@pytest.mark.slow
def test_api_flag_mounts_the_rest_api_behind_its_own_password(tmp_path: Path, stand_in_service):
    pytest.importorskip("webui.api")
    opts = options(tmp_path, api=True, api_auth=(("api", "key"),))
    server = start(opts, stand_in_service, out=io.StringIO())
    try:
        url = f"http://127.0.0.1:{opts.port}/sdapi/v1/samplers"
        assert httpx.get(url).status_code == 401
        answer = httpx.get(url, auth=("api", "key"))
        assert answer.status_code == 200, answer.text
        assert [s["name"] for s in answer.json()] == ["Euler a", "Euler", "DDIM"]
    finally:
        server.close()

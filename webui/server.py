"""Build the web app (Gradio UI + optional REST API), check that it is safe to expose, and serve it.

`launch.py` parses the command line into `ServerOptions` and calls `serve`; nothing here reads `sys.argv`.
Importing this module has no side effects: gradio, torch and the service are imported when first needed.

Security rule ("secure by default"): a server reachable from other machines (`--listen` on a LAN, `--share`
through a public tunnel) must ask for a password. Without one `check_exposure` raises `InsecureLaunchError`
whose message says how to add it, unless the user explicitly opts out with `--insecure-no-auth`.
"""

from __future__ import annotations

import contextlib
import io
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    import gradio as gr
    from fastapi import FastAPI

    from webui.service import Service, WebUIService

Credentials = tuple[tuple[str, str], ...]

LOCALHOST = "127.0.0.1"
ALL_INTERFACES = "0.0.0.0"


def lan_address() -> str:
    """This machine's address on its local network (what other machines type), best effort."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))  # UDP connect sends nothing; it only picks a route
            return probe.getsockname()[0]
        except OSError:
            return "<this machine's address>"


class LaunchError(RuntimeError):
    """The server cannot start as configured; the message says what to change."""


class InsecureLaunchError(LaunchError):
    """The configuration would expose the app to other machines without a password."""


def parse_credentials(text: str) -> Credentials:
    """Parse ``"user:pass[,user2:pass2]"`` into ``(("user", "pass"), ...)``.

    Passwords may contain ``:`` (only the first one separates user from password); surrounding spaces are
    ignored. An entry without ``:``, an empty user or an empty password raises ``ValueError``.
    """
    credentials = []
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        user, sep, password = entry.partition(":")
        user, password = user.strip(), password.strip()
        if not sep or not user or not password:
            raise ValueError(f"expected user:password, got {entry!r}")
        credentials.append((user, password))
    if not credentials:
        raise ValueError("expected at least one user:password")
    return tuple(credentials)


def read_credentials_file(path: Path) -> Credentials:
    """Read credentials from a file: ``user:password`` entries separated by newlines or commas, ``#`` comments."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read credentials file {path}: {exc.strerror or exc}") from exc
    lines = [line.split("#", 1)[0] for line in text.splitlines()]
    return parse_credentials(",".join(lines))


@dataclass(frozen=True)
class ServerOptions:
    """Everything `serve` needs; one field per command-line flag of `launch.py`."""

    models: Path
    outputs: Path
    port: int = 7860
    listen: bool = False
    share: bool = False
    gradio_auth: Credentials = ()
    api: bool = False
    api_auth: Credentials = ()
    device: str = "auto"
    precision: str = "auto"
    samplers_dir: Path | None = None
    inbrowser: bool = False
    insecure_no_auth: bool = False
    lora_dir: Path | None = None  # LoRA (issue 15): --lora-dir
    # Extra networks (issue 15): None means no such folder.
    embeddings_dir: Path | None = None
    vae_dir: Path | None = None
    styles_file: Path | None = None  # A1111's styles.csv; None: next to models.yaml
    # speed and memory (issue 19)
    models_in_memory: int = 1
    threads: int | None = None  # None: the physical cores
    vae_tiling: str = "auto"
    compile: bool = False  # --compile (issue 19, webui/models/speed_options.py)
    vram: str = "normal"  # --medvram / --lowvram
    # The durable queue and its API (issue #20).
    queue_db: Path | None = None
    queue_history: int = 1000
    allow_local_callbacks: bool = False
    cluster: str | None = None
    upscaler_dir: Path | None = None  # model upscalers for hires fix and Extras (None: built-ins only)

    @property
    def server_name(self) -> str:
        """The address to bind: every interface with ``--listen``, loopback otherwise."""
        return ALL_INTERFACES if self.listen else LOCALHOST

    @property
    def exposed(self) -> bool:
        """Whether other machines can reach the server (LAN with ``--listen``, internet with ``--share``)."""
        return self.listen or self.share


def _exposure(options: ServerOptions) -> str:
    if options.share:
        return "--share publishes the app on a public internet URL"
    return "--listen makes the app reachable from every machine on your network"


def check_exposure(options: ServerOptions) -> list[str]:
    """Refuse an exposed server without passwords; return the warnings to print when the user opted out.

    Raises:
        InsecureLaunchError: ``--share``/``--listen`` without ``--gradio-auth`` (or ``--api`` without
            ``--api-auth``) and without ``--insecure-no-auth``.
    """
    if not options.exposed:
        return []
    missing = []
    if not options.gradio_auth:
        missing.append("the web UI has no password: add --gradio-auth user:password (or --gradio-auth-path FILE)")
    if options.api and not options.api_auth:
        missing.append("the REST API (--api) has no password: add --api-auth user:password")
    if not missing:
        return []
    if not options.insecure_no_auth:
        reasons = "\n".join(f"  - {m}" for m in missing)
        raise InsecureLaunchError(
            f"Refusing to start: {_exposure(options)}, but\n{reasons}\n"
            "Anyone who can reach it could then run generations on your machine. "
            "To really run it without a password, add --insecure-no-auth."
        )
    banner = "!" * 78
    return [
        banner,
        f"WARNING: --insecure-no-auth: {_exposure(options)} WITHOUT A PASSWORD.",
        *(f"WARNING: {m}" for m in missing),
        "WARNING: anyone who can reach this address can use your machine.",
        banner,
    ]


def check_models_file(path: Path) -> None:
    """Refuse a ``--models`` file that cannot be used at all (missing, unreadable, not YAML, no models).

    Raises:
        LaunchError: one line naming the file, what is wrong and what to do. Problems inside single
            entries do not stop the start: the server reports them and the UI shows them.
    """
    from webui.models.registry import load_registry

    problem = load_registry(path).file_error
    if problem is None:
        return
    message = problem.message
    if message == "file not found":
        todo = "give the path of your models.yaml with --models PATH, or leave --models out to use the bundled one"
    elif message.startswith("is a folder"):
        todo = "give the models.yaml file inside it with --models PATH"
    elif message.startswith("cannot be read"):
        todo = "make it readable for this user, or give another file with --models PATH"
    else:
        todo = "fix the file (the format is in the README, 'Adding a model')"
    raise LaunchError(f"--models {path}: {message}; {todo}.")


def report_models(service: WebUIService, out: TextIO | None = None) -> None:
    """Print every problem of ``models.yaml`` as one line: "error: ..." for what cannot be used,
    "warning: ..." for what was corrected (the service checked the entries' sampler/schedule
    recommendations against the loaded plugins). The same problems stay in ``service.registry.errors``
    and ``.warnings`` for the UI."""
    stream = out or sys.stderr
    for problem in service.registry.errors:
        print(f"error: {problem}", file=stream)
    for problem in service.registry.warnings:
        print(f"warning: {problem}", file=stream)
    stream.flush()


def log_progress_to_stderr() -> None:
    """Show the app's own INFO lines (download progress) on stderr; library loggers keep their levels."""
    import logging

    log = logging.getLogger("webui")
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.propagate = False


def create_service(options: ServerOptions) -> WebUIService:
    """Build the `WebUIService` (device, precision, models registry, outputs, sampler plugins)."""
    from webui.devices import pick_device, pick_dtype
    from webui.queue.workers import pick_devices
    from webui.service import WebUIService

    devices = pick_devices(options.device) if options.device in ("all",) or "," in options.device else []
    device = devices[0] if devices else pick_device(options.device)
    dtype = pick_dtype(device, options.precision)
    # speed and memory (issue 19): per-network precision, LRU of resident models, file hashes cached
    # next to the outputs
    from webui.models.hash_cache import HashCache
    from webui.models.manager import ModelManager
    from webui.models.precision import plan_precision
    from webui.models.registry import load_registry
    from webui.models.speed_options import SpeedOptions
    from webui.threads import set_threads

    set_threads(options.threads)
    precision = plan_precision(device, options.precision)
    dtype = precision.unet

    manager = ModelManager(
        load_registry(options.models),
        device,
        dtype,
        max_loaded=options.models_in_memory,
        hash_cache=HashCache(options.outputs / "cache.json"),
        precision=precision,
        vae_tiling=options.vae_tiling,
        speed=SpeedOptions(compile=options.compile, vram=options.vram),
    )
    return WebUIService(
        registry_path=options.models,
        device=device,
        dtype=dtype,
        outputs_dir=options.outputs,
        samplers_dir=options.samplers_dir,
        lora_dir=options.lora_dir,
        embeddings_dir=options.embeddings_dir,
        vae_dir=options.vae_dir,
        styles_file=options.styles_file,
        manager=manager,
        queue_db=options.queue_db,
        queue_history=options.queue_history,
        allow_local_callbacks=options.allow_local_callbacks,
        devices=devices,
        cluster=options.cluster,
        upscaler_dir=options.upscaler_dir,
    )


def mount_rest_api(app: FastAPI, service: Service, options: ServerOptions) -> None:
    """Add the AUTOMATIC1111-compatible REST routes (``/sdapi/v1/*``) to the running app."""
    from webui.api import mount_api

    sdapi = mount_api(app, service, api_auth=list(options.api_auth) or None)
    # The agent-scheduler queue API (issue #20), behind the same credentials and body limit.
    from webui.api.agent_scheduler import mount_agent_scheduler
    from webui.api.security import guarded_route_class
    from webui.service import WebUIService

    if isinstance(service, WebUIService):
        route_class = guarded_route_class(list(options.api_auth) or None, sdapi.limits.max_body_bytes)
        mount_agent_scheduler(app, service, sdapi, route_class, per_user=bool(options.gradio_auth))


@dataclass
class RunningServer:
    """A started server: the Gradio Blocks, its FastAPI app and the URLs it answers on."""

    demo: gr.Blocks
    app: FastAPI
    local_url: str
    share_url: str | None

    def close(self) -> None:
        self.demo.close(verbose=False)

    def block(self) -> None:
        """Wait until Ctrl+C (then close the server)."""
        self.demo.block_thread()


def start(options: ServerOptions, service: Service, *, out: TextIO | None = None) -> RunningServer:
    """Build the UI for ``service``, start serving it (non-blocking) and mount the REST API if asked.

    The share tunnel is best effort: when it cannot be created (no internet) one line says so and the app
    keeps serving locally.
    """
    from webui.ui import CSS, JS, build_ui

    out = out or sys.stdout
    warnings = check_exposure(options)
    demo = build_ui(service)
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        app, local_url, share_url = demo.launch(
            server_name=options.server_name,
            server_port=options.port,
            share=options.share,
            auth=list(options.gradio_auth) or None,
            auth_message="Stable Diffusion web UI: please log in.",
            inbrowser=options.inbrowser,
            prevent_thread_lock=True,
            show_error=True,
            quiet=True,
            ssr_mode=False,
            css=CSS,
            js=JS,
            run_history=False,  # images and their parameters are in --outputs; no browser-side copies
            footer_links=["api", "settings"],
        )
    try:
        if options.api:
            mount_rest_api(app, service, options)
    except BaseException:
        demo.close(verbose=False)
        raise
    for line in warnings:
        print(line, file=out)
    print(f"* Running on local URL: {local_url} (bound to {options.server_name}:{options.port})", file=out)
    if options.listen:
        print(f"* On your network: http://{lan_address()}:{options.port}/", file=out)
    if options.share:
        if share_url:
            print(f"* Running on public URL: {share_url}", file=out)
        else:
            print("* Could not create a share link (no internet connection?); serving locally only.", file=out)
    if options.api:
        print(f"* REST API: {local_url.rstrip('/')}/sdapi/v1/", file=out)
    out.flush()
    return RunningServer(demo=demo, app=app, local_url=local_url, share_url=share_url)


def serve(options: ServerOptions) -> int:
    """Check the options, build the service, start the server and block until Ctrl+C. Returns an exit code."""
    try:
        check_exposure(options)
    except InsecureLaunchError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        check_models_file(options.models)
    except LaunchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log_progress_to_stderr()
    try:
        service = create_service(options)
    except (ValueError, RuntimeError) as exc:  # unknown/unavailable device, unsupported precision, no cluster
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report_models(service)
    print(f"* Precision: {service.precision_text()}", file=sys.stderr)  # issue 19: the choice, at start
    import torch

    print(f"* CPU threads: {torch.get_num_threads()} (--threads)", file=sys.stderr)
    try:
        server = start(options, service)
    except (LaunchError, OSError) as exc:  # OSError: the port is taken
        service.close()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        server.block()
    finally:
        service.close()
    return 0

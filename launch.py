#!/usr/bin/env python
"""Start the Stable Diffusion web UI.

    python launch.py                                   # http://127.0.0.1:7860, this machine only
    python launch.py --listen --gradio-auth me:secret  # every machine on the LAN, with a login page
    python launch.py --share --gradio-auth me:secret   # a temporary public *.gradio.live URL, with a login page
    python launch.py --api --api-auth me:secret        # also serve the AUTOMATIC1111-style REST API

This is the only place that reads the command line; everything else receives `webui.server.ServerOptions`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _credentials(text: str) -> tuple[tuple[str, str], ...]:
    from webui.server import parse_credentials

    try:
        return parse_credentials(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _device(text: str) -> str:
    """``--device``'s spelling (auto, cuda, cuda:N, mps, cpu); whether the machine has it is checked at start."""
    from webui.devices import parse_device

    try:
        return parse_device(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show ``(default: ...)`` only where there is a meaningful default (not for on/off flags)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface; ``--help`` explains every flag."""
    parser = argparse.ArgumentParser(
        prog="launch.py",
        description="Stable Diffusion 1.x web UI (Gradio) with an optional AUTOMATIC1111-compatible REST API.",
        formatter_class=_HelpFormatter,
    )
    net = parser.add_argument_group("network and security")
    net.add_argument("--port", type=int, default=7860, help="TCP port to serve on.")
    net.add_argument(
        "--listen",
        action="store_true",
        help="Bind 0.0.0.0 so that other machines on your network can connect (default: 127.0.0.1 only). "
        "Requires --gradio-auth.",
    )
    net.add_argument(
        "--share",
        action="store_true",
        help="Also publish a temporary public URL through Gradio's share tunnel. Requires --gradio-auth. "
        "Without internet access the app keeps serving locally.",
    )
    net.add_argument(
        "--gradio-auth",
        type=_credentials,
        metavar="USER:PASS[,USER2:PASS2]",
        help="Protect the web UI with a login page; comma-separated user:password pairs.",
    )
    net.add_argument(
        "--gradio-auth-path",
        type=Path,
        metavar="FILE",
        help="Read web UI credentials from FILE (user:password per line or comma-separated; # comments).",
    )
    net.add_argument(
        "--api",
        action="store_true",
        help="Serve the AUTOMATIC1111-compatible REST API under /sdapi/v1/ next to the UI.",
    )
    net.add_argument(
        "--api-auth",
        type=_credentials,
        metavar="USER:PASS[,USER2:PASS2]",
        help="Protect the REST API with HTTP Basic auth; required with --api when --listen or --share is used.",
    )
    net.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="Allow --listen/--share without passwords (anyone who can reach the address can use the app).",
    )
    net.add_argument("--inbrowser", action="store_true", help="Open the UI in the default web browser on start.")

    run = parser.add_argument_group("models and generation")
    run.add_argument(
        "--models",
        type=Path,
        default=HERE / "models.yaml",
        metavar="PATH",
        help="models.yaml listing the checkpoints the UI offers. A file that is missing or unusable stops the "
        "start (one line says why); a problem in one entry is reported and the other entries are offered.",
    )
    run.add_argument(
        "--device",
        type=_device,
        default="auto",
        metavar="{auto,cuda,cuda:N,mps,cpu}",
        help="Where to run the models; auto picks CUDA, then Apple MPS, then CPU; cuda:N picks GPU number N, "
        "counting from 0.",
    )
    run.add_argument(
        "--precision",
        choices=["auto", "fp32", "fp16", "bf16"],
        default="auto",
        help="Weights/activations dtype; auto is fp16 on CUDA/MPS and fp32 on CPU.",
    )
    run.add_argument(
        "--outputs", type=Path, default=HERE / "outputs", metavar="DIR", help="Where generated PNGs are saved."
    )
    default_plugins = HERE / "plugins"
    run.add_argument(
        "--samplers-dir",
        type=Path,
        default=default_plugins if default_plugins.is_dir() else None,
        metavar="DIR",
        help="Folder of extra sampler plugins (*.py) loaded next to the built-in and installed ones "
        "(default: plugins/ next to launch.py, if it exists).",
    )
    run.add_argument(
        "--upscaler-dir",
        type=Path,
        default=HERE / "models" / "ESRGAN",
        metavar="DIR",
        help="Folder of model upscalers (ESRGAN, SwinIR, DAT, ...: .pth/.safetensors, sub-folders too) for hires "
        "fix and Extras; they need the optional extra: pip install -e '.[upscalers]' (default: models/ESRGAN).",
    )
    return parser


def options_from_args(args: argparse.Namespace):  # -> webui.server.ServerOptions
    """Turn parsed arguments into `ServerOptions` (merging --gradio-auth and --gradio-auth-path)."""
    from webui.server import ServerOptions, read_credentials_file

    gradio_auth = tuple(args.gradio_auth or ())
    if args.gradio_auth_path is not None:
        gradio_auth += read_credentials_file(args.gradio_auth_path)
    return ServerOptions(
        models=args.models,
        outputs=args.outputs,
        port=args.port,
        listen=args.listen,
        share=args.share,
        gradio_auth=gradio_auth,
        api=args.api,
        api_auth=tuple(args.api_auth or ()),
        device=args.device,
        precision=args.precision,
        samplers_dir=args.samplers_dir,
        inbrowser=args.inbrowser,
        insecure_no_auth=args.insecure_no_auth,
        upscaler_dir=args.upscaler_dir,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        options = options_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    from webui.server import serve

    return serve(options)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main())

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
    from webui.queue.workers import parse_device_list  # also cuda:0,cuda:1 and all: one worker each (#20)

    try:
        return parse_device_list(text)
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
        "counting from 0. A list (cuda:0,cuda:1) or all runs one worker per device, each with its own models.",
    )
    run.add_argument(
        "--precision",
        choices=["auto", "fp32", "fp16", "bf16"],
        default="auto",
        help="Weights/activations dtype; auto is fp16 on CUDA/MPS; on the CPU bf16 for the UNet and VAE where the "
        "CPU computes bf16 natively (AVX512-BF16/AMX), else fp32. The choice is printed at start.",
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
    # LoRA (issue 15): AUTOMATIC1111's flag name and default folder.
    run.add_argument(
        "--lora-dir",
        type=Path,
        default=HERE / "models" / "Lora",
        metavar="DIR",
        help="Folder of LoRA files (.safetensors, .pt; sub-folders too) that <lora:NAME:WEIGHT> in a prompt uses "
        "(default: models/Lora next to launch.py; a missing folder is empty).",
    )
    # Extra networks (issue 15): AUTOMATIC1111's flag names; a missing folder is simply empty.
    run.add_argument(
        "--embeddings-dir",
        type=Path,
        default=HERE / "models" / "embeddings",
        metavar="DIR",
        help="Textual-inversion embeddings (.pt, .bin, .safetensors; sub-folders too); the file name is the word "
        "to type in a prompt.",
    )
    run.add_argument(
        "--vae-dir",
        type=Path,
        default=HERE / "models" / "VAE",
        metavar="DIR",
        help="VAE files (.safetensors, .pt, .ckpt) and diffusers VAE folders offered by the SD VAE dropdown.",
    )
    run.add_argument(
        "--styles-file",
        type=Path,
        default=None,
        metavar="PATH",
        help="AUTOMATIC1111's styles.csv (name,prompt,negative_prompt) offered as prompt styles "
        "(default: styles.csv next to the --models file).",
    )
    # --- speed and memory (issue 19) ---
    perf = parser.add_argument_group("speed and memory")
    perf.add_argument(
        "--models-in-memory",
        type=int,
        default=1,
        metavar="N",
        help="How many models stay loaded; switching to one of them is instant. Beyond N the least recently "
        "used is unloaded. Each SD 1.5 model takes about 4 GB (fp32) or 2 GB (fp16/bf16).",
    )
    perf.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="CPU threads for the models (default: the physical cores this process may use).",
    )
    perf.add_argument(
        "--vae-tiling",
        choices=["auto", "on", "off"],
        default="auto",
        help="Decode and encode large images layer by layer in bands of rows, in bounded memory (the same image; "
        "the layers' activations go to temporary files in TMPDIR). "
        "auto: above 1024x1024 pixels or when the untiled activations would not fit in free memory.",
    )
    # --compile, --medvram, --lowvram (issue 19; webui/models/speed_options.py)
    perf.add_argument(
        "--compile",
        action="store_true",
        help="Run the UNet through torch.compile (inductor): the first image at each new size waits for the "
        "compile (minutes on a CPU), later steps at that size are faster. Interrupt acts between steps.",
    )
    vram = perf.add_mutually_exclusive_group()
    vram.add_argument(
        "--medvram",
        action="store_true",
        help="GPU: keep text encoder, UNet and VAE in CPU memory and move each to the GPU only while it runs "
        "(as AUTOMATIC1111's flag): less VRAM, a little slower.",
    )
    vram.add_argument(
        "--lowvram",
        action="store_true",
        help="GPU: like --medvram, and the UNet's blocks move to the GPU one at a time: least VRAM, much slower.",
    )
    # --- durable queue, queue API callbacks, workers (issue #20) ---
    queue = parser.add_argument_group("queue")
    queue.add_argument(
        "--queue-db",
        type=Path,
        default=None,
        metavar="PATH",
        help="SQLite database of the job queue (default: queue.sqlite3 in --outputs): queued jobs survive a "
        "restart or a crash and run again in their order. A file that is not a usable queue database is moved "
        "aside at start.",
    )
    queue.add_argument(
        "--queue-history", type=int, default=1000, metavar="N", help="How many finished jobs the queue keeps."
    )
    queue.add_argument(
        "--allow-local-callbacks",
        action="store_true",
        help="Let queue API callback_url point at this machine or at link-local/cloud metadata addresses "
        "addresses (refused by default).",
    )
    queue.add_argument(
        "--cluster",
        default=None,
        metavar="ADDRESS",
        help="Run generation on the Ray cluster at ADDRESS (auto: the one 'ray start' runs here; or "
        "ray://host:10001): one worker per GPU, or per CPU core. Every node needs the models.yaml files at the "
        "same paths. Needs: pip install -e '.[cluster]'.",
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
        lora_dir=args.lora_dir,
        embeddings_dir=args.embeddings_dir,
        vae_dir=args.vae_dir,
        styles_file=args.styles_file,
        # speed and memory (issue 19)
        models_in_memory=args.models_in_memory,
        threads=args.threads,
        vae_tiling=args.vae_tiling,
        compile=args.compile,  # issue 19: --compile, --medvram, --lowvram
        vram="lowvram" if args.lowvram else "medvram" if args.medvram else "normal",
        queue_db=args.queue_db if args.queue_db is not None else args.outputs / "queue.sqlite3",
        queue_history=args.queue_history,
        allow_local_callbacks=args.allow_local_callbacks,
        cluster=args.cluster,
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

"""Token merging and DeepCache (issue 19): seconds and PSNR against the exact image, side by side.

On one SD 1.5-size random-weight model (``--precision`` as the app picks it: ``auto`` by default), txt2img
DDIM ``--steps`` steps (5), CFG 7, one image, the same seed; rows ``exact`` (both off), ``ToMe 0.3``,
``ToMe 0.5`` (``token_merging_ratio``), ``DeepCache N=2`` and ``DeepCache N=3`` (``deepcache_interval``,
branch 0). Each row gives the seconds end to end (prompt encoding, sampling, VAE decode: the decode is the
same for every row), wall clock and CPU time of this process (the CPU time is what to compare on a machine
shared with other work), the ratio of each to ``exact``'s and the PSNR of its image against ``exact``'s.

``--images DIR`` saves each row's PNG there and takes the exact image from there when ``exact`` is not among
``--rows``: the rows can then run as separate calls, each under the 10 minutes of the shared heavy lock.

Usage::

    flock /tmp/heavy.lock nice -n 5 python -m bench.bench_tome_deepcache --sizes 512 [--keep /tmp/sd15.safetensors]
    ... --sizes 512 --rows exact "ToMe 0.5" --images /tmp/rows; ... --rows "DeepCache N=3" --images /tmp/rows

Random weights make a chaotic network: the PSNR here is a lower bound of what a trained model shows, where
neighbouring steps and neighbouring tokens are far more alike (the papers' premise).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from bench.bench_speed import NEGATIVE, PROMPT, SEED, ensure_checkpoint, psnr

ROWS: dict[str, dict[str, Any]] = {
    "exact": {},
    "ToMe 0.3": {"token_merging_ratio": 0.3},
    "ToMe 0.5": {"token_merging_ratio": 0.5},
    "DeepCache N=2": {"deepcache_interval": 2, "deepcache_branch": 0},
    "DeepCache N=3": {"deepcache_interval": 3, "deepcache_branch": 0},
}


def run(model: Any, size: int, steps: int, speedups: dict[str, Any]) -> tuple[float, float, np.ndarray, str]:
    """(wall seconds, CPU seconds of this process, image, infotext) of one txt2img end to end."""
    from webui.pipeline import GenerationRequest, generate, resolve_request
    from webui.sampling import create_sampler_registry

    request = GenerationRequest(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        seed=SEED,
        steps=steps,
        cfg_scale=7.0,
        width=size,
        height=size,
        sampler_name="DDIM",
        **speedups,
    )
    resolved = resolve_request(request, create_sampler_registry(), (size, size))
    start, cpu_start = time.perf_counter(), time.process_time()
    result = generate(model, resolved)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return wall, cpu, np.asarray(result.images[0]), result.infotexts[0]


def report_row(
    size: int, name: str, row: tuple[float, float, np.ndarray, str], base: tuple[float, float, np.ndarray] | None
) -> None:
    """One line of the table, printed as soon as the row is done (a run cut by the lock's time limit keeps its
    finished rows); ``base`` is exact's (wall, CPU, image), its seconds None when read from a file."""
    wall, cpu, image, info = row
    quality = psnr(image, base[2]) if base is not None else math.nan
    shown = "identical" if math.isinf(quality) else f"{quality:.1f} dB"
    keys = ", ".join(p for p in info.splitlines()[-1].split(", ") if "merging" in p or "DeepCache" in p)
    if base is not None and base[0] > 0:
        ratios = f"{wall / base[0]:8.2f} {cpu:8.1f} {cpu / base[1]:8.2f}"
    else:
        ratios = f"{'-':>8s} {cpu:8.1f} {'-':>8s}"
    print(f"{name:14s} {wall:8.1f} {ratios}   {shown:>13s}   {keys}", flush=True)


def main() -> None:
    from webui.models.loading import load_model
    from webui.models.precision import plan_precision

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--keep", type=Path, help="use (or write, then keep) the SD 1.5-size checkpoint here")
    parser.add_argument("--images", type=Path, help="save each row's image here; the exact one is read from here")
    parser.add_argument("--warmup", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = ensure_checkpoint(args.keep, Path(tmp))
        plan = plan_precision("cpu", args.precision)
        model = load_model(
            path, dtype=plan.unet, vae_dtype=plan.vae, text_encoder_dtype=plan.text_encoder, compute_hash=False
        )
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; precision {plan.describe()}")
        print(f"DDIM {args.steps} steps, CFG 7, batch 1, seed {SEED}", flush=True)
        for size in args.sizes:
            if args.warmup:
                run(model, size, args.steps, {})
            print(f"\n{size}x{size}       wall s  x exact    CPU s  x exact   PSNR vs exact   infotext", flush=True)
            base: tuple[float, float, np.ndarray] | None = None
            if "exact" not in args.rows and args.images is not None:
                base = (0.0, 0.0, np.asarray(Image.open(args.images / f"{size}-exact.png")))
            for name in sorted(dict.fromkeys(args.rows), key=lambda n: n != "exact"):
                row = run(model, size, args.steps, ROWS[name])
                if args.images is not None:
                    args.images.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(row[2]).save(args.images / f"{size}-{name}.png")
                if name == "exact":
                    base = row[:3]
                report_row(size, name, row, base)


if __name__ == "__main__":
    main()

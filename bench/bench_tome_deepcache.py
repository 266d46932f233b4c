"""Token merging and DeepCache (issue 19): seconds and PSNR against the exact image, side by side.

On one SD 1.5-size random-weight model (``--precision`` as the app picks it: ``auto`` by default), txt2img
DDIM ``--steps`` steps (6), CFG 7, one image, the same seed; rows ``exact`` (both off), ``ToMe 0.3``,
``ToMe 0.5`` (``token_merging_ratio``), ``DeepCache N=2`` and ``DeepCache N=3`` (``deepcache_interval``,
branch 0). Each row gives the seconds to the last sampling step (prompt encoding and sampling), the seconds
end to end (with the VAE decode, which neither option changes), the ratio of each to ``exact`` and the PSNR
of its image against ``exact``'s. One call per row; ``--warmup`` adds an untimed exact call first.

Usage::

    flock /tmp/heavy.lock nice -n 5 python -m bench.bench_tome_deepcache --sizes 512 [--keep /tmp/sd15.safetensors]

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

from bench.bench_speed import NEGATIVE, PROMPT, SEED, ensure_checkpoint, psnr

ROWS: dict[str, dict[str, Any]] = {
    "exact": {},
    "ToMe 0.3": {"token_merging_ratio": 0.3},
    "ToMe 0.5": {"token_merging_ratio": 0.5},
    "DeepCache N=2": {"deepcache_interval": 2, "deepcache_branch": 0},
    "DeepCache N=3": {"deepcache_interval": 3, "deepcache_branch": 0},
}


def run(model: Any, size: int, steps: int, speedups: dict[str, Any]) -> tuple[float, float, np.ndarray, str]:
    """(seconds to the last step, seconds end to end, image, infotext) of one txt2img."""
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
    last_step: list[float] = []
    start = time.perf_counter()
    result = generate(model, resolved, progress=lambda p: last_step.append(time.perf_counter()))
    end = time.perf_counter()
    return last_step[-1] - start, end - start, np.asarray(result.images[0]), result.infotexts[0]


def main() -> None:
    from webui.models.loading import load_model
    from webui.models.precision import plan_precision

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--keep", type=Path, help="use (or write, then keep) the SD 1.5-size checkpoint here")
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
            results = {
                name: run(model, size, args.steps, ROWS[name])
                for name in ["exact", *(r for r in args.rows if r != "exact")]
            }
            base_sampling, base_total, reference, _ = results["exact"]
            print(f"\n{size}x{size}       sampling s  x exact   total s  x exact   PSNR vs exact   infotext")
            for name, (sampling, total, image, info) in results.items():
                quality = psnr(image, reference)
                shown = "identical" if math.isinf(quality) else f"{quality:.1f} dB"
                keys = ", ".join(p for p in info.splitlines()[-1].split(", ") if "merging" in p or "DeepCache" in p)
                print(
                    f"{name:14s} {sampling:10.2f} {sampling / base_sampling:8.2f} {total:9.2f} "
                    f"{total / base_total:8.2f}   {shown:>13s}   {keys}",
                    flush=True,
                )


if __name__ == "__main__":
    main()

"""Time one txt2img image with the default model (the bundled demo) at its native size.

Loads the default entry of ``models.yaml`` exactly as the app does, generates one warm-up image,
then times ``--repeats`` more with the entry's recommended sampler, steps and CFG scale and
prints the median. Target on the 2-core reference machine: under 2 s per image.

Usage: ``OMP_NUM_THREADS=2 python -m bench.bench_demo [--repeats 5] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=ROOT / "models.yaml")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt", default="a red star on a blue background")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from webui.models.loading import load_model
    from webui.models.registry import load_registry
    from webui.pipeline import generate, native_size, resolve_request
    from webui.pipeline.requests import GenerationRequest
    from webui.sampling import create_sampler_registry

    entry = load_registry(args.models).default
    start = time.perf_counter()
    model = load_model(entry.path, tokenizer=entry.tokenizer, native_size=entry.native_size, name=entry.name)
    load_seconds = time.perf_counter() - start
    samplers = create_sampler_registry()
    request = GenerationRequest(
        prompt=args.prompt,
        sampler_name=entry.sampler or "Euler a",
        scheduler=entry.scheduler or "Automatic",
        steps=entry.steps or 20,
        cfg_scale=entry.cfg_scale or 7.0,
        seed=1,
    )
    generate(model, resolve_request(request, samplers, native_size(model)))  # warm-up
    times = []
    for i in range(args.repeats):
        start = time.perf_counter()
        seeded = GenerationRequest(**{**request.__dict__, "seed": 2 + i})
        result = generate(model, resolve_request(seeded, samplers, native_size(model)))
        times.append(time.perf_counter() - start)
    w, h = result.images[0].size
    print(
        f"model {entry.name}: load {load_seconds:.2f} s; txt2img {w}x{h}, {request.sampler_name}, "
        f"{request.steps} steps, CFG {request.cfg_scale}, {args.threads} threads: "
        f"median {statistics.median(times):.3f} s (min {min(times):.3f}, max {max(times):.3f}) over {args.repeats}"
    )


if __name__ == "__main__":
    main()

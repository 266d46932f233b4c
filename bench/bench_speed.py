"""End to end txt2img, ours against diffusers on one SD 1.5-size random-weight model, side by side.

CPU mode (default), for each size (256 and 512 px): DDIM 4 steps, CFG 7, one image, the same seed and
prompt; rows

- ``ours default``: what ``--precision auto`` picks on this CPU (:mod:`webui.models.precision`);
- ``ours fp32``: ``--precision fp32``;
- ``ours bf16 plan``: the plan ``auto`` picks on a CPU *with* native bf16 (UNet and VAE bf16, text encoder
  fp32), forced here so that its PSNR is known on any CPU (where bf16 is emulated it is slow: the reason
  ``auto`` does not pick it there);
- ``diffusers fp32`` and ``diffusers bf16``: ``StableDiffusionPipeline`` holding the very same weights
  (sharing our tensors through our diffusers <-> CompVis key map).

Each row gives seconds end to end (prompt encoding, sampling, VAE decode; no PNG), the ratio to diffusers
fp32, and the PSNR of its image against diffusers fp32's. On the CPU each row is one call (``--warmup``
adds an untimed one before it; first-call costs are small next to these seconds).

CUDA mode (``--device cuda``): 512x512, batch 1, fp16, Euler 20 steps: it/s and peak VRAM of ours, ours
with ``--compile``, ``--medvram`` and ``--lowvram``, and of diffusers (PyTorch SDPA attention). It runs
only where CUDA exists (it says so and stops elsewhere); written to run unchanged on a CUDA machine, not
run yet (no GPU here).

``--compile-cpu tiny|sd15``: ``--compile`` against eager on the CPU, same model, same run: seconds per
step of each, the speed-up, the compile time (the first image's extra seconds) and the PSNR between them.

Usage::

    flock /tmp/heavy.lock python -m bench.bench_speed --sizes 256 [--keep /tmp/sd15.safetensors]
    python -m bench.bench_speed --device cuda
    python -m bench.bench_speed --compile-cpu tiny --sizes 64 256 --steps 4

The SD 1.5-size checkpoint (4.3 GB fp32) is written to a temporary folder unless ``--keep`` names one
(written there the first time, reused after).
"""

from __future__ import annotations

import argparse
import copy
import gc
import math
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

PROMPT, NEGATIVE, SEED = "a photograph of an astronaut riding a horse", "blurry", 1234


def psnr(image: np.ndarray, reference: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 images (inf when equal)."""
    mse = float(np.mean((image.astype(np.float64) - reference.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def ensure_checkpoint(keep: Path | None, folder: Path) -> Path:
    from bench.bench_switch import write_sd15_file

    path = keep or folder / "sd15" / "sd15-random.safetensors"
    if not path.exists():
        write_sd15_file(path, torch.float32)
    return path


def diffusers_pipeline(model: Any, *, share_text_encoder: bool = True, scheduler: str = "DDIM") -> Any:
    """diffusers' ``StableDiffusionPipeline`` holding ``model``'s own weight tensors (no copy)."""
    import diffusers

    from bench.bench_models import SD15_UNET, SD15_VAE
    from webui.models.diffusers_folder import unet_key_map, vae_key_map

    parts: dict[str, Any] = {}
    for name, ours, cls, config, key_map in (
        ("unet", model.unet, diffusers.UNet2DConditionModel, SD15_UNET, unet_key_map),
        ("vae", model.vae, diffusers.AutoencoderKL, SD15_VAE, vae_key_map),
    ):
        with torch.device("meta"):
            theirs = cls(**config)
        shapes = {k: v.shape for k, v in theirs.state_dict().items()}
        state = ours.state_dict()
        theirs.load_state_dict({t: state[o].view(shapes[t]) for o, t in key_map(shapes).items()}, assign=True)
        parts[name] = theirs.eval().requires_grad_(False)
    text = model.text_encoder.model
    kwargs = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
    if scheduler == "DDIM":
        sched = diffusers.DDIMScheduler(**kwargs, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    else:
        sched = diffusers.EulerDiscreteScheduler(**kwargs, steps_offset=1)
    pipe = diffusers.StableDiffusionPipeline(
        vae=parts["vae"],
        text_encoder=text if share_text_encoder else copy.deepcopy(text),
        tokenizer=model.text_encoder.tokenizer,
        unet=parts["unet"],
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.scheduler = sched  # the constructor may rewrite a legacy config; keep ours
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_ours(model: Any, size: int, steps: int, sampler: str = "DDIM", seed: int = SEED) -> np.ndarray:
    from webui.pipeline import GenerationRequest, generate, resolve_request
    from webui.sampling import create_sampler_registry

    request = GenerationRequest(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        seed=seed,
        steps=steps,
        cfg_scale=7.0,
        width=size,
        height=size,
        sampler_name=sampler,
    )
    result = generate(model, resolve_request(request, create_sampler_registry(), (size, size)))
    return np.asarray(result.images[0])


def run_diffusers(pipe: Any, size: int, steps: int, seed: int = SEED) -> np.ndarray:
    with torch.no_grad():
        image = pipe(
            PROMPT,
            negative_prompt=NEGATIVE,
            num_inference_steps=steps,
            guidance_scale=7.0,
            height=size,
            width=size,
            generator=torch.Generator("cpu").manual_seed(seed),
            output_type="np",
        ).images[0]
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def timed(call: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    call()  # warm-up at the same size: first-call allocations and kernel choices are not measured
    start = time.perf_counter()
    image = call()
    return time.perf_counter() - start, image


def cpu_bench(path: Path, sizes: list[int], steps: int, with_bf16: bool, warmup: bool) -> None:
    from webui.models.loading import load_model
    from webui.models.precision import PrecisionPlan, plan_precision

    def load(plan: PrecisionPlan) -> Any:
        return load_model(
            path, dtype=plan.unet, vae_dtype=plan.vae, text_encoder_dtype=plan.text_encoder, compute_hash=False
        )

    def measure(call: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
        if warmup:
            return timed(call)
        start = time.perf_counter()
        image = call()
        return time.perf_counter() - start, image

    auto = plan_precision("cpu", "auto")
    native_plan = PrecisionPlan(torch.bfloat16, torch.bfloat16, torch.float32, "auto on a CPU with native bf16")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; --precision auto here: {auto.describe()}")
    print(f"DDIM {steps} steps, CFG 7, batch 1; seconds end to end (prompt, sampling, VAE decode)", flush=True)
    for size in sizes:
        rows: dict[str, tuple[float, np.ndarray]] = {}
        model = load(PrecisionPlan.uniform(torch.float32, "fp32"))
        rows["ours fp32"] = measure(partial(run_ours, model, size, steps))
        pipe = diffusers_pipeline(model)
        rows["diffusers fp32"] = measure(partial(run_diffusers, pipe, size, steps))
        if with_bf16:
            pipe.unet.to(torch.bfloat16)
            pipe.vae.to(torch.bfloat16)
            pipe.text_encoder = copy.deepcopy(pipe.text_encoder).to(torch.bfloat16)
            rows["diffusers bf16"] = measure(partial(run_diffusers, pipe, size, steps))
        del pipe
        if auto == PrecisionPlan.uniform(torch.float32, auto.reason):
            rows["ours default"] = rows["ours fp32"]  # the very same path: fp32 on every network
        else:
            del model
            gc.collect()
            model = load(auto)
            rows["ours default"] = measure(partial(run_ours, model, size, steps))
        del model
        gc.collect()
        if with_bf16:
            model = load(native_plan)
            rows["ours bf16 plan"] = measure(partial(run_ours, model, size, steps))
            del model
            gc.collect()
        reference_seconds, reference = rows["diffusers fp32"]
        print(f"\n{size}x{size}        seconds   x diffusers fp32   PSNR vs diffusers fp32")
        for name in ("ours default", "ours fp32", "ours bf16 plan", "diffusers fp32", "diffusers bf16"):
            if name not in rows:
                continue
            seconds, image = rows[name]
            quality = psnr(image, reference)
            shown = "identical" if math.isinf(quality) else f"{quality:.1f} dB"
            print(f"{name:16s} {seconds:8.2f}   {seconds / reference_seconds:16.2f}   {shown:>22s}", flush=True)


def cuda_bench(path: Path, steps: int) -> None:
    from webui.models.loading import load_model
    from webui.models.speed_options import SpeedOptions

    if not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available here (the CPU table is the default mode)")
    device = torch.device("cuda")
    size = 512

    def its(call: Callable[[], object]) -> tuple[float, float]:
        call()  # warm-up (and, with --compile, the compile): not measured
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        call()
        torch.cuda.synchronize()
        return steps / (time.perf_counter() - start), torch.cuda.max_memory_allocated() / 2**30

    def ours(label: str, options: SpeedOptions) -> None:
        gc.collect()
        torch.cuda.empty_cache()
        model = load_model(path, device=options.load_device(device), dtype=torch.float16, compute_hash=False)
        options.apply(model, device)
        start = time.perf_counter()
        run_ours(model, size, 1, "Euler")  # first call: compile time with --compile
        first = time.perf_counter() - start
        rate, peak = its(partial(run_ours, model, size, steps, "Euler"))
        print(f"{label:22s} {rate:8.2f}             {peak:6.2f}      (first 1-step image {first:.1f} s)", flush=True)
        del model

    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}; 512x512, batch 1, fp16, Euler {steps}")
    print("                       it/s (whole image)   peak VRAM GiB")
    ours("ours", SpeedOptions())
    ours("ours --compile", SpeedOptions(compile=True))
    ours("ours --medvram", SpeedOptions(vram="medvram"))
    ours("ours --lowvram", SpeedOptions(vram="lowvram"))
    gc.collect()
    torch.cuda.empty_cache()
    model = load_model(path, device=device, dtype=torch.float16, compute_hash=False)
    pipe = diffusers_pipeline(model, scheduler="Euler")
    from diffusers.models.attention_processor import AttnProcessor2_0

    pipe.unet.set_attn_processor(AttnProcessor2_0())
    rate, peak = its(partial(run_diffusers, pipe, size, steps))
    print(f"diffusers (SDPA)       {rate:8.2f}             {peak:6.2f}", flush=True)
    del pipe


def compile_bench(path: Path | None, sizes: list[int], steps: int) -> None:
    """--compile on the CPU: compile time and per-step time against eager, same model, same run.

    Eager first, then the same model compiled in place; each timed on a whole image (Euler, ``steps`` steps,
    CFG 7, batch 1) after a 1-step warm-up image (the compiled one's warm-up is the compile).
    """
    from webui.models.compile import compile_unet, uncompile
    from webui.models.loading import load_model

    if path is None:
        from tests.support.tiny_model import write_tiny_model

        folder = Path(tempfile.mkdtemp())
        path = write_tiny_model(folder).path
    model = load_model(path, compute_hash=False)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {path.name}; Euler {steps} steps, CFG 7")
    print("size    eager s/step   compiled s/step   speed-up   compile s   PSNR compiled vs eager")
    for size in sizes:
        uncompile(model.unet)
        start = time.perf_counter()
        run_ours(model, size, 1, "Euler")
        eager_first = time.perf_counter() - start
        start = time.perf_counter()
        eager_image = run_ours(model, size, steps, "Euler")
        eager = (time.perf_counter() - start) / steps
        compile_unet(model.unet)
        start = time.perf_counter()
        run_ours(model, size, 1, "Euler")
        compile_seconds = time.perf_counter() - start - eager_first  # the 1-step image's extra time
        start = time.perf_counter()
        image = run_ours(model, size, steps, "Euler")
        compiled = (time.perf_counter() - start) / steps
        quality = psnr(image, eager_image)
        shown = "identical" if math.isinf(quality) else f"{quality:.1f} dB"
        ratio = eager / compiled
        print(
            f"{size:4d}    {eager:12.3f}   {compiled:15.3f}   {ratio:8.2f}   {compile_seconds:9.1f}   {shown}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="image sizes (CPU mode)")
    parser.add_argument("--steps", type=int, help="sampling steps (default: 4 on the CPU, 20 on CUDA)")
    parser.add_argument(
        "--no-bf16",
        action="store_true",
        help="skip the two bf16 rows (on a CPU without native bf16 they take many times the fp32 time)",
    )
    parser.add_argument("--warmup", action="store_true", help="one untimed call before each timed one (CPU)")
    parser.add_argument("--keep", type=Path, help="the SD 1.5-size checkpoint to use (written if missing)")
    parser.add_argument(
        "--compile-cpu",
        choices=["tiny", "sd15"],
        help="instead: --compile against eager on the CPU (compile time, s/step), on the tiny test model or SD 1.5",
    )
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():  # before writing a 4 GB checkpoint
        raise SystemExit("--device cuda: no CUDA device is available here (the CPU table is the default mode)")
    if args.compile_cpu == "tiny":
        compile_bench(None, args.sizes, args.steps or 4)
        return
    with tempfile.TemporaryDirectory() as folder:
        path = ensure_checkpoint(args.keep, Path(folder))
        if args.compile_cpu == "sd15":
            compile_bench(path, args.sizes, args.steps or 4)
        elif args.device == "cuda":
            cuda_bench(path, args.steps or 20)
        else:
            cpu_bench(path, args.sizes, args.steps or 4, not args.no_bf16, args.warmup)


if __name__ == "__main__":
    main()

"""Hires fix 512 -> 1024 px on an SD 1.5-size random-weight model: ours against diffusers' two-pipeline chain.

Ours: one ``generate`` with ``HiresRequest(hr_scale=2, hr_upscaler="Latent")``. diffusers: ``StableDiffusionPipeline``
at 512 px with ``output_type="latent"``, ``F.interpolate`` (bilinear) to 128x128 latents, then
``StableDiffusionImg2ImgPipeline`` (sharing the same modules) with ``strength=d`` and ``int(N / d)`` steps. Both
from the same single file (about 9 GB of RAM while both are loaded). Prints wall time and the peak resident
memory during each run (polled every 50 ms), side by side, and how far apart the two results are (the largest
pixel difference, the mean one and the PSNR).

Usage (heavy: run alone): ``OMP_NUM_THREADS=2 python -m bench.bench_hires [--steps 2] [--hr-steps 2]
[--size 512] [--only ours|diffusers]``.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

PROMPT, SEED = "a photo of a cat", 1


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def measured(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """``(result, seconds, peak RSS in GiB during the call)``."""
    peak, done = [rss_bytes()], threading.Event()

    def poll() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], rss_bytes())

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    start = time.perf_counter()
    try:
        result = fn()
    finally:
        done.set()
        thread.join()
    return result, time.perf_counter() - start, max(peak[0], rss_bytes()) / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # 2, not 1: for one step diffusers' "linspace" spacing samples at t=0 (np.linspace(0, 999, 1)), where
    # k-diffusion and AUTOMATIC1111 (and we) sample at t=999: the two chains would differ by design.
    parser.add_argument("--steps", type=int, default=2, help="first-pass steps (2 or more)")
    parser.add_argument("--hr-steps", type=int, default=2, help="second-pass steps N")
    parser.add_argument("--strength", type=float, default=0.5, help="denoising strength d")
    parser.add_argument("--size", type=int, default=512, help="first-pass side in pixels (the result is twice that)")
    parser.add_argument(
        "--only",
        choices=("both", "ours", "diffusers"),
        default="both",
        help="measure one side only (on a loaded 2-core machine the pair can take over 10 minutes)",
    )
    args = parser.parse_args()

    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel

    from tests.test_checkpoint_full_sd15 import write_clip_sized_tokenizer, write_sd15_config_folder
    from webui.models.checkpoint import save_single_file
    from webui.models.loading import load_model
    from webui.models.unet import UNetConfig, UNetModel
    from webui.models.vae import AutoencoderKL, VAEConfig
    from webui.pipeline import GenerationRequest, generate, resolve_request
    from webui.pipeline.hires import HiresRequest
    from webui.sampling import create_sampler_registry

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = write_sd15_config_folder(root / "config")
        torch.manual_seed(0)
        unet, vae = UNetModel(UNetConfig()), AutoencoderKL(VAEConfig())
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(config / "text_encoder"))
        path = save_single_file(root / "model" / "sd15-random.safetensors", unet, vae, text)
        del unet, vae, text
        write_clip_sized_tokenizer(path.parent / "tokenizer")
        ours_model = load_model(path, compute_hash=False)
        pipe = diffusers.StableDiffusionPipeline.from_single_file(
            str(path), config=str(config), local_files_only=True, safety_checker=None, torch_dtype=torch.float32
        )
        pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
        pipe.tokenizer.model_max_length = 77  # a vocab.json/merges.txt folder says 1e30 (FACTS.md, transformers 5)
        img2img = diffusers.StableDiffusionImg2ImgPipeline(**pipe.components)

        request = GenerationRequest(
            prompt=PROMPT,
            sampler_name="Euler",
            steps=args.steps,
            seed=SEED,
            width=args.size,
            height=args.size,
            hires=HiresRequest(hr_scale=2, hr_second_pass_steps=args.hr_steps, denoising_strength=args.strength),
        )
        resolved = resolve_request(request, create_sampler_registry(), (512, 512))
        latent_side = 2 * args.size // 8

        def ours() -> Any:
            return generate(ours_model, resolved).images[0]

        def reference() -> Any:
            with torch.no_grad():
                latents = pipe(
                    PROMPT,
                    num_inference_steps=args.steps,
                    height=args.size,
                    width=args.size,
                    guidance_scale=request.cfg_scale,  # diffusers' default is 7.5, AUTOMATIC1111's (ours) 7
                    output_type="latent",
                    generator=torch.Generator("cpu").manual_seed(SEED),
                ).images
                return img2img(
                    PROMPT,
                    image=F.interpolate(latents, size=(latent_side, latent_side), mode="bilinear"),
                    strength=args.strength,
                    num_inference_steps=int(args.hr_steps / args.strength),
                    guidance_scale=request.cfg_scale,
                    generator=torch.Generator("cpu").manual_seed(SEED),
                ).images[0]

        steps = f"{args.steps} + {args.hr_steps} Euler steps (d={args.strength}), CFG {request.cfg_scale}"
        print(f"hires fix {args.size} -> {2 * args.size}, {steps}, fp32, CPU")
        print(f"{'':10} {'seconds':>9} {'peak RSS GiB':>13}", flush=True)
        shown = {}
        # Each side's row is printed as soon as it is measured, ours first (a run cut short still says something).
        for name, run in (("ours", ours), ("diffusers", reference)):
            if args.only in ("both", name):
                shown[name], seconds, gib = measured(run)
                print(f"{name:10} {seconds:9.1f} {gib:13.2f}", flush=True)
        if len(shown) == 2:
            a, b = (np.asarray(shown[name], dtype=np.float64) for name in ("ours", "diffusers"))
            difference, mse = np.abs(a - b), float(((a - b) ** 2).mean())
            psnr = float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
            print(
                f"size {shown['ours'].size} vs {shown['diffusers'].size}; pixel difference: max {difference.max():.0f},"
                f" mean {difference.mean():.3f} levels, PSNR {psnr:.1f} dB"
            )


if __name__ == "__main__":
    main()

"""Sampler overhead per step: everything except the model, against one SD 1.5 UNet step.

For each registered sampler, runs ``sample()`` at 512x512 (a (1, 4, 64, 64) latent) with a
zero-cost eps model (it returns a fixed tensor), so the time measured is the schedule, the
denoiser wrapper, the cancel check and the sampler's own tensor maths. That time per model call
is compared with one real forward of the full-size UNet (``UNetModel(UNetConfig())``, random
weights, batch 2 = one classifier-free-guidance step), timed in the same process, or with
``--unet-seconds`` (FACTS.md: about 10.9 s on the 2-core reference machine).

Usage: ``OMP_NUM_THREADS=2 python -m bench.bench_samplers [--steps 20] [--unet-seconds 10.9]``.
Exit status 1 if any sampler's overhead reaches 1% of the UNet time.
"""

from __future__ import annotations

import argparse
import time

import torch

from webui.models.noise_schedule import scaled_linear_alphas_cumprod
from webui.models.unet import UNetConfig, UNetModel
from webui.sampling import DiscreteEpsDenoiser, create_sampler_registry, sample

LATENT = (1, 4, 64, 64)
LIMIT_PERCENT = 1.0


def time_unet(latent: tuple[int, ...] = LATENT, batch: int = 2) -> float:
    """Seconds of one SD 1.5 UNet forward (random weights, fp32, CPU) at ``latent``'s size, batch ``batch``."""
    unet = UNetModel(UNetConfig()).eval()
    context = torch.randn(batch, 77, 768)
    timesteps = torch.full((batch,), 500.0)
    unet(torch.randn(batch, 4, 16, 16), timesteps, context)  # warm-up at a small size
    x = torch.randn(batch, *latent[1:])
    start = time.perf_counter()
    unet(x, timesteps, context)
    return time.perf_counter() - start


def time_sampler_overhead(name: str, steps: int, repeats: int = 3) -> tuple[float, int]:
    """(best seconds of one full run, model calls per run) with a model that costs nothing."""
    registry = create_sampler_registry()
    alphas_cumprod = scaled_linear_alphas_cumprod()
    eps = torch.randn(LATENT, generator=torch.Generator().manual_seed(0)) * 0.1
    calls = 0

    def zero_cost_eps(x_in: torch.Tensor, t: torch.Tensor, step: int) -> torch.Tensor:
        nonlocal calls
        calls += 1
        return eps

    denoiser = DiscreteEpsDenoiser(zero_cost_eps, alphas_cumprod)
    noise = torch.randn(LATENT, generator=torch.Generator().manual_seed(1))
    best = float("inf")
    for _ in range(repeats + 1):  # the first run warms up
        calls = 0
        start = time.perf_counter()
        sample(
            registry.get(name),
            denoiser,
            noise,
            steps=steps,
            alphas_cumprod=alphas_cumprod,
            generator=torch.Generator().manual_seed(2),
            cancel=lambda: False,
            callback=lambda info: None,
        )
        best = min(best, time.perf_counter() - start)
    return best, calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--unet-seconds", type=float, default=None, help="skip timing the UNet; use this instead")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)

    if args.unet_seconds is None:
        unet_s = time_unet()
        source = "measured: UNetModel(UNetConfig()) fp32 forward, batch 2, 64x64 latent"
    else:
        unet_s = args.unet_seconds
        source = "given with --unet-seconds"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, latent {LATENT}, {args.steps} steps")
    print(f"UNet step (one CFG forward): {unet_s:.2f} s ({source})")
    print(f"{'sampler':<10} {'calls':>5} {'run ms':>8} {'ms/step':>8} {'ms/call':>8} {'% of UNet':>10}")
    worst = 0.0
    for name in [s.name for s in create_sampler_registry()]:
        seconds, calls = time_sampler_overhead(name, args.steps)
        percent = 100 * seconds / (calls * unet_s)
        worst = max(worst, percent)
        print(
            f"{name:<10} {calls:>5} {1e3 * seconds:>8.2f} {1e3 * seconds / args.steps:>8.3f} "
            f"{1e3 * seconds / calls:>8.3f} {percent:>9.4f}%"
        )
    verdict = "PASS" if worst < LIMIT_PERCENT else "FAIL"
    print(f"{verdict}: worst sampler overhead {worst:.4f}% of a UNet step (limit {LIMIT_PERCENT}%)")
    return 0 if worst < LIMIT_PERCENT else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Sampler overhead per step: everything except the model, against one SD 1.5 UNet step and the reference.

For each registered sampler, runs ``sample()`` at 512x512 (a (1, 4, 64, 64) latent) with a
zero-cost eps model (it returns a fixed tensor), so the time measured is the schedule, the
denoiser wrapper, the cancel check and the sampler's own tensor maths. That time per model call
is compared with one real forward of the full-size UNet (``UNetModel(UNetConfig())``, random
weights, batch 2 = one classifier-free-guidance step), timed in the same process, or with
``--unet-seconds`` (FACTS.md: about 10.9 s on the 2-core reference machine). Where diffusers has the
same sampler, its scheduler loop (``set_timesteps``, ``scale_model_input``, ``step``) with the same
zero-cost model is timed beside ours ("ref ms/step").

``--cfg`` also times one guided step of the full UNet at ``--cfg-latent`` (default 32: 256 px) with CFG 7
(batch [uncond; cond]) and with CFG 1 (the conditional half only), through the pipeline's ``cfg_eps_fn``.

Usage: ``OMP_NUM_THREADS=2 python -m bench.bench_samplers [--steps 20] [--unet-seconds 10.9] [--cfg]``.
Exit status 1 if any sampler's overhead reaches 1% of the UNet time.
"""

from __future__ import annotations

import argparse
import inspect
import time

import torch

from webui.models.noise_schedule import scaled_linear_alphas_cumprod
from webui.models.unet import UNetConfig, UNetModel
from webui.sampling import DiscreteEpsDenoiser, create_sampler_registry, sample

LATENT = (1, 4, 64, 64)
LIMIT_PERCENT = 1.0
SD15 = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
REFERENCES = {
    # our sampler -> diffusers scheduler and its configuration (SD 1.5 settings)
    "DDIM": ("DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}),
    "DDPM": ("DDPMScheduler", {"clip_sample": False}),
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "Heun": ("HeunDiscreteScheduler", {}),
    "LMS": ("LMSDiscreteScheduler", {}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {}),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "DPM++ 2M SDE Heun": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_type": "heun"}),
    "DPM++ SDE": ("DPMSolverSDEScheduler", {"noise_sampler_seed": 2}),
    "DPM2": ("KDPM2DiscreteScheduler", {}),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}),
    "LCM": ("LCMScheduler", {}),
    "UniPC": ("UniPCMultistepScheduler", {}),
    "DEIS": ("DEISMultistepScheduler", {}),
    "PLMS": ("PNDMScheduler", {"skip_prk_steps": True, "set_alpha_to_one": False, "steps_offset": 1}),
}


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


def time_reference(name: str, steps: int, repeats: int = 3) -> float | None:
    """Best seconds of diffusers' scheduler loop for ``name`` with a zero-cost model, or None without one."""
    if name not in REFERENCES:
        return None
    try:
        import diffusers
    except ImportError:
        return None
    class_name, config = REFERENCES[name]
    eps = torch.randn(LATENT, generator=torch.Generator().manual_seed(0)) * 0.1
    noise = torch.randn(LATENT, generator=torch.Generator().manual_seed(1))
    best = float("inf")
    for _ in range(repeats + 1):
        scheduler = getattr(diffusers, class_name)(**SD15, **config)
        generator = torch.Generator().manual_seed(2)
        start = time.perf_counter()
        scheduler.set_timesteps(steps)
        x = noise * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            scheduler.scale_model_input(x, t)
            takes_generator = "generator" in inspect.signature(scheduler.step).parameters
            kwargs = {"generator": generator} if takes_generator else {}
            x = scheduler.step(eps, t, x, **kwargs).prev_sample
        best = min(best, time.perf_counter() - start)
    return best


def time_cfg_step(latent_size: int, cfg_scale: float, repeats: int = 2, model_channels: int = 320) -> float:
    """Best seconds of one guided eps call of the SD 1.5 UNet (random weights; ``model_channels`` 320 is the
    real size) at ``cfg_scale``."""
    from webui.pipeline.conditioning import Conditioning
    from webui.pipeline.generation import cfg_eps_fn

    unet = UNetModel(UNetConfig(model_channels=model_channels)).eval()
    g = torch.Generator().manual_seed(0)
    conditioning = Conditioning.constant(torch.randn(1, 77, 768, generator=g), torch.randn(1, 77, 768, generator=g))
    eps_fn = cfg_eps_fn(unet, conditioning, cfg_scale)
    x = torch.randn(1, 4, latent_size, latent_size, generator=g)
    eps_fn(torch.randn(1, 4, 8, 8), torch.tensor([500.0]), 0)  # warm-up at a small size
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        eps_fn(x, torch.tensor([500.0]), 0)
        best = min(best, time.perf_counter() - start)
    return best


def print_cfg(latent_size: int, model_channels: int = 320) -> None:
    full = time_cfg_step(latent_size, 7.0, model_channels=model_channels)
    half = time_cfg_step(latent_size, 1.0, model_channels=model_channels)
    print(
        f"UNet (model_channels {model_channels}) step at {8 * latent_size} px: CFG 7 {full:.2f} s, CFG 1 {half:.2f} s "
        f"({100 * half / full:.0f}% of the CFG 7 step: the unconditional half is skipped)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--unet-seconds", type=float, default=None, help="skip timing the UNet; use this instead")
    parser.add_argument("--cfg", action="store_true", help="also time one UNet step at CFG 7 and at CFG 1")
    parser.add_argument("--cfg-latent", type=int, default=32, help="latent size of the --cfg step (32 = 256 px)")
    parser.add_argument("--cfg-only", action="store_true", help="only the --cfg measurement (it needs ~4 GiB)")
    parser.add_argument("--cfg-model-channels", type=int, default=320, help="a smaller UNet for --cfg (320 = SD 1.5)")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)

    if args.unet_seconds is None:
        unet_s = time_unet()
        source = "measured: UNetModel(UNetConfig()) fp32 forward, batch 2, 64x64 latent"
    else:
        unet_s = args.unet_seconds
        source = "given with --unet-seconds"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, latent {LATENT}, {args.steps} steps")
    if args.cfg_only:
        print_cfg(args.cfg_latent, args.cfg_model_channels)
        return 0
    print(f"UNet step (one CFG forward): {unet_s:.2f} s ({source})")
    header = f"{'sampler':<18} {'calls':>5} {'run ms':>8} {'ms/step':>8} {'ref ms/step':>11}"
    print(f"{header} {'ms/call':>8} {'% of UNet':>10}")
    worst = 0.0
    for name in [s.name for s in create_sampler_registry()]:
        seconds, calls = time_sampler_overhead(name, args.steps)
        reference = time_reference(name, args.steps)
        ref_text = "-" if reference is None else f"{1e3 * reference / args.steps:.3f}"
        percent = 100 * seconds / (calls * unet_s)
        worst = max(worst, percent)
        print(
            f"{name:<18} {calls:>5} {1e3 * seconds:>8.2f} {1e3 * seconds / args.steps:>8.3f} {ref_text:>11} "
            f"{1e3 * seconds / calls:>8.3f} {percent:>9.4f}%"
        )
    if args.cfg:
        print_cfg(args.cfg_latent, args.cfg_model_channels)
    verdict = "PASS" if worst < LIMIT_PERCENT else "FAIL"
    print(f"{verdict}: worst sampler overhead {worst:.4f}% of a UNet step (limit {LIMIT_PERCENT}%)")
    return 0 if worst < LIMIT_PERCENT else 1


if __name__ == "__main__":
    raise SystemExit(main())

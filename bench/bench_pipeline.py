"""Pipeline overhead: what generation adds around the UNet, against one SD 1.5 UNet step.

Measured at 512x512 (a (1, 4, 64, 64) latent), fp32, CPU:

- per step: the classifier-free-guidance eps function (batching [uncond; cond], splitting and
  combining) with a zero-cost UNet stand-in, the sampler driver and denoiser, the live preview
  (linear latent->RGB map of the predicted x0) and the progress callback: a whole ``sample()``
  with the "Euler a" sampler divided by its steps;
- once per image: the 512x512 PNG save with its infotext;
- once per model: fitting the preview map with the full-size SD 1.x VAE (random weights).

The per-step figure is compared with one real SD 1.5 UNet forward at batch 2 (FACTS.md: about
10.9 s on the 2-core reference machine), given with ``--unet-seconds`` or measured with
``--measure-unet`` (slow: builds the 859M-parameter UNet).

Usage: ``OMP_NUM_THREADS=2 python -m bench.bench_pipeline [--steps 20] [--unet-seconds 10.9]``.
Exit status 1 if the per-step overhead reaches 1% of the UNet step.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from webui.models.noise_schedule import scaled_linear_alphas_cumprod
from webui.models.vae import AutoencoderKL, VAEConfig
from webui.pipeline.conditioning import Conditioning
from webui.pipeline.generation import cfg_eps_fn
from webui.pipeline.outputs import save_image
from webui.pipeline.preview import LatentPreview, fit_latent_preview
from webui.sampling import DiscreteEpsDenoiser, create_sampler_registry, sample

LATENT = (1, 4, 64, 64)
LIMIT_PERCENT = 1.0


class FreeUNet(torch.nn.Module):
    """A UNet stand-in that costs nothing: eps = 0.1 * x."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.1))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def time_per_step(steps: int, preview: LatentPreview) -> float:
    """Seconds per step of everything but the UNet."""
    context = torch.randn(1, 77, 768)
    eps_fn = cfg_eps_fn(FreeUNet(), Conditioning.constant(context, context.clone()), 7.0)
    alphas_cumprod = scaled_linear_alphas_cumprod()
    sampler = create_sampler_registry().get("Euler a")
    previews: list[Image.Image] = []

    def callback(info: dict) -> None:
        previews.append(preview(info["denoised"]))

    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(LATENT, generator=generator)
    start = time.perf_counter()
    with torch.no_grad():
        sample(
            sampler,
            DiscreteEpsDenoiser(eps_fn, alphas_cumprod),
            noise,
            steps=steps,
            alphas_cumprod=alphas_cumprod,
            generator=[generator],
            callback=callback,
            cancel=lambda: False,
        )
    return (time.perf_counter() - start) / steps


def time_unet() -> float:
    from webui.models.unet import UNetConfig, UNetModel

    unet = UNetModel(UNetConfig()).eval()
    context, timesteps = torch.randn(2, 77, 768), torch.full((2,), 500.0)
    with torch.no_grad():
        unet(torch.randn(2, 4, 16, 16), timesteps, context)
        start = time.perf_counter()
        unet(torch.randn(2, *LATENT[1:]), timesteps, context)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--unet-seconds", type=float, default=10.9, help="one SD 1.5 UNet step (batch 2)")
    parser.add_argument("--measure-unet", action="store_true", help="measure the UNet step instead")
    args = parser.parse_args()

    vae = AutoencoderKL(VAEConfig()).eval()
    start = time.perf_counter()
    preview = fit_latent_preview(vae, VAEConfig().scale_factor)
    fit_seconds = time.perf_counter() - start

    per_step = time_per_step(args.steps, preview)

    image = Image.effect_noise((512, 512), 64).convert("RGB")
    infotext = "a cat\nSteps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 1, Size: 512x512"
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        save_image(image, Path(folder), "txt2img", 1, infotext)
        save_seconds = time.perf_counter() - start

    unet_seconds = time_unet() if args.measure_unet else args.unet_seconds
    percent = 100 * per_step / unet_seconds
    print(f"UNet step (batch 2, 512x512): {unet_seconds:.2f} s {'(measured)' if args.measure_unet else '(given)'}")
    print(f"pipeline overhead per step:   {per_step * 1000:.2f} ms = {percent:.3f}% of a UNet step")
    print(f"PNG save per image:           {save_seconds * 1000:.1f} ms")
    print(f"preview fit per model:        {fit_seconds:.2f} s (one 2x64x64 decode with the SD 1.x VAE)")
    return 0 if percent < LIMIT_PERCENT else 1


if __name__ == "__main__":
    raise SystemExit(main())

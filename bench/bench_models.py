"""Speed and peak memory of our UNet / VAE against diffusers', on identical random SD 1.5 weights.

Usage::

    python -m bench.bench_models                     # fp32; UNet batch 2 at 32x32 and 64x64 latents; VAE decode 512 px
    python -m bench.bench_models --precision bf16 --repeats 3 --sizes 32 --vae-size 0

Both implementations hold the very same weight tensors (ours built on the meta device and filled with
``load_state_dict(assign=True)``; diffusers' filled with the same tensors through our diffusers <-> CompVis
key map), so they use the same weight memory and their outputs can be compared. Calls are interleaved
(ours, diffusers, diffusers, ours, ...) after one warm-up each, so that a machine shared with other work
slows both alike; the table shows the fastest and the median call, and the peak extra resident memory
(RSS sampled every 5 ms during a call, minus RSS before it). UNet: batch 2, one classifier-free-guidance
step. VAE: decode of one latent. diffusers is a benchmark-only dependency.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from collections.abc import Callable

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
)
SD15_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=2,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    norm_num_groups=32,
)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """Highest resident set size seen while the ``with`` block runs (sampled by a thread)."""

    def __enter__(self) -> PeakRss:
        self.start = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def extra_gib(self) -> float:
        return (self.peak - self.start) / 2**30


def build_pair(part: str, dtype: torch.dtype) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Our module and diffusers' module sharing one set of random SD 1.5 weights."""
    import diffusers

    from webui.models.diffusers_folder import unet_key_map, vae_key_map
    from webui.models.unet import UNetConfig, UNetModel
    from webui.models.vae import AutoencoderKL, VAEConfig

    torch.manual_seed(0)
    ours = (UNetModel(UNetConfig()) if part == "unet" else AutoencoderKL(VAEConfig())).to(dtype)
    state = ours.state_dict()
    with torch.device("meta"):
        theirs = diffusers.UNet2DConditionModel(**SD15_UNET) if part == "unet" else diffusers.AutoencoderKL(**SD15_VAE)
    shapes = {k: v.shape for k, v in theirs.state_dict().items()}
    key_map = unet_key_map(shapes) if part == "unet" else vae_key_map(shapes)
    theirs.load_state_dict({t: state[o].view(shapes[t]) for o, t in key_map.items()}, strict=True, assign=True)
    leftovers = [n for n, t in [*theirs.named_parameters(), *theirs.named_buffers()] if t.is_meta]
    assert not leftovers, leftovers
    return ours.eval().requires_grad_(False), theirs.eval().requires_grad_(False)


def compare(label: str, calls: dict[str, Callable[[], torch.Tensor]], repeats: int) -> None:
    times: dict[str, list[float]] = {name: [] for name in calls}
    extra: dict[str, float] = dict.fromkeys(calls, 0.0)
    outputs: dict[str, torch.Tensor] = {}
    names = list(calls)
    with torch.inference_mode():
        for name in names:  # warm-up
            outputs[name] = calls[name]().float()
        for r in range(repeats):
            for name in names if r % 2 == 0 else names[::-1]:
                with PeakRss() as peak:
                    start = time.perf_counter()
                    calls[name]()
                    times[name].append(time.perf_counter() - start)
                extra[name] = max(extra[name], peak.extra_gib)
    a, b = outputs["ours"], outputs["diffusers"]
    rel = ((a - b).norm() / b.norm()).item()
    best = {n: min(t) for n, t in times.items()}
    median = {n: statistics.median(t) for n, t in times.items()}
    print(
        f"{label:30s} ours {best['ours']:7.2f} s (median {median['ours']:6.2f}, +{extra['ours']:.2f} GiB)   "
        f"diffusers {best['diffusers']:7.2f} s (median {median['diffusers']:6.2f}, +{extra['diffusers']:.2f} GiB)"
        f"   ours/diffusers {best['ours'] / best['diffusers']:.3f}   output rel. diff {rel:.1e}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64], help="UNet latent sizes (0 to skip)")
    parser.add_argument("--vae-size", type=int, default=64, help="VAE decode latent size (0 to skip)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per implementation")
    args = parser.parse_args()
    dtype = DTYPES[args.precision]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.precision}, 1 warm-up + "
        f"{args.repeats} interleaved calls each; best time (median, peak extra RSS during a call)",
        flush=True,
    )

    sizes = [s for s in args.sizes if s]
    if sizes:
        ours, theirs = build_pair("unet", dtype)
        g = torch.Generator().manual_seed(1)
        ctx = torch.randn(2, 77, 768, generator=g).to(dtype)
        t = torch.tensor([801, 801])
        for size in sizes:
            x = torch.randn(2, 4, size, size, generator=g).to(dtype)
            compare(
                f"UNet batch 2, {size}x{size} latent",
                {
                    "ours": lambda x=x: ours(x, t, ctx),
                    "diffusers": lambda x=x: theirs(x, t, encoder_hidden_states=ctx).sample,
                },
                args.repeats,
            )
        del ours, theirs
    if args.vae_size:
        ours, theirs = build_pair("vae", dtype)
        z = torch.randn(1, 4, args.vae_size, args.vae_size, generator=torch.Generator().manual_seed(2)).to(dtype)
        compare(
            f"VAE decode {args.vae_size * 8} px",
            {"ours": lambda: ours.decode(z), "diffusers": lambda: theirs.decode(z).sample},
            args.repeats,
        )
    print(f"process peak RSS {rss_peak_gib():.2f} GiB (both implementations share the weights)")


def rss_peak_gib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


if __name__ == "__main__":
    main()

"""Speed and peak memory of our UNet / VAE against diffusers', on identical random SD 1.5 weights.

Usage::

    python bench/bench_models.py                       # fp32, UNet at 32x32 and 64x64 latents, VAE decode 512 px
    python bench/bench_models.py --precision bf16 --repeats 3 --sizes 32

The parent process writes one set of random SD 1.5 weights (CompVis names); each measurement then runs
in a fresh child process (so that peak RSS belongs to one implementation only) which loads the same
weights into our module or into diffusers' (through our diffusers <-> CompVis key map), runs one
warm-up and ``--repeats`` timed calls, and saves its output so the parent can check both agree.
UNet: batch 2 (one classifier-free-guidance step). VAE: decode of one latent. diffusers is a
benchmark-only dependency.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
)
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
)


def write_weights(folder: Path) -> None:
    from safetensors.torch import save_file

    from webui.models.unet import UNetConfig, UNetModel
    from webui.models.vae import AutoencoderKL, VAEConfig

    torch.manual_seed(0)
    for name, module in (("unet", UNetModel(UNetConfig())), ("vae", AutoencoderKL(VAEConfig()))):
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(folder / f"{name}.safetensors"))


def build(impl: str, part: str, folder: Path, dtype: torch.dtype) -> torch.nn.Module:
    from safetensors.torch import load_file

    state = load_file(str(folder / f"{part}.safetensors"))
    if impl == "ours":
        from webui.models.unet import UNetConfig, UNetModel
        from webui.models.vae import AutoencoderKL, VAEConfig

        with torch.device("meta"):
            module = UNetModel(UNetConfig()) if part == "unet" else AutoencoderKL(VAEConfig())
        module.load_state_dict(state, strict=True, assign=True)
    else:
        import diffusers

        from webui.models.diffusers_folder import unet_key_map, vae_key_map

        module = diffusers.UNet2DConditionModel(**SD15_UNET) if part == "unet" else diffusers.AutoencoderKL(**SD15_VAE)
        theirs = module.state_dict()
        key_map = unet_key_map(theirs) if part == "unet" else vae_key_map(theirs)
        module.load_state_dict({t: state[o].reshape(theirs[t].shape) for o, t in key_map.items()}, strict=True)
    del state
    return module.to(dtype).eval().requires_grad_(False)


def child(impl: str, part: str, size: int, folder: Path, dtype: torch.dtype, repeats: int, out: Path) -> None:
    module = build(impl, part, folder, dtype)
    g = torch.Generator().manual_seed(1)
    if part == "unet":
        x = torch.randn(2, 4, size, size, generator=g).to(dtype)
        ctx = torch.randn(2, 77, 768, generator=g).to(dtype)
        t = torch.tensor([801, 801])
        if impl == "ours":
            def run():
                return module(x, t, ctx)
        else:
            def run():
                return module(x, t, encoder_hidden_states=ctx).sample
    else:
        z = torch.randn(1, 4, size, size, generator=g).to(dtype)
        if impl == "ours":
            def run():
                return module.decode(z)
        else:
            def run():
                return module.decode(z).sample
    times = []
    with torch.inference_mode():
        run()  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            result = run()
            times.append(time.perf_counter() - start)
    torch.save(result.float(), out.with_suffix(".pt"))
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    out.write_text(json.dumps({"times": times, "peak_gib": peak_gib}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64], help="UNet latent sizes")
    parser.add_argument("--vae-size", type=int, default=64, help="VAE decode latent size (0 to skip)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", nargs=4, metavar=("IMPL", "PART", "SIZE", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--weights", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    dtype = DTYPES[args.precision]
    if args.child:
        impl, part, size, out = args.child
        child(impl, part, int(size), args.weights, dtype, args.repeats, Path(out))
        return

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.precision}, "
          f"{args.repeats} timed runs after 1 warm-up; each row: median seconds (peak RSS of its own process)")
    cases = [("unet", s) for s in args.sizes] + ([("vae", args.vae_size)] if args.vae_size else [])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_weights(folder)
        for part, size in cases:
            results = {}
            for impl in ("ours", "diffusers"):
                out = folder / f"{impl}-{part}-{size}.json"
                subprocess.run([sys.executable, __file__, "--precision", args.precision, "--repeats",
                                str(args.repeats), "--weights", str(folder), "--child", impl, part, str(size),
                                str(out)], check=True)
                results[impl] = json.loads(out.read_text())
            a, b = (torch.load(folder / f"{i}-{part}-{size}.pt") for i in ("ours", "diffusers"))
            rel = ((a - b).norm() / b.norm()).item()
            ours, theirs = (sorted(results[i]["times"])[len(results[i]["times"]) // 2] for i in ("ours", "diffusers"))
            what = f"UNet batch 2, {size}x{size} latent" if part == "unet" else f"VAE decode {size * 8} px"
            print(f"{what:32s} ours {ours:7.2f} s ({results['ours']['peak_gib']:.2f} GiB)   "
                  f"diffusers {theirs:7.2f} s ({results['diffusers']['peak_gib']:.2f} GiB)   "
                  f"ours/diffusers {ours / theirs:.3f}   output rel. diff {rel:.1e}", flush=True)


if __name__ == "__main__":
    main()

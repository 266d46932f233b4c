"""Tiled VAE decode at large sizes: extra memory and PSNR against the untiled decode (issue 19).

The full-size SD 1.x VAE (``VAEConfig()``, 83.7M parameters, PyTorch's default initialisation seeded, float32)
decodes a smooth random latent. Each decode runs in a fresh subprocess that builds the VAE, warms it up on a
small latent, resets the kernel's high-water mark (``/proc/self/clear_refs``) and reports the growth of the
peak resident size (``VmHWM``) during the decode: the extra memory the decode needs, weights excluded.

Rows, side by side:

- ``tiled`` at ``--size`` (default 2048x2048, a 256x256 latent): extra memory and seconds;
- ``untiled`` at ``--size`` only with ``--untiled-too`` (in float32 it needs ~3.7 KB per pixel: 15 GiB at
  2048 px, measured; run it only where that much memory is free);
- ``tiled`` and ``untiled`` at ``--compare`` (default 1024, the largest size whose untiled decode fits here
  beside other work): extra memory, seconds, and the tiled image's PSNR against the untiled one.

Linux only (``/proc``). Usage::

    flock /tmp/heavy.lock nice -n 5 python -m bench.bench_vae_tiling [--size 2048] [--compare 1024]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

CHILD = textwrap.dedent(
    """
    import gc, json, re, sys, time
    import numpy as np
    import torch
    import torch.nn.functional as F
    from webui.models.vae import AutoencoderKL, VAEConfig
    from webui.models.vae_tiling import tiled_decode

    def rss(field):
        return int(re.search(field + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024

    size, mode, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    torch.manual_seed(0)
    vae = AutoencoderKL(VAEConfig()).eval().requires_grad_(False)
    h = size // 8
    g = torch.Generator().manual_seed(1)
    # A smooth latent with some fine detail, as sampled latents are; unscaled (what vae.decode takes).
    coarse = torch.randn(1, 4, max(1, h // 8), max(1, h // 8), generator=g)
    z = F.interpolate(coarse, size=(h, h), mode="bicubic") + 0.3 * torch.randn(1, 4, h, h, generator=g)
    decode = (lambda z: tiled_decode(vae, z)) if mode == "tiled" else vae.decode
    with torch.no_grad():
        decode(torch.randn(1, 4, 8, 8))  # first-call allocations
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = rss("VmRSS")
        start = time.perf_counter()
        image = decode(z)
        seconds = time.perf_counter() - start
        peak = rss("VmHWM")
    pixels = ((image[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    np.save(out, pixels)
    print(json.dumps({"growth": peak - before, "seconds": seconds}))
    """
)


def psnr(image: np.ndarray, reference: np.ndarray) -> float:
    mse = float(np.mean((image.astype(np.float64) - reference.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def decode(size: int, mode: str, folder: Path) -> tuple[dict[str, float], np.ndarray]:
    """One decode in a fresh process: its figures and its image (both kept in ``folder``).

    A decode whose image and figures ``folder`` already holds (``--images``, an earlier run) is read back instead.
    """
    out, figures = folder / f"{mode}-{size}.npy", folder / f"{mode}-{size}.json"
    if out.exists() and figures.exists():
        return json.loads(figures.read_text()), np.load(out)
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(size), mode, str(out)], cwd=root, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"{mode} decode at {size} px failed:\n{done.stderr[-2000:]}")
    figures.write_text(done.stdout.strip().splitlines()[-1])
    return json.loads(figures.read_text()), np.load(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=2048, help="image side of the tiled decode (memory figure)")
    parser.add_argument("--compare", type=int, default=1024, help="image side of the tiled vs untiled PSNR (0: skip)")
    parser.add_argument("--untiled-too", action="store_true", help="also decode --size untiled (15 GiB at 2048 px)")
    parser.add_argument(
        "--images",
        type=Path,
        help="keep the decoded images and figures in this folder, and reuse those already there (so that the "
        "tiled and the untiled 2048 px decodes can run at different times; delete it after changing the code)",
    )
    args = parser.parse_args()
    gib = 2**30
    print("SD 1.x VAE (random weights), float32, batch 1; extra memory = peak RSS growth during the decode")
    print("                          extra GiB   seconds   PSNR tiled vs untiled")
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.images or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        sizes = [(args.size, args.untiled_too)] + ([(args.compare, True)] if args.compare else [])
        for size, with_untiled in sizes:
            tiled, tiled_image = decode(size, "tiled", folder)
            quality = ""
            if with_untiled:
                untiled, untiled_image = decode(size, "untiled", folder)
                quality = f"{psnr(tiled_image, untiled_image):.1f} dB"
            print(f"{size}x{size} tiled       {tiled['growth'] / gib:10.2f}   {tiled['seconds']:7.1f}   {quality:>12s}")
            if with_untiled:
                print(f"{size}x{size} untiled     {untiled['growth'] / gib:10.2f}   {untiled['seconds']:7.1f}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()

"""Peak memory while loading an SD 1.5-size fp16 single file for float32 use (issue 19).

Each load runs in a fresh subprocess that first reads the file once to warm the file cache and does
the imports (so the figure is the load itself), resets the kernel's high-water mark (``/proc/self/clear_refs``) and
reports the growth of the peak resident size (``VmHWM``) during a second load, next to:

- the bound: final weights + the largest single tensor (what the issue allows);
- both copies: final weights + the whole fp16 file (what loading the fp16 state dict and then casting,
  or reading through a memory map whose read pages stay resident, costs);
- ``safetensors.torch.load_file`` + cast: the reference way of doing it, measured the same way.

Linux only. Usage::

    flock /tmp/heavy.lock nice -n 5 python -m bench.bench_load_memory [--keep /tmp/sd15-fp16.safetensors]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import torch

CHILD = textwrap.dedent(
    """
    import gc, json, re, sys, time
    import torch

    def rss(field):
        return int(re.search(field + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024

    path, how = sys.argv[1], sys.argv[2]

    def load():
        if how == "ours":
            from webui.models.loading import load_model

            model = load_model(path, dtype=torch.float32, compute_hash=False)
            return [t for m in (model.unet, model.vae, model.text_encoder.model) for t in m.state_dict().values()]
        from safetensors.torch import load_file

        state = load_file(path)
        return [t.float() if t.is_floating_point() else t for t in state.values()]

    # Warm the file cache by reading the file, not by loading it: memory freed by a first load stays in the
    # allocator, counted in the RSS before the second, which would hide the second load's growth.
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass
    if how == "ours":
        from webui.models.loading import load_model  # imports outside the measurement
        import transformers.models.clip.modeling_clip
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = rss("VmRSS")
    start = time.perf_counter()
    tensors = load()
    seconds = time.perf_counter() - start
    print(json.dumps({
        "growth": rss("VmHWM") - before,
        "seconds": seconds,
        "final": sum(t.numel() * t.element_size() for t in tensors),
        "largest": max(t.numel() * t.element_size() for t in tensors),
    }))
    """
)


def measure(path: Path, how: str) -> dict[str, float]:
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), how], cwd=root, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=Path, help="the SD 1.5-size fp16 file to use (written if missing)")
    args = parser.parse_args()
    from bench.bench_switch import write_sd15_file

    with tempfile.TemporaryDirectory() as folder:
        path = args.keep or Path(folder) / "sd15" / "sd15-fp16.safetensors"
        if not path.exists():
            write_sd15_file(path, torch.float16)
        size = path.stat().st_size
        gib = 2**30
        print(f"{path.name}: {size / gib:.2f} GiB fp16, loaded as float32")
        print("                                   peak growth GiB   seconds")
        ours = measure(path, "ours")
        reference = measure(path, "load_file")
        bound = ours["final"] + ours["largest"]
        print(f"ours (load_model)                  {ours['growth'] / gib:10.2f}   {ours['seconds']:8.1f}")
        print(f"safetensors load_file + .float()   {reference['growth'] / gib:10.2f}   {reference['seconds']:8.1f}")
        print(f"bound: final + largest tensor      {bound / gib:10.2f}")
        print(f"both copies: final + fp16 file     {(ours['final'] + size) / gib:10.2f}")
        print("within the bound" if ours["growth"] <= bound else "OVER THE BOUND")


if __name__ == "__main__":
    main()

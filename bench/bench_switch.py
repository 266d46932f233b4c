"""Switching back to a model already seen: load time with the sha256 cache against re-hashing every load.

Writes a random-weight checkpoint in the exact SD 1.5 layout (a 4.3 GB fp32 ``.safetensors``, the size of
``v1-5-pruned-emaonly.safetensors``; ``--fp16`` for the 2.1 GB half-precision kind), then times on the CPU:

- ``load + hash``: :func:`load_model` reading the whole file for its sha256 (what every load did before);
- ``first load``: the app's path, :class:`ModelManager` with a :class:`HashCache`, until the model is
  usable (the hash of the new file goes on in the background) and until its hash is known;
- ``switch back, 1 in memory``: unload, load the seen file again; its hash comes from the cache;
- ``switch back, 2 in memory``: ``--models-in-memory 2``, the model is still resident.

Usage: ``flock /tmp/heavy.lock python -m bench.bench_switch [--fp16] [--keep FILE]``. The OS file cache is
warm after the first read (the issue's condition: "warm file cache"). Exit status 1 if switching to a seen
model takes over 3 s (median).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from pathlib import Path

import torch

LIMIT_SECONDS = 3.0


def write_sd15_file(path: Path, dtype: torch.dtype) -> Path:
    """A random-weight SD 1.5 single file with its CLIP-sized tokenizer next to it."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from tests.test_checkpoint_full_sd15 import write_clip_sized_tokenizer
    from webui.models.checkpoint import save_single_file
    from webui.models.unet import UNetConfig, UNetModel
    from webui.models.vae import AutoencoderKL, VAEConfig

    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
    )
    with torch.device("meta"):
        modules = (UNetModel(UNetConfig()), AutoencoderKL(VAEConfig()), CLIPTextModel(config))
    generator = torch.Generator().manual_seed(0)
    filled = []
    for module in modules:
        module = module.to_empty(device="cpu").to(dtype)
        with torch.no_grad():
            for tensor in module.state_dict().values():
                if tensor.is_floating_point():
                    tensor.normal_(0.0, 0.02, generator=generator)
        filled.append(module)
    save_single_file(path, *filled)
    write_clip_sized_tokenizer(path.parent / "tokenizer")
    return path


def main() -> int:
    from webui.models.hash_cache import HashCache
    from webui.models.loading import load_model
    from webui.models.manager import ModelManager
    from webui.models.registry import load_registry

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fp16", action="store_true", help="write a half-precision file (loaded as float32)")
    parser.add_argument("--keep", type=Path, help="use (or write, then keep) the checkpoint at this path")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        path = args.keep or Path(folder) / "sd15" / "sd15-random.safetensors"
        if not path.exists():
            started = time.perf_counter()
            write_sd15_file(path, torch.float16 if args.fp16 else torch.float32)
            print(f"wrote {path} ({path.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - started:.0f} s")
        size_gb = path.stat().st_size / 1e9
        registry = Path(folder) / "models.yaml"
        registry.write_text(f"models:\n  - {{name: a, path: {path}}}\n  - {{name: b, path: {path}}}\n")

        load_model(path, compute_hash=False)  # warm the OS file cache
        gc.collect()
        started = time.perf_counter()
        model = load_model(path)
        hashed = time.perf_counter() - started
        del model
        gc.collect()

        manager = ModelManager(load_registry(registry), hash_cache=HashCache(Path(folder) / "cache.json"))
        started = time.perf_counter()
        manager.get("a")
        first = time.perf_counter() - started
        assert manager.hasher is not None
        manager.hasher.wait()
        first_hashed = time.perf_counter() - started
        switches = []
        for name in ("b", "a", "b", "a"):  # each get unloads the other model, then loads this one
            started = time.perf_counter()
            again = manager.get(name)
            switches.append(time.perf_counter() - started)
            assert again.short_hash is not None, "the seen file's hash should come from the cache"
            del again
        back_one = statistics.median(switches)
        manager.unload()
        gc.collect()

        two = ModelManager(load_registry(registry), max_loaded=2, hash_cache=manager.hasher.cache)
        two.get("a")
        two.get("b")
        started = time.perf_counter()
        two.get("a")
        back_two = time.perf_counter() - started

    print(f"SD 1.5-size single file, {size_gb:.2f} GB, {torch.get_num_threads()} threads, warm file cache")
    print(f"  load + sha256 of the whole file (before):    {hashed:6.2f} s")
    print(f"  first load, hash in the background:          {first:6.2f} s (hash known after {first_hashed:.2f} s)")
    print(
        f"  switch to a seen model, 1 in memory:         {back_one:6.2f} s (median of 4; "
        f"{', '.join(f'{s:.2f}' for s in switches)})"
    )
    print(f"  switch to a seen model, 2 in memory:         {back_two * 1000:6.2f} ms")
    return 0 if back_one <= LIMIT_SECONDS else 1


if __name__ == "__main__":
    raise SystemExit(main())

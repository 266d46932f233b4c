"""Time to apply and undo a rank-32 kohya LoRA on an SD 1.5-size model, and the sampling step with and without it.

Usage::

    python -m bench.bench_lora                 # fp32, random SD 1.5-size UNet + CLIP ViT-L text encoder
    python -m bench.bench_lora --no-reference  # without diffusers' load_lora_weights + fuse_lora / unfuse_lora

The LoRA is what kohya-ss writes by default: rank 32, alpha 16, every layer of the UNet's transformers and every
linear layer of the text encoder, fp16 tensors (about 75 MB). "apply" is the first job with it (read the file,
compute the deltas in float32, merge), "apply (cached)" a later job with the same LoRA set, "undo" the restore
after a job. The reference is diffusers' ``load_lora_weights`` + ``fuse_lora`` / ``unfuse_lora`` on the same
weights. The step is one UNet call of batch 2 (one classifier-free-guidance step) at a 32x32 latent (256 px),
with and without the merged LoRA, interleaved so that a shared machine slows both alike: they must be equal
within noise, since a merged LoRA adds no computation.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from bench.bench_models import SD15_UNET
from tests.support.lora_files import kohya_specs_from_model, kohya_tensors

RANK, ALPHA = 32, 16.0


def build_model() -> SimpleNamespace:
    """Random SD 1.5-size UNet and CLIP ViT-L/14 text encoder, as the LoRA patcher sees a model."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from webui.models.unet import UNetConfig, UNetModel

    torch.manual_seed(0)
    unet = UNetModel(UNetConfig()).eval().requires_grad_(False)
    text = CLIPTextModel(
        CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
    )
    return SimpleNamespace(unet=unet, text_encoder=SimpleNamespace(model=text.eval()), extra={})


def write_lora(model: SimpleNamespace, folder: Path) -> Path:
    from safetensors.torch import save_file

    specs = [s for s in kohya_specs_from_model(model) if "_attentions_" in s[0] or s[0].startswith("lora_te_")]
    tensors = {k: v if k.endswith(".alpha") else v.half() for k, v in kohya_tensors(specs, RANK, 0, ALPHA).items()}
    path = folder / "rank32.safetensors"
    save_file(tensors, str(path))
    return path


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="UNet calls with and without the LoRA (each)")
    parser.add_argument("--no-reference", action="store_true")
    args = parser.parse_args()
    from webui.extra_networks.lora_merge import LoraPatcher, LoraUse

    model = build_model()
    folder = Path(tempfile.mkdtemp(prefix="bench_lora_"))
    path = write_lora(model, folder)
    print(f"LoRA: {path.stat().st_size / 2**20:.0f} MiB, rank {RANK}; torch threads {torch.get_num_threads()}")
    use = LoraUse("rank32", path, 1.0, 1.0)
    rows: dict[str, list[float]] = {"apply": [], "apply (cached)": [], "undo": []}
    for _ in range(args.repeats):
        patcher = LoraPatcher(model)
        rows["apply"].append(timed(patcher.apply, [use]))
        rows["undo"].append(timed(patcher.restore))
        rows["apply (cached)"].append(timed(patcher.apply, [use]))
        patcher.forget()
    reference: dict[str, list[float]] = {}
    if not args.no_reference:
        reference = diffusers_times(model, path, args.repeats)

    print(f"\n{'':16} {'ours (s)':>12} {'diffusers (s)':>14}")
    for name, ours in rows.items():
        ref = reference.get(name)
        ref_text = f"{min(ref):14.3f}" if ref else f"{'-':>14}"
        print(f"{name:16} {min(ours):12.3f} {ref_text}")

    x = torch.randn(2, 4, 32, 32)
    t = torch.tensor([500, 500])
    context = torch.randn(2, 77, 768)
    patcher = LoraPatcher(model)
    with torch.no_grad():
        model.unet(x, t, context)  # warm-up
        plain, merged = [], []
        for _ in range(args.steps):
            plain.append(timed(lambda: model.unet(x, t, context)))
            patcher.apply([use])
            merged.append(timed(lambda: model.unet(x, t, context)))
            patcher.restore()
    print(
        f"\nUNet step, batch 2, 32x32 latent: without LoRA {min(plain):.3f} s (median {statistics.median(plain):.3f}),"
        f" with merged LoRA {min(merged):.3f} s (median {statistics.median(merged):.3f})"
    )


def diffusers_times(model: SimpleNamespace, path: Path, repeats: int) -> dict[str, list[float]]:
    """diffusers' load_lora_weights + fuse_lora ("apply"), unfuse_lora ("undo") on a UNet with our weights."""
    import diffusers
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    unet = diffusers.UNet2DConditionModel(**SD15_UNET)
    state = {f"model.diffusion_model.{k}": v for k, v in model.unet.state_dict().items()}
    unet.load_state_dict(convert_ldm_unet_checkpoint(state, dict(unet.config)))
    del state
    pipe = diffusers.StableDiffusionPipeline(
        unet=unet.eval(), text_encoder=model.text_encoder.model, vae=None, tokenizer=None, scheduler=None,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    out: dict[str, list[float]] = {"apply": [], "undo": []}
    for _ in range(repeats):
        out["apply"].append(timed(lambda: (pipe.load_lora_weights(str(path)), pipe.fuse_lora(lora_scale=1.0))))
        out["undo"].append(timed(pipe.unfuse_lora))
        pipe.unload_lora_weights()
    return out


if __name__ == "__main__":
    main()

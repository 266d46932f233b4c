"""A tiny, seeded, random-weight Stable Diffusion 1.x model, built offline in well under a second.

Used by the fixtures in ``tests/conftest.py`` and by the benchmarks that need a model (``bench_api``,
``bench_ui``):

- :func:`write_tiny_tokenizer`: a folder with a real byte-level CLIP BPE ``vocab.json`` / ``merges.txt``
  (256 byte symbols, their ``</w>`` variants, a few merges such as ``the</w>``, ``cat</w>``, ``dog</w>``,
  then ``<|startoftext|>`` and ``<|endoftext|>``); load it with
  ``CLIPTokenizer.from_pretrained(folder, model_max_length=77)``.
- :func:`build_tiny_components`: :class:`TinyComponents` with the UNet, VAE, CLIP text model and tokenizer.
- :func:`write_tiny_checkpoint`: those weights as one SD 1.x single file ``<root>/tiny/tiny.safetensors`` with
  the tokenizer next to it, plus a ``models.yaml`` whose only (default) entry ``tiny`` points at it (64x64
  images, 8x8 latents); :func:`write_tiny_model` does all three steps.

The sizes follow the head-count rules in :mod:`webui.models.checkpoint` (UNet 8 heads, CLIP width // 64 heads)
so that the file loads back into identical modules.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

TINY_MERGES = [("t", "h"), ("th", "e</w>"), ("c", "a"), ("ca", "t</w>"), ("d", "o"), ("do", "g</w>")]
TINY_IMAGE_SIZE = 64


def write_tiny_tokenizer(folder: Path) -> Path:
    """Write a byte-level CLIP BPE vocabulary (every string is encodable) into ``folder``."""
    from webui.train.tokenizer import bytes_to_unicode

    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(bytes_to_unicode().values())
    tokens = [*symbols, *(s + "</w>" for s in symbols), *("".join(m) for m in TINY_MERGES)]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in TINY_MERGES))
    return folder


@dataclass
class TinyComponents:
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_model: torch.nn.Module
    tokenizer: object
    tokenizer_dir: Path
    unet_config: object
    vae_config: object


@dataclass
class TinyCheckpoint:
    path: Path  # the .safetensors single file
    tokenizer_dir: Path  # <folder>/tokenizer, next to the file
    models_yaml: Path  # a registry with one default entry "tiny"
    components: TinyComponents
    image_size: int = TINY_IMAGE_SIZE


def build_tiny_components(tokenizer_dir: Path, seed: int = 0) -> TinyComponents:
    """Seeded random weights; every parameter gets a little normal noise so no two norms are equal."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from webui.models.unet import UNetConfig, UNetModel
    from webui.models.vae import AutoencoderKL, VAEConfig

    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir), model_max_length=77)
    unet_config = UNetConfig(
        model_channels=32,
        channel_mult=(1, 2, 2),
        num_res_blocks=1,
        attention_resolutions=(1, 2),
        num_heads=8,
        context_dim=128,
    )
    vae_config = VAEConfig(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1)
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet, vae, text_model = UNetModel(unet_config), AutoencoderKL(vae_config), CLIPTextModel(text_config)
        with torch.no_grad():
            for module in (unet, vae, text_model):
                for p in module.parameters():
                    p.add_(torch.randn_like(p) * 0.02)
    return TinyComponents(
        unet=unet.eval(),
        vae=vae.eval(),
        text_model=text_model.eval(),
        tokenizer=tokenizer,
        tokenizer_dir=tokenizer_dir,
        unet_config=unet_config,
        vae_config=vae_config,
    )


def write_tiny_checkpoint(root: Path, components: TinyComponents) -> TinyCheckpoint:
    """Write ``components`` under ``root`` as a user would have them: ``tiny/tiny.safetensors`` in the SD 1.x
    layout, its ``tokenizer/`` folder, and a ``models.yaml`` whose only (default) entry is ``tiny``."""
    from webui.models.checkpoint import save_single_file

    folder = root / "tiny"
    path = save_single_file(folder / "tiny.safetensors", components.unet, components.vae, components.text_model)
    tokenizer_dir = write_tiny_tokenizer(folder / "tokenizer")
    models_yaml = root / "models.yaml"
    models_yaml.write_text(
        "models:\n"
        "  - name: tiny\n"
        f"    path: {path.relative_to(root).as_posix()}\n"
        "    default: true\n"
        f"    width: {TINY_IMAGE_SIZE}\n"
        f"    height: {TINY_IMAGE_SIZE}\n"
    )
    return TinyCheckpoint(path=path, tokenizer_dir=tokenizer_dir, models_yaml=models_yaml, components=components)


def write_tiny_model(root: Path, seed: int = 0) -> TinyCheckpoint:
    """Build the tiny model and write it under ``root`` (checkpoint, tokenizer, ``models.yaml``) in one call."""
    components = build_tiny_components(write_tiny_tokenizer(root / "tokenizer"), seed=seed)
    return write_tiny_checkpoint(root, components)

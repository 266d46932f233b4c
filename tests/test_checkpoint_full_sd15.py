"""Full-size SD 1.5 checks (slow: about 9 GB of RAM and a few minutes on 2 cores; run rarely).

A random-weight model in the exact SD 1.5 configuration is written with :func:`save_single_file`,
then read by diffusers' ``StableDiffusionPipeline.from_single_file`` (with a local config folder,
offline) and by our :func:`load_model`. Both must hold identical weights, and our UNet and VAE must
compute what diffusers computes at a small latent.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from webui.models.checkpoint import save_single_file
from webui.models.diffusers_folder import unet_key_map, vae_key_map
from webui.models.loading import load_model

pytestmark = pytest.mark.slow
diffusers = pytest.importorskip("diffusers")

SD15_UNET = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
SD15_VAE = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}
MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "feature_extractor": [None, None],
    "safety_checker": [None, None],
    "requires_safety_checker": False,
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
CLIP_VOCAB_SIZE = 49408


def write_clip_sized_tokenizer(folder: Path) -> Path:
    """A byte-level BPE vocabulary with exactly CLIP ViT-L's 49408 tokens (synthetic two-symbol merges)."""
    from webui.train.tokenizer import bytes_to_unicode

    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(bytes_to_unicode().values())  # the 256 byte symbols in vocabulary order
    tokens = [*symbols, *(s + "</w>" for s in symbols)]
    merges = []
    wanted = CLIP_VOCAB_SIZE - 2 - len(tokens)
    for right in [*(s + "</w>" for s in symbols), *symbols]:
        for left in symbols:
            if len(merges) == wanted:
                break
            merges.append((left, right))
    tokens += [a + b for a, b in merges] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return folder


def write_sd15_config_folder(folder: Path) -> Path:
    """The configuration half of a diffusers SD 1.5 folder (no weights), as from_single_file(config=) needs."""
    from transformers import CLIPTextConfig

    for sub, config in (("unet", SD15_UNET), ("vae", SD15_VAE)):
        (folder / sub).mkdir(parents=True)
        (folder / sub / "config.json").write_text(json.dumps(config))
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD15_SCHEDULER))
    text_config = CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        projection_dim=768,
    )
    text_config.architectures = ["CLIPTextModel"]
    text_config.save_pretrained(folder / "text_encoder")
    write_clip_sized_tokenizer(folder / "tokenizer")
    (folder / "model_index.json").write_text(json.dumps(MODEL_INDEX))
    return folder


@pytest.fixture(scope="module")
def full_models(tmp_path_factory):
    from transformers import CLIPTextConfig, CLIPTextModel

    from webui.models.unet import UNetConfig, UNetModel
    from webui.models.vae import AutoencoderKL, VAEConfig

    root = tmp_path_factory.mktemp("sd15")
    config_folder = write_sd15_config_folder(root / "config")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet, vae = UNetModel(UNetConfig()), AutoencoderKL(VAEConfig())
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(config_folder / "text_encoder"))
    path = save_single_file(root / "model" / "sd15-random.safetensors", unet, vae, text)
    del unet, vae, text
    write_clip_sized_tokenizer(path.parent / "tokenizer")

    ours = load_model(path, compute_hash=False)
    pipe = diffusers.StableDiffusionPipeline.from_single_file(
        str(path), config=str(config_folder), local_files_only=True, safety_checker=None, torch_dtype=torch.float32
    )
    yield ours, pipe
    path.unlink()


def test_diffusers_reads_our_full_size_file_into_identical_weights(full_models):
    ours, pipe = full_models
    assert sum(p.numel() for p in ours.unet.parameters()) == pytest.approx(859.5e6, rel=1e-3)
    assert sum(p.numel() for p in ours.vae.parameters()) == pytest.approx(83.65e6, rel=1e-3)
    for module, theirs, key_map in ((ours.unet, pipe.unet, unet_key_map), (ours.vae, pipe.vae, vae_key_map)):
        their_state = theirs.state_dict()
        mapping = key_map(their_state)
        our_state = module.state_dict()
        assert sorted(mapping) == sorted(our_state)
        for key, their_key in mapping.items():
            assert torch.equal(our_state[key], their_state[their_key].reshape(our_state[key].shape)), key
    their_text = pipe.text_encoder.state_dict()
    for key, value in ours.text_encoder.model.state_dict().items():
        their_key = key if key in their_text else "text_model." + key
        assert torch.equal(value, their_text[their_key]), key


def test_full_size_unet_and_vae_match_diffusers_at_a_small_latent(full_models):
    ours, pipe = full_models
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 77, 768, generator=g)
    t = torch.tensor([999, 1])
    with torch.no_grad():
        expected = pipe.unet(x, t, encoder_hidden_states=ctx).sample
        actual = ours.unet(x, t, ctx)
        assert ((actual - expected).norm() / expected.norm()).item() < 1e-4
        z = torch.randn(1, 4, 16, 16, generator=g)
        decoded, reference = ours.vae.decode(z), pipe.vae.decode(z).sample
        assert ((decoded - reference).norm() / reference.norm()).item() < 1e-4
        image = decoded.clamp(-1, 1)
        mean, reference_mean = ours.vae.encode(image)[0], pipe.vae.encode(image).latent_dist.mean
        assert ((mean - reference_mean).norm() / reference_mean.norm()).item() < 1e-4

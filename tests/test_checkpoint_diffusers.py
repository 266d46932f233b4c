"""Our networks, loaded through our own diffusers -> CompVis key map, compute what diffusers computes.

diffusers is only a test-time reference here. Two independent checks:
1. a diffusers folder (random weights, saved by diffusers) loaded by :func:`load_model` gives the
   same UNet / VAE outputs as diffusers' own modules (our key map is right);
2. a single file written by :func:`save_single_file`, converted by diffusers' own
   ``convert_ldm_*_checkpoint``, gives diffusers modules with exactly our weights (our layout is right).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from webui.models.diffusers_folder import unet_key_map, vae_key_map
from webui.models.errors import UnsupportedModelError
from webui.models.loading import load_model

diffusers = pytest.importorskip("diffusers")

TINY_UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(32, 64, 64),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=128,
    attention_head_dim=8,
    norm_num_groups=32,
)
TINY_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=1,
    block_out_channels=(32, 32, 64, 64),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    norm_num_groups=32,
    sample_size=64,
)
SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
}


def perturbed(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return module.eval()


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).norm() / expected.norm()).item()


def write_diffusers_folder(folder: Path, unet, vae, text_model, tokenizer_dir: Path) -> Path:
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    text_model.save_pretrained(folder / "text_encoder")
    shutil.copytree(tokenizer_dir, folder / "tokenizer")
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return folder


@pytest.fixture(scope="module")
def diffusers_models():
    unet = perturbed(diffusers.UNet2DConditionModel(**TINY_UNET), 1)
    vae = perturbed(diffusers.AutoencoderKL(**TINY_VAE), 2)
    return unet, vae


@pytest.fixture(scope="module")
def diffusers_folder(tmp_path_factory, diffusers_models, tiny_components):
    unet, vae = diffusers_models
    folder = tmp_path_factory.mktemp("diffusers") / "tiny-diffusers"
    return write_diffusers_folder(folder, unet, vae, tiny_components.text_model, tiny_components.tokenizer_dir)


def test_diffusers_folder_unet_matches_diffusers(diffusers_folder, diffusers_models):
    model = load_model(diffusers_folder)
    assert model.short_hash is None and model.name == "tiny-diffusers"
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 128, generator=g)
    t = torch.tensor([3, 801])
    with torch.no_grad():
        expected = diffusers_models[0](x, t, encoder_hidden_states=ctx).sample
        actual = model.unet(x, t, ctx)
    assert relative_error(actual, expected) < 1e-4


def test_diffusers_folder_vae_matches_diffusers(diffusers_folder, diffusers_models):
    model = load_model(diffusers_folder)
    reference = diffusers_models[1]
    g = torch.Generator().manual_seed(0)
    image, z = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1, torch.randn(1, 4, 8, 8, generator=g)
    with torch.no_grad():
        mean, _ = model.vae.encode(image)
        assert relative_error(mean, reference.encode(image).latent_dist.mean) < 1e-4
        assert relative_error(model.vae.decode(z), reference.decode(z).sample) < 1e-4


@pytest.mark.slow
def test_diffusers_folder_text_encoder_and_tokenizer_are_used(diffusers_folder, tiny_components):
    model = load_model(diffusers_folder)
    for key, value in tiny_components.text_model.state_dict().items():
        torch.testing.assert_close(model.text_encoder.model.state_dict()[key], value, rtol=0, atol=0)
    assert model.text_encoder.tokenize("the dog") == [513, 517]


def test_v_prediction_diffusers_folder_is_refused(tmp_path, diffusers_folder):
    folder = shutil.copytree(diffusers_folder, tmp_path / "v-model")
    config = dict(SCHEDULER, prediction_type="v_prediction")
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match="v_prediction"):
        load_model(folder)


def test_key_maps_cover_every_diffusers_tensor_once(diffusers_models):
    unet, vae = diffusers_models
    for module, key_map in ((unet, unet_key_map), (vae, vae_key_map)):
        keys = list(module.state_dict())
        mapping = key_map(keys)
        assert sorted(mapping.values()) == sorted(keys)


def test_single_file_layout_reads_back_through_diffusers_converters(tiny_checkpoint):
    """diffusers' own LDM -> diffusers conversion of our file gives diffusers modules with our exact weights."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
    from safetensors.torch import load_file

    state = load_file(str(tiny_checkpoint.path))
    unet = diffusers.UNet2DConditionModel(**TINY_UNET)
    unet.load_state_dict(convert_ldm_unet_checkpoint(state, dict(unet.config)), strict=True)
    vae = diffusers.AutoencoderKL(**TINY_VAE)
    vae.load_state_dict(convert_ldm_vae_checkpoint(state, dict(vae.config)), strict=True)

    ours = tiny_checkpoint.components
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 77, 128, generator=g)
    with torch.no_grad():
        t = torch.tensor([500])
        assert relative_error(ours.unet(x, t, ctx), unet(x, t, encoder_hidden_states=ctx).sample) < 1e-5
        assert relative_error(ours.vae.decode(x), vae.decode(x).sample) < 1e-5
    # and our own map agrees with diffusers' converter key by key
    converted = convert_ldm_unet_checkpoint(state, dict(unet.config))
    for ours_key, theirs_key in unet_key_map(converted).items():
        assert torch.equal(converted[theirs_key], state["model.diffusion_model." + ours_key]), ours_key

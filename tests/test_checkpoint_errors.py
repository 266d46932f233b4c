"""Every bad model input gives one clear CheckpointError, and loading still works afterwards."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from webui.models.checkpoint import single_file_state_dict
from webui.models.errors import (
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    MissingWeightsError,
    TokenizerNotFoundError,
    UnsafeCheckpointError,
    UnsupportedModelError,
)
from webui.models.loading import load_model


@pytest.fixture(scope="module")
def tiny_state(tiny_components) -> dict[str, torch.Tensor]:
    return single_file_state_dict(tiny_components.unet, tiny_components.vae, tiny_components.text_model)


def write(folder: Path, name: str, state: dict[str, torch.Tensor], tokenizer_dir: Path | None = None) -> Path:
    path = folder / name
    save_file(state, str(path))
    if tokenizer_dir is not None:
        (folder / "tokenizer").mkdir(exist_ok=True)
        for f in tokenizer_dir.iterdir():
            (folder / "tokenizer" / f.name).write_bytes(f.read_bytes())
    return path


def expect_error(path: Path, error: type[CheckpointError], *words: str, **kwargs) -> str:
    with pytest.raises(error) as info:
        load_model(path, compute_hash=False, **kwargs)
    message = str(info.value)
    for word in words:
        assert word in message, message
    assert isinstance(info.value, ValueError)
    return message


@pytest.fixture(autouse=True)
def process_stays_healthy(tiny_checkpoint):
    """After each bad input, the good tiny model still loads and runs."""
    yield
    model = load_model(tiny_checkpoint.path, compute_hash=False)
    assert model.text_encoder.encode_text("a cat").shape == (1, 77, 128)


def test_missing_file(tmp_path):
    expect_error(tmp_path / "nope.safetensors", CheckpointNotFoundError, "nope.safetensors")


def test_truncated_safetensors(tmp_path, tiny_checkpoint):
    data = tiny_checkpoint.path.read_bytes()
    path = tmp_path / "half.safetensors"
    path.write_bytes(data[: len(data) // 2])
    expect_error(path, CorruptCheckpointError, "half.safetensors", "not a valid .safetensors")


@pytest.mark.parametrize("name", ["noise.safetensors", "noise.ckpt", "noise.bin"])
def test_random_bytes(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(os.urandom(4096))
    expect_error(path, CorruptCheckpointError, name)


def test_truncated_ckpt(tmp_path, tiny_state):
    full = tmp_path / "full.ckpt"
    torch.save({"state_dict": tiny_state}, full)
    path = tmp_path / "cut.ckpt"
    path.write_bytes(full.read_bytes()[:10000])
    expect_error(path, CorruptCheckpointError, "cut.ckpt")


class _CreatesFile:
    """A pickle payload that would create a file if it were ever unpickled without restrictions."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


def test_malicious_ckpt_is_refused_without_running_code(tmp_path, tiny_state):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": tiny_state, "payload": _CreatesFile(marker)}, path)
    message = expect_error(path, UnsafeCheckpointError, "evil.ckpt", "safetensors")
    assert "io.open" in message  # names what the pickle asked for
    assert not marker.exists()


def test_sd2_checkpoint_is_refused_by_name(tmp_path, tiny_state):
    state = {k: v for k, v in tiny_state.items() if not k.startswith("cond_stage_model.")}
    state["cond_stage_model.model.token_embedding.weight"] = torch.zeros(8, 1024)
    state["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"] = torch.zeros(3, 4)
    expect_error(write(tmp_path, "v2.safetensors", state), UnsupportedModelError, "Stable Diffusion 2.x", "1.x")


def test_sd2_shaped_unet_with_linear_projections_is_refused(tmp_path, tiny_state):
    state = dict(tiny_state)
    for key in [k for k in state if k.endswith("proj_in.weight")]:
        state[key] = state[key][:, :, 0, 0].contiguous()
    expect_error(write(tmp_path, "v2unet.safetensors", state), UnsupportedModelError, "2.x")


def test_sdxl_checkpoint_is_refused_by_name(tmp_path, tiny_state):
    state = dict(tiny_state)
    state["conditioner.embedders.0.transformer.text_model.final_layer_norm.weight"] = torch.ones(4)
    expect_error(write(tmp_path, "xl.safetensors", state), UnsupportedModelError, "XL")


@pytest.mark.parametrize(("channels", "what"), [(9, "inpainting"), (8, "InstructPix2Pix"), (6, "6 input channels")])
def test_other_unet_input_channels_are_refused_by_name(tmp_path, tiny_state, channels, what):
    state = dict(tiny_state)
    weight = state["model.diffusion_model.input_blocks.0.0.weight"]
    state["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(weight.shape[0], channels, 3, 3)
    expect_error(write(tmp_path, f"in{channels}.safetensors", state), UnsupportedModelError, what)


def test_lora_and_vae_only_files_are_named(tmp_path, tiny_state):
    lora = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32)}
    expect_error(write(tmp_path, "lora.safetensors", lora), UnsupportedModelError, "LoRA")
    vae = {k.removeprefix("first_stage_model."): v for k, v in tiny_state.items() if k.startswith("first_stage_")}
    expect_error(write(tmp_path, "vae.safetensors", vae), UnsupportedModelError, "standalone VAE")


def test_file_without_text_encoder_says_so(tmp_path, tiny_state):
    state = {k: v for k, v in tiny_state.items() if not k.startswith("cond_stage_model.")}
    expect_error(write(tmp_path, "notext.safetensors", state), MissingWeightsError, "text encoder")


def test_missing_tensor_is_named(tmp_path, tiny_state, tiny_tokenizer_dir):
    state = dict(tiny_state)
    del state["model.diffusion_model.middle_block.0.in_layers.0.bias"]
    expect_error(
        write(tmp_path, "hole.safetensors", state, tiny_tokenizer_dir),
        MissingWeightsError,
        "middle_block.0.in_layers.0.bias",
    )


def test_wrong_tensor_shape_is_named(tmp_path, tiny_state, tiny_tokenizer_dir):
    state = dict(tiny_state)
    state["first_stage_model.encoder.conv_out.bias"] = torch.zeros(5)
    expect_error(
        write(tmp_path, "shape.safetensors", state, tiny_tokenizer_dir),
        CorruptCheckpointError,
        "encoder.conv_out.bias",
        "(5,)",
    )


def test_missing_tokenizer_says_what_to_download_and_where(tmp_path, tiny_state):
    path = write(tmp_path, "lonely.safetensors", tiny_state)
    message = expect_error(
        path,
        TokenizerNotFoundError,
        "openai/clip-vit-large-patch14",
        "vocab.json",
        "merges.txt",
        str(tmp_path / "tokenizer"),
        tokenizer="openai/clip-vit-large-patch14",
    )
    assert "lonely" in message


def test_explicit_tokenizer_folder_is_used(tmp_path, tiny_state, tiny_tokenizer_dir):
    path = write(tmp_path, "separate.safetensors", tiny_state)
    model = load_model(path, tokenizer=tiny_tokenizer_dir, compute_hash=False)
    assert model.text_encoder.tokenize("the cat") == [513, 515]


def test_tokenizer_of_another_vocabulary_is_refused(tmp_path, tiny_state, tiny_tokenizer_dir):
    state = dict(tiny_state)
    key = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
    state[key] = torch.zeros(1000, state[key].shape[1])
    path = write(tmp_path, "vocab.safetensors", state, tiny_tokenizer_dir)
    expect_error(path, TokenizerNotFoundError, "1000")


def test_folder_that_is_not_a_diffusers_model(tmp_path):
    expect_error(tmp_path, CheckpointError, "model_index.json", "no .safetensors/.ckpt file")


def test_folder_with_one_single_file_loads_it(tiny_checkpoint):
    model = load_model(tiny_checkpoint.path.parent, compute_hash=False)
    assert model.name == "tiny" and model.path == tiny_checkpoint.path


def test_original_style_ckpt_with_lightning_callback_and_numpy_step_loads(
    tmp_path, tiny_state, tiny_tokenizer_dir, tiny_components, monkeypatch
):
    """CompVis' own .ckpt files also pickle a Lightning ModelCheckpoint and numpy scalars: harmless, accepted."""
    import sys
    import types

    import numpy as np

    module = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")

    class ModelCheckpoint:
        def __init__(self):
            self.best_model_score = torch.tensor(0.5)
            self.dirpath = "/logs"

    ModelCheckpoint.__module__, ModelCheckpoint.__qualname__ = module.__name__, "ModelCheckpoint"
    module.ModelCheckpoint = ModelCheckpoint
    for name in ("pytorch_lightning", "pytorch_lightning.callbacks"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    path = tmp_path / "sd-v1-4-style.ckpt"
    torch.save(
        {
            "state_dict": tiny_state,
            "global_step": np.int64(470000),
            "epoch": 6,
            "callbacks": {"ModelCheckpoint": ModelCheckpoint()},
        },
        path,
    )
    write(tmp_path, "unused.safetensors", {"x": torch.zeros(1)}, tiny_tokenizer_dir)
    model = load_model(path, compute_hash=False)
    expected = tiny_components.unet.state_dict()["out.2.weight"]
    torch.testing.assert_close(model.unet.state_dict()["out.2.weight"], expected)

"""Single files written by us (and by others' conventions) load back into identical networks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from webui.models.checkpoint import save_single_file, single_file_state_dict
from webui.models.loading import load_model
from webui.models.model import StableDiffusionModel
from webui.models.noise_schedule import scaled_linear_alphas_cumprod


def assert_same_weights(expected: torch.nn.Module, actual: torch.nn.Module) -> None:
    a, b = expected.state_dict(), actual.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)


def assert_loads_identically(model: StableDiffusionModel, components) -> None:
    assert_same_weights(components.unet, model.unet)
    assert_same_weights(components.vae, model.vae)
    assert_same_weights(components.text_model, model.text_encoder.model)
    assert model.unet.config == components.unet_config
    assert model.vae.config == components.vae_config


def write_variant(folder: Path, name: str, state: dict[str, torch.Tensor], tokenizer_dir: Path) -> Path:
    """Write ``state`` as ``folder/name`` (.safetensors or .ckpt pickle) with a tokenizer next to it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    tokenizer = folder / "tokenizer"
    if not tokenizer.exists():
        tokenizer.mkdir()
        for f in tokenizer_dir.iterdir():
            (tokenizer / f.name).write_bytes(f.read_bytes())
    return path


def test_tiny_checkpoint_round_trips_exactly(tiny_checkpoint):
    model = load_model(tiny_checkpoint.path, device="cpu", dtype=torch.float32, name="tiny")
    assert_loads_identically(model, tiny_checkpoint.components)
    assert model.name == "tiny"
    assert len(model.short_hash) == 10 and model.sha256.startswith(model.short_hash)
    torch.testing.assert_close(model.alphas_cumprod, scaled_linear_alphas_cumprod(), rtol=0, atol=0)
    assert model.text_encoder.model.embeddings.position_ids.device.type == "cpu"
    assert not any(p.requires_grad for p in model.unet.parameters())


@pytest.mark.parametrize(
    ("name", "text_model_prefix", "wrapper", "ema"),
    [
        ("new_keys.safetensors", True, False, False),
        ("old_keys.safetensors", False, False, True),
        ("wrapped.ckpt", True, True, True),
        ("flat_old_keys.ckpt", False, False, False),
    ],
)
def test_single_file_variants_load_identically(tmp_path, tiny_components, name, text_model_prefix, wrapper, ema):
    """Both text-encoder key styles, .safetensors and .ckpt, a ``state_dict`` wrapper and EMA copies."""
    state = single_file_state_dict(tiny_components.unet, tiny_components.vae, tiny_components.text_model)
    if not text_model_prefix:  # older files: cond_stage_model.transformer.embeddings...
        state = {k.replace("transformer.text_model.", "transformer."): v for k, v in state.items()}
    # Older exports also carry the CLIP position_ids buffer; it must be dropped, not loaded.
    state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    if ema:  # a different (EMA) UNet copy that must be ignored
        state.update(
            {
                "model_ema." + k[len("model.") :].replace(".", ""): torch.zeros_like(v)
                for k, v in state.items()
                if k.startswith("model.diffusion_model.")
            }
        )
        state["model_ema.num_updates"] = torch.tensor(7)
    if wrapper:
        state = {"state_dict": state, "global_step": 1234}
    path = write_variant(tmp_path, name, state, tiny_components.tokenizer_dir)
    model = load_model(path, device="cpu", dtype=torch.float32, compute_hash=False)
    assert_loads_identically(model, tiny_components)
    assert model.short_hash is None


def test_save_single_file_as_ckpt_loads_back(tmp_path, tiny_components):
    path = save_single_file(tmp_path / "m.ckpt", tiny_components.unet, tiny_components.vae, tiny_components.text_model)
    assert set(torch.load(path, weights_only=True)) == {"state_dict"}
    write_variant(tmp_path, "unused.ckpt", {}, tiny_components.tokenizer_dir)
    assert_loads_identically(load_model(path, compute_hash=False), tiny_components)


def test_loaded_model_computes_like_the_original(tiny_checkpoint):
    c = tiny_checkpoint.components
    model = load_model(tiny_checkpoint.path, compute_hash=False)
    g = torch.Generator().manual_seed(1)
    x, ctx = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 128, generator=g)
    t = torch.tensor([10, 900])
    with torch.no_grad():
        torch.testing.assert_close(model.unet(x, t, ctx), c.unet(x, t, ctx), rtol=0, atol=0)
        ids = torch.tensor([[model.text_encoder.bos_id, 513, 515, model.text_encoder.eos_id] + [519] * 73])
        torch.testing.assert_close(model.text_encoder.encode_ids(ids), c.text_model(ids).last_hidden_state)


def test_load_model_in_bfloat16_converts_floats_only(tiny_checkpoint):
    model = load_model(tiny_checkpoint.path, dtype=torch.bfloat16, compute_hash=False)
    assert {p.dtype for p in model.unet.parameters()} == {torch.bfloat16}
    assert model.text_encoder.model.embeddings.position_ids.dtype == torch.long
    assert model.alphas_cumprod.dtype == torch.float32


def test_model_encode_and_decode_scale_latents(tiny_checkpoint):
    model = load_model(tiny_checkpoint.path, compute_hash=False)
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    latents = model.encode(image)
    mean, _ = tiny_checkpoint.components.vae.encode(image)
    torch.testing.assert_close(latents, mean.detach() * 0.18215)
    decoded = model.decode(latents)
    expected = tiny_checkpoint.components.vae.decode(mean).detach().clamp(-1, 1)
    assert decoded.shape == (1, 3, 64, 64) and decoded.dtype == torch.float32
    # Scaling by 0.18215 and back is not exact in float32: rounding, not a wrong scale, moves a pixel by ~1e-5.
    torch.testing.assert_close(decoded, expected, atol=1e-4, rtol=0)
    sampled = model.encode(image, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(sampled, latents)


@pytest.mark.slow
def test_decode_retries_in_float32_after_half_precision_overflow(tiny_checkpoint):
    model = load_model(tiny_checkpoint.path, dtype=torch.bfloat16, compute_hash=False)
    calls = []
    original = model.vae.decode

    def overflowing_decode(z):
        calls.append(z.dtype)
        out = original(z)
        return out * float("nan") if z.dtype != torch.float32 else out

    model.vae.decode = overflowing_decode
    image = model.decode(torch.zeros(1, 4, 8, 8))
    assert calls == [torch.bfloat16, torch.float32]
    assert torch.isfinite(image).all()
    assert model.vae_dtype == torch.float32
    assert {p.dtype for p in model.vae.parameters()} == {torch.float32}

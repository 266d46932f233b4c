"""The single-file writer produces the SD 1.x key layout."""

from __future__ import annotations

import torch
from safetensors import safe_open

from webui.models.noise_schedule import scaled_linear_alphas_cumprod


def test_single_file_has_compvis_prefixes_and_schedule(tiny_checkpoint):
    with safe_open(str(tiny_checkpoint.path), framework="pt") as f:
        keys = set(f.keys())
        alphas = f.get_tensor("alphas_cumprod")
    prefixes = {k.split(".")[0] for k in keys}
    assert prefixes == {"model", "first_stage_model", "cond_stage_model", "alphas_cumprod"}
    assert "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight" in keys
    assert "first_stage_model.encoder.mid.attn_1.q.weight" in keys
    assert "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" in keys
    assert "cond_stage_model.transformer.text_model.final_layer_norm.weight" in keys
    assert not any(k.endswith("position_ids") for k in keys)
    torch.testing.assert_close(alphas, scaled_linear_alphas_cumprod(), rtol=0, atol=0)
    n_unet = sum(1 for k in keys if k.startswith("model.diffusion_model."))
    assert n_unet == len(tiny_checkpoint.components.unet.state_dict())


def test_tiny_components_produce_nontrivial_outputs(tiny_components):
    c = tiny_components
    ids = torch.tensor([c.tokenizer("a cat", padding="max_length", max_length=77)["input_ids"]])
    with torch.no_grad():
        context = c.text_model(ids).last_hidden_state
        eps = c.unet(torch.randn(1, 4, 8, 8), torch.tensor([500]), context)
        image = c.vae.decode(torch.randn(1, 4, 8, 8))
    assert context.shape == (1, 77, 128)
    assert eps.shape == (1, 4, 8, 8) and eps.std() > 1e-3
    assert image.shape == (1, 3, 64, 64) and image.std() > 1e-3


def test_text_encoder_keys_take_both_layouts_and_drop_position_ids():
    from webui.models.checkpoint import text_encoder_keys

    stored = [
        "text_model.final_layer_norm.weight",
        "encoder.layers.0.mlp.fc1.weight",
        "text_model.embeddings.position_ids",
        "embeddings.position_ids",
    ]
    assert text_encoder_keys(stored) == {
        "final_layer_norm.weight": "text_model.final_layer_norm.weight",
        "encoder.layers.0.mlp.fc1.weight": "encoder.layers.0.mlp.fc1.weight",
    }

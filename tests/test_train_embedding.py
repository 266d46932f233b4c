"""``python -m webui.train embedding``: textual inversion trains only the word's vectors, through the same
insertion that generation uses, and writes an A1111 file that this app (and diffusers) load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from webui.extra_networks.embeddings import read_embedding
from webui.train.embedding import (
    EmbeddingTrainConfig,
    evaluate_loss,
    initial_vectors,
    save_a1111_embedding,
    style_caption,
    style_scenes,
    train_embedding,
)


def test_style_scenes_are_white_shapes_on_black_and_captions_use_the_word() -> None:
    rng = np.random.default_rng(0)
    scenes = style_scenes(20, rng)
    assert {s.background for s in scenes} == {"black"} and {s.shapes[0].colour for s in scenes} == {"white"}
    assert len({s.shapes[0].kind for s in scenes}) == 5
    assert all("nightstyle" in style_caption(s, "nightstyle", rng) for s in scenes)


def test_training_moves_only_the_words_vectors_and_lowers_the_loss(tiny_checkpoint, tmp_path: Path) -> None:
    from webui.models.loading import load_model

    model = load_model(tiny_checkpoint.path, native_size=(64, 64))
    frozen = {
        name: p.detach().clone()
        for module in (model.unet, model.vae, model.text_encoder.model)
        for name, p in module.named_parameters()
    }
    config = EmbeddingTrainConfig(word="inkstyle", vectors=3, steps=30, batch_size=4, scenes=16, lr=0.05)
    vec, losses = train_embedding(model, config, log=lambda _: None)

    assert vec.shape == (3, model.text_encoder.hidden_size) and bool(torch.isfinite(vec).all())
    assert len(losses) == 30 and all(np.isfinite(losses))
    start = initial_vectors(model, config.init_text, config.vectors)
    assert not torch.allclose(vec, start)
    # a random tiny UNet hardly listens to its text, so only the direction is checked here (the demo test
    # holds the shipped embedding to its effect)
    assert evaluate_loss(model, vec, config) < evaluate_loss(model, start, config)
    after = {
        name: p for module in (model.unet, model.vae, model.text_encoder.model) for name, p in module.named_parameters()
    }
    assert all(torch.equal(frozen[name], p) for name, p in after.items())

    path = save_a1111_embedding(tmp_path / "inkstyle.pt", vec, word="inkstyle", step=30, model=model)
    embedding = read_embedding(path)
    assert (embedding.name, embedding.vectors, embedding.step) == ("inkstyle", 3, 30)
    assert embedding.sd_checkpoint == model.short_hash and embedding.sd_checkpoint_name == model.name
    torch.testing.assert_close(embedding.vec, vec)

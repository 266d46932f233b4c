"""The shipped textual-inversion embedding ``models/embeddings/nightstyle.pt`` (``python -m webui.train embedding``):
an A1111 file for the demo model, and it does what its card says: "a star in nightstyle" draws a white shape on
a black background far more often with the embedding than with the word as plain text."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EMBEDDING = ROOT / "models" / "embeddings" / "nightstyle.pt"
DEMO_FILE = ROOT / "models" / "demo" / "demo.safetensors"

# Measured when shipped: 9/20 with, 0/20 without (models/embeddings/README.md); a little slack for other CPUs.
WITH_AT_LEAST, WITHOUT_AT_MOST = 7, 2

pytestmark = pytest.mark.skipif(
    not (EMBEDDING.is_file() and DEMO_FILE.is_file()), reason="the demo model or its embedding is not shipped"
)


@pytest.fixture(scope="module")
def model():
    from webui.models.loading import load_model

    return load_model(DEMO_FILE, native_size=(64, 64), name="demo")


def test_the_shipped_file_is_a_small_a1111_embedding_for_the_demo(model) -> None:
    import torch

    from webui.extra_networks.embeddings import read_embedding

    raw = torch.load(EMBEDDING, weights_only=True)
    assert set(raw) >= {"string_to_token", "string_to_param", "name", "step", "sd_checkpoint", "sd_checkpoint_name"}
    embedding = read_embedding(EMBEDDING)
    assert embedding.shape == model.text_encoder.hidden_size and embedding.vectors == 2
    assert embedding.sd_checkpoint == model.short_hash and embedding.sd_checkpoint_name == "demo"
    assert EMBEDDING.stat().st_size < 16 * 1024


@pytest.mark.slow
def test_the_word_makes_white_shapes_on_black_with_the_embedding_only(model) -> None:
    from webui.extra_networks.embeddings import EmbeddingVocabulary, read_embedding
    from webui.sampling import create_sampler_registry
    from webui.train.embedding import measure_style

    vocabulary = EmbeddingVocabulary([read_embedding(EMBEDDING)], model.text_encoder.tokenize)
    report = measure_style(model, create_sampler_registry(), vocabulary)
    print(report.table())
    assert report.total == 20
    assert report.with_embedding >= WITH_AT_LEAST
    assert report.without <= WITHOUT_AT_MOST

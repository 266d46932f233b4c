"""``python -m webui.train lora``: the diamond reader, the training loop's output file, and the shipped demo LoRA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from webui.extra_networks.lora_file import read_lora
from webui.extra_networks.lora_keys import model_key_map
from webui.extra_networks.lora_merge import lora_deltas
from webui.train import data
from webui.train.lora import (
    LoraTrainConfig,
    diamond_caption,
    is_diamond,
    random_diamond,
    render_diamond,
    save_lora,
    train_lora,
)


def test_the_reader_sees_drawn_diamonds_and_none_of_the_demos_shapes():
    rng = np.random.default_rng(1)
    diamonds = [random_diamond(rng) for _ in range(100)]
    read = sum(is_diamond(render_diamond(d.colour, d.background, d.cx, d.cy, d.half)) for d in diamonds)
    assert read >= 90
    others = [data.random_scene(rng) for _ in range(200)]
    assert sum(is_diamond(data.render(s, 64)) for s in others if len(s.shapes) == 1) == 0


def test_captions_use_the_new_word_in_the_demos_style():
    rng = np.random.default_rng(2)
    captions = [diamond_caption(random_diamond(rng), rng) for _ in range(50)]
    assert all("diamond" in c for c in captions)
    assert any(c.startswith("a ") and "background" in c for c in captions)


def test_a_short_run_trains_only_the_lora_and_writes_a_kohya_file_that_fits_the_model(tiny_checkpoint, tmp_path):
    from webui.models.loading import load_model

    model = load_model(tiny_checkpoint.path, native_size=(64, 64))
    before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    config = LoraTrainConfig(steps=3, batch_size=4, pool_size=8, rank=4, alpha=4.0)
    lora = train_lora(model, config)
    lora.detach()
    assert all(torch.equal(v, before[k]) for k, v in model.unet.state_dict().items())  # the model is frozen
    assert any(pair.up.abs().sum() > 0 for pair in lora.pairs.values())  # up starts at zero: it learnt
    path = save_lora(lora, tmp_path / "diamond_test.safetensors", config)
    network = read_lora(path)
    assert network.metadata["ss_output_name"] == "diamond_test" and network.metadata["ss_network_dim"] == "4"
    deltas = lora_deltas(network, model_key_map(model), 1.0, 1.0)  # every key matches a layer
    assert len(deltas) == len(lora.pairs)


ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "Lora" / "diamond_demo.safetensors"


@pytest.mark.slow
def test_the_shipped_lora_teaches_the_demo_model_the_word_diamond():
    """The measured effect in the model card, on fewer prompts: more diamonds with the LoRA than without."""
    from webui.models.loading import load_model
    from webui.train.lora import measure_diamonds

    model = load_model(ROOT / "models" / "demo" / "demo.safetensors", native_size=(64, 64), compute_hash=False)
    measured = measure_diamonds(model, SHIPPED.parent, SHIPPED.stem, count=12)
    assert measured.with_lora >= measured.without_lora + 4, measured.text

"""Contrastive pretraining of the text encoder (tiny configurations, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from webui.models.vae import AutoencoderKL, VAEConfig
from webui.train import data
from webui.train.demo import DemoArchitecture, build_text_model
from webui.train.diffusion_training import build_pool, pool_scenes
from webui.train.text_pretraining import (
    ContrastiveTowers,
    TextPretrainConfig,
    contrastive_batch,
    contrastive_loss,
    scene_description,
    shape_separation,
    train_text_steps,
)
from webui.train.tokenizer import load_tokenizer, write_tokenizer


def test_loss_is_low_and_retrieval_right_when_captions_point_at_their_images():
    embeds = torch.eye(4) * 3 + 0.1
    scale = torch.tensor(np.log(20.0))
    matched, accuracy = contrastive_loss(embeds, embeds, torch.eye(4), scale)
    shuffled, wrong = contrastive_loss(embeds, embeds[[1, 2, 3, 0]], torch.eye(4), scale)
    assert accuracy == 1.0 and wrong == 0.0
    assert matched < 0.01 < 1.0 < shuffled


def test_scenes_that_only_differ_by_jitter_all_count_as_matches():
    rng = np.random.default_rng(0)
    a = data.Scene("blue", (data._jittered_shape(rng, "star", "red", "small", "top left"),))
    b = data.Scene("blue", (data._jittered_shape(rng, "star", "red", "small", "top left"),))
    c = data.Scene("blue", (data._jittered_shape(rng, "heart", "red", "small", "top left"),))
    assert a != b and scene_description(a) == scene_description(b) != scene_description(c)

    captions, matches = contrastive_batch(
        [a, b, c], [scene_description(s) for s in (a, b, c)], np.array([0, 1, 2, 0]), rng
    )
    assert len(captions) == 4 and "heart" in captions[2]
    expected = [[1, 1, 0, 1], [1, 1, 0, 1], [0, 0, 1, 0], [1, 1, 0, 1]]
    assert matches.tolist() == expected
    # With two right answers for a caption, putting all weight on one of them is not a perfect score.
    embeds = torch.eye(4) * 10
    loss, accuracy = contrastive_loss(embeds, embeds, matches, torch.tensor(np.log(100.0)))
    assert accuracy == 1.0 and loss > 0.5


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tokenizer")
    write_tokenizer(folder, data.caption_corpus(0, 2000))
    tokenizer = load_tokenizer(folder)
    architecture = DemoArchitecture(
        image_size=32, vae=VAEConfig(ch=32, ch_mult=(1, 1, 1), num_res_blocks=1), text_width=64, text_layers=1
    )
    vae = AutoencoderKL(architecture.vae).eval()
    pool = build_pool(vae, pool_scenes(0, 1056), 32, torch.device("cpu"))
    return architecture, tokenizer, vae, pool


@pytest.mark.slow
def test_pretraining_teaches_the_text_encoder_to_find_its_scene_among_others(tiny_setup):
    """Held-out scenes, fresh captions: retrieval in a batch of 32 goes from chance (1 in 32) to many
    times that, and the pooled text state separates the shape classes better than at initialisation."""
    architecture, tokenizer, vae, pool = tiny_setup
    train = type(pool)(pool.scenes[:1024], pool.means[:1024], pool.stds[:1024])
    held_out = pool.scenes[1024:]
    text_model = build_text_model(architecture, tokenizer)
    towers = ContrastiveTowers(4, 8, architecture.text_width)
    descriptions = [scene_description(s) for s in held_out]
    latents = pool.means[1024:].float() * vae.config.scale_factor

    def held_out_accuracy() -> float:
        with torch.no_grad():
            captions, matches = contrastive_batch(held_out, descriptions, np.arange(32), np.random.default_rng(9))
            ids = tokenizer(captions, padding="longest", return_tensors="pt").input_ids
            text = towers.text_projection(text_model(input_ids=ids).pooler_output)
            return float(contrastive_loss(text, towers.image(latents), matches, towers.logit_scale)[1])

    before, separation_before = held_out_accuracy(), shape_separation(text_model, tokenizer, torch.device("cpu"))
    config = TextPretrainConfig(steps=300, batch_size=64, lr=2e-3, warmup=10)
    optimizer = torch.optim.AdamW([*text_model.parameters(), *towers.parameters()], lr=config.lr)
    losses = []
    train_text_steps(
        text_model,
        towers,
        tokenizer,
        optimizer,
        train,
        config,
        0,
        torch.device("cpu"),
        vae.config.scale_factor,
        lambda step, values: losses.append(values["loss"]),
    )
    after = held_out_accuracy()
    separation_after = shape_separation(text_model, tokenizer, torch.device("cpu"))
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])
    assert before < 0.1 and after > 0.2, (before, after)
    assert separation_after > separation_before + 0.1, (separation_before, separation_after)

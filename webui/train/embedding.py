"""Textual inversion on the demo model: learn the vectors of one new word, everything else frozen.

Gal et al. 2022 (arXiv 2208.01618): the word's ``n`` input vectors are the only trainable parameters; the
loss is Stable Diffusion's own noise-prediction error (:func:`webui.train.diffusion_training.diffusion_loss`,
Min-SNR weighted, the same high-noise weighting and offset noise as the demo's UNet training) on images of
the concept, with captions that use the word. The vectors go into the text encoder exactly where generation
puts them (:func:`webui.models.text_encoder.replaced_token_vectors`), so what is trained is what is used.

The demo concept is a *style*, ``nightstyle``: any shape drawn white on a black background. The model knows
"white" and "black" but has never seen the word; after training, "a star in nightstyle" draws a white star on
black. :func:`measure_style` counts how often generated images follow the style with and without the
embedding (the effect shipped in ``models/embeddings/README.md`` and held by ``tests/test_demo_embedding.py``).

Output: an A1111 ``.pt`` (``string_to_param``, ``step``, ``sd_checkpoint``, ``sd_checkpoint_name``), loadable
by this app, AUTOMATIC1111 and diffusers' ``load_textual_inversion``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from webui.train import data

STYLE_WORD = "nightstyle"
STYLE_COLOUR, STYLE_BACKGROUND = "white", "black"
TEMPLATES = ("a {shape} in {word}", "a {word} {shape}", "{word}, a {shape}", "a {size} {shape} in {word}")
MEASURE_TEMPLATE = "a {shape} in {word}"


@dataclass(frozen=True)
class EmbeddingTrainConfig:
    word: str = STYLE_WORD
    vectors: int = 2
    steps: int = 400
    batch_size: int = 16
    lr: float = 5e-3  # A1111's default textual-inversion learning rate
    scenes: int = 256
    init_text: str = "shape"  # the word whose token vectors the new ones start from
    min_snr_gamma: float = 5.0
    offset_noise: float = 0.1
    high_noise_weight: float = 5.0
    seed: int = 0


def style_scenes(count: int, rng: np.random.Generator) -> list[data.Scene]:
    """``count`` one-shape scenes in the style: every shape, size and place, white on black (with jitter)."""
    scenes = []
    for _ in range(count):
        kind = data.SHAPES[rng.integers(len(data.SHAPES))]
        size = list(data.SIZES)[rng.integers(len(data.SIZES))]
        position = "center" if size == "large" else list(data.POSITIONS)[rng.integers(len(data.POSITIONS))]
        shape = data._jittered_shape(rng, kind, STYLE_COLOUR, size, position)
        scenes.append(data.Scene(STYLE_BACKGROUND, (shape,)))
    return scenes


def style_caption(scene: data.Scene, word: str, rng: np.random.Generator) -> str:
    shape = scene.shapes[0]
    words = data.SHAPE_WORDS[shape.kind]
    text = TEMPLATES[rng.integers(len(TEMPLATES))].format(
        shape=words[rng.integers(len(words))], word=word, size=shape.size
    )
    return text.replace("a a", "an a")


def initial_vectors(model: Any, text: str, count: int) -> torch.Tensor:
    """(count, D) start vectors: the token vectors of ``text`` spread over ``count`` (A1111's ``create_embedding``)."""
    ids = model.text_encoder.tokenize(text) or [model.text_encoder.eos_id]
    table = model.text_encoder.model.embeddings.token_embedding.weight.detach().float()
    rows = [table[ids[i * len(ids) // count]] for i in range(count)]
    return torch.stack(rows).clone()


@dataclass
class _StyleData:
    """The concept's scenes, their latents, and the placeholder vocabulary that finds the word in captions."""

    scenes: list[data.Scene]
    latents: torch.Tensor
    vocabulary: Any


def _style_data(model: Any, config: EmbeddingTrainConfig) -> _StyleData:
    from webui.extra_networks.embeddings import Embedding, EmbeddingVocabulary

    scenes = style_scenes(config.scenes, np.random.default_rng([config.seed, 1]))
    size = model.native_size[0]
    with torch.no_grad():
        images = torch.from_numpy(np.stack([data.image_to_array(data.render(s, size)) for s in scenes]))
        latents = model.encode(images).float()  # posterior means times the scale factor: what the UNet saw
    placeholder = Embedding(config.word, torch.zeros(config.vectors, model.text_encoder.hidden_size))
    return _StyleData(scenes, latents, EmbeddingVocabulary([placeholder], model.text_encoder.tokenize))


def _batch_loss(
    model: Any,
    vec: torch.Tensor,
    style: _StyleData,
    config: EmbeddingTrainConfig,
    rng: np.random.Generator,
    generator: torch.Generator,
) -> torch.Tensor:
    """The noise-prediction loss of one batch, the word's vectors put in where generation puts them."""
    from webui.models.text_encoder import replaced_token_vectors
    from webui.pipeline.conditioning import token_ids
    from webui.pipeline.prompts import chunk_prompt
    from webui.train.diffusion_training import diffusion_loss

    encoder = model.text_encoder
    batch = rng.integers(len(style.scenes), size=config.batch_size)
    captions = [style_caption(style.scenes[i], config.word, rng) for i in batch]
    ids_of = token_ids(encoder)
    chunks = [chunk_prompt(c, encoder.tokenize, ids_of, embeddings=style.vocabulary)[0][0] for c in captions]
    ids = torch.tensor([chunk.tokens for chunk in chunks])
    placed = [[(position, vec) for position, _ in chunk.fixes] for chunk in chunks]
    with replaced_token_vectors(encoder.model.embeddings.token_embedding, placed):
        return diffusion_loss(
            model.unet,
            encoder.model,
            ids,
            style.latents[torch.from_numpy(batch)],
            model.alphas_cumprod,
            generator,
            config.min_snr_gamma,
            config.offset_noise,
            config.high_noise_weight,
        )


def evaluate_loss(model: Any, vec: torch.Tensor, config: EmbeddingTrainConfig, batches: int = 8) -> float:
    """Mean loss of ``vec`` on fixed batches (same scenes, captions, timesteps and noise for every ``vec``)."""
    style = _style_data(model, config)
    rng, generator = np.random.default_rng(12345), torch.Generator().manual_seed(12345)
    with torch.no_grad():
        return float(np.mean([_batch_loss(model, vec, style, config, rng, generator).item() for _ in range(batches)]))


def train_embedding(
    model: Any, config: EmbeddingTrainConfig, log: Callable[[str], None] = print
) -> tuple[torch.Tensor, list[float]]:
    """Learn ``config.word``'s vectors on ``model`` (a loaded demo-style model, frozen); returns them and the losses."""
    rng = np.random.default_rng(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    for module in (model.unet, model.vae, model.text_encoder.model):
        module.requires_grad_(False).eval()
    style = _style_data(model, config)
    vec = torch.nn.Parameter(initial_vectors(model, config.init_text, config.vectors))
    optimizer = torch.optim.AdamW([vec], lr=config.lr, weight_decay=0.0)
    losses: list[float] = []
    started = time.monotonic()
    for step in range(config.steps):
        loss = _batch_loss(model, vec, style, config, rng, generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if (step + 1) % 50 == 0 or step == 0:
            recent = sum(losses[-50:]) / len(losses[-50:])
            log(f"step {step + 1}/{config.steps}: loss {recent:.4f} ({time.monotonic() - started:.0f} s)")
    return vec.detach().clone(), losses


def save_a1111_embedding(path: Path, vec: torch.Tensor, *, word: str, step: int, model: Any) -> Path:
    """Write ``vec`` as AUTOMATIC1111's ``Embedding.save`` does (the word is the file's stem)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "string_to_token": {"*": 265},
            "string_to_param": {"*": vec.detach().float().cpu()},
            "name": word,
            "step": step,
            "sd_checkpoint": getattr(model, "short_hash", None),
            "sd_checkpoint_name": getattr(model, "name", None),
        },
        path,
    )
    return path


@dataclass(frozen=True)
class StyleReport:
    """How many of ``total`` generated images follow the style, with the embedding and with the word as plain text."""

    with_embedding: int
    without: int
    shape_right_with: int
    total: int
    settings: str

    def table(self) -> str:
        return (
            f"{self.settings}: white shape on black background in {self.with_embedding}/{self.total} images with the "
            f"embedding, {self.without}/{self.total} without it (the word as plain text); shape class right in "
            f"{self.shape_right_with}/{self.total} with it"
        )


def measure_style(
    model: Any,
    samplers: Any,
    embeddings: Any,
    *,
    word: str = STYLE_WORD,
    seeds_per_shape: int = 4,
    sampler: str = "DPM++ 2M",
    steps: int = 8,
    cfg_scale: float = 3.0,
) -> StyleReport:
    """Generate ``a {shape} in {word}`` for every shape and ``seeds_per_shape`` seeds, with and without
    ``embeddings`` (an :class:`~webui.extra_networks.embeddings.EmbeddingVocabulary`), and read each image."""
    from webui.pipeline import GenerationRequest, generate, native_size, resolve_request
    from webui.train.measure import read_image

    counts = {"with": 0, "without": 0, "shape": 0}
    total = 0
    for kind in data.SHAPES:
        for seed in range(seeds_per_shape):
            request = GenerationRequest(
                prompt=MEASURE_TEMPLATE.format(shape=kind, word=word),
                sampler_name=sampler,
                steps=steps,
                cfg_scale=cfg_scale,
                seed=5000 + seed,
            )
            resolved = resolve_request(request, samplers, native_size(model))
            for key, vocabulary in (("with", embeddings), ("without", None)):
                reading = read_image(generate(model, resolved, embeddings=vocabulary).images[0])
                styled = reading.background == STYLE_BACKGROUND and reading.colour == STYLE_COLOUR
                counts[key] += styled
                if key == "with":
                    counts["shape"] += reading.shape == kind
            total += 1
    return StyleReport(
        counts["with"], counts["without"], counts["shape"], total, f"{sampler}, {steps} steps, CFG {cfg_scale:g}"
    )


def run(
    model_path: Path, out: Path, config: EmbeddingTrainConfig, *, measure: bool = True, threads: int | None = None
) -> Path:
    """Train on the model at ``model_path`` (a models.yaml-style single file), write ``out``, print the effect."""
    from webui.extra_networks.embeddings import EmbeddingVocabulary, read_embedding
    from webui.models.loading import load_model
    from webui.sampling import create_sampler_registry

    if threads:
        torch.set_num_threads(threads)
    model = load_model(model_path, native_size=(64, 64))
    started = time.monotonic()
    vec, losses = train_embedding(model, config)
    print(f"trained {config.word} ({config.vectors} vectors) in {time.monotonic() - started:.0f} s", flush=True)
    save_a1111_embedding(out, vec, word=config.word, step=config.steps, model=model)
    print(f"wrote {out} ({out.stat().st_size} bytes)", flush=True)
    if measure:
        vocabulary = EmbeddingVocabulary([read_embedding(out)], model.text_encoder.tokenize)
        print(measure_style(model, create_sampler_registry(), vocabulary, word=config.word).table(), flush=True)
    return out

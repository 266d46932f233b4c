"""Phase 2a: CLIP-style contrastive pretraining of the text encoder before the UNet phase.

Stable Diffusion 1.x does not learn its text encoder through the UNet: it uses OpenAI's CLIP
text tower, pretrained contrastively on image-caption pairs (Radford et al. 2021, arXiv
2103.00020), whose features already say what a caption shows, whatever words it uses. A text
encoder learnt from scratch through the UNet's gradient only learns the words that change the
noise prediction early and strongly: the demo's colour words, but not its shape words, whose
synonyms ("disc", "box", "five pointed star") and varied sentence templates each got a sliver of
an already weak gradient (see the model card, ``models/demo/README.md``).

This phase gives the demo the same start at small scale: the CLIP text model (the one that is
shipped) and a small convolutional image tower on the frozen VAE's latents of the latent pool
are trained with CLIP's symmetric contrastive loss to tell the scenes of a batch apart by their
captions. Captions are drawn fresh for every step, so synonyms and templates of one scene must
land on the same embedding. Scenes with the same description (colours, shapes, sizes and places;
only the jitter differs) are all counted as matches. The image tower and the projection are
dropped afterwards; the text encoder is then kept frozen while the UNet trains
(:mod:`webui.train.diffusion_training`), as SD 1.x keeps CLIP.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from webui.train import data
from webui.train.diffusion_training import LatentPool
from webui.train.vae_training import lr_at


@dataclass(frozen=True)
class TextPretrainConfig:
    steps: int = 400
    batch_size: int = 256
    lr: float = 1e-3
    warmup: int = 50
    seed: int = 0


class ContrastiveTowers(nn.Module):
    """What the text encoder is trained against: an image tower on latents and both projections."""

    def __init__(self, latent_channels: int, latent_size: int, text_width: int, embed_dim: int = 128):
        super().__init__()
        side = math.ceil(math.ceil(latent_size / 2) / 2)
        self.image = nn.Sequential(
            nn.Conv2d(latent_channels, 64, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(64, 128, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(128, 128, 3, stride=2, padding=1),
            nn.SiLU(),
            # Flattened rather than pooled: where a shape sits is part of what a caption says.
            nn.Flatten(),
            nn.Linear(128 * side * side, 256),
            nn.SiLU(),
            nn.Linear(256, embed_dim),
        )
        self.text_projection = nn.Linear(text_width, embed_dim, bias=False)
        # CLIP's learnt temperature, started at 1 / 0.07 and capped at 100.
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))


def scene_description(scene: data.Scene) -> tuple:
    """What a caption can say about a scene: everything except the jitter."""
    return scene.background, tuple((s.kind, s.colour, s.size, s.position) for s in scene.shapes)


def contrastive_loss(
    text_embeds: torch.Tensor, image_embeds: torch.Tensor, matches: torch.Tensor, logit_scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP's symmetric cross-entropy, with every matching pair of the batch as a target.

    ``matches[i, j]`` is 1 where caption i describes image j (the diagonal always). Returns the loss
    and the share of captions whose nearest image is a match.
    """
    text_embeds = F.normalize(text_embeds, dim=-1)
    image_embeds = F.normalize(image_embeds, dim=-1)
    logits = logit_scale.exp().clamp(max=100.0) * text_embeds @ image_embeds.T
    per_caption = matches / matches.sum(dim=1, keepdim=True)
    per_image = matches / matches.sum(dim=0, keepdim=True)
    loss = 0.5 * (
        -(per_caption * logits.log_softmax(dim=1)).sum(dim=1).mean()
        - (per_image * logits.log_softmax(dim=0)).sum(dim=0).mean()
    )
    accuracy = matches.gather(1, logits.argmax(dim=1, keepdim=True)).mean()
    return loss, accuracy


def pooled_text(text_model: nn.Module, tokenizer, captions: list[str], device: torch.device) -> torch.Tensor:
    """The CLIP text model's pooled state (the end token's), as CLIP trains it.

    Padded only to the batch's longest caption: the causal attention mask means no token before
    the end token sees the padding, so the pooled state is the same as with SD's 77 positions.
    """
    ids = tokenizer(captions, padding="longest", return_tensors="pt").input_ids
    return text_model(input_ids=ids.to(device)).pooler_output


def contrastive_batch(
    scenes: list[data.Scene], descriptions: list[tuple], indices: np.ndarray, rng: np.random.Generator
) -> tuple[list[str], torch.Tensor]:
    """Fresh captions for the scenes at ``indices`` and their (B, B) matrix of matching descriptions."""
    captions = [data.caption(scenes[i], rng) for i in indices]
    keys = [descriptions[i] for i in indices]
    matches = torch.tensor([[a == b for b in keys] for a in keys], dtype=torch.float32)
    return captions, matches


def train_text_steps(
    text_model: nn.Module,
    towers: ContrastiveTowers,
    tokenizer,
    optimizer: torch.optim.Optimizer,
    pool: LatentPool,
    config: TextPretrainConfig,
    start: int,
    device: torch.device,
    scale_factor: float,
    on_step: Callable[[int, dict[str, float]], None],
) -> None:
    """Run steps ``start .. config.steps - 1``; each step's batch depends only on (seed, step)."""
    descriptions = [scene_description(s) for s in pool.scenes]
    params = [*text_model.parameters(), *towers.parameters()]
    text_model.train()
    towers.train()
    for step in range(start, config.steps):
        rng = np.random.default_rng([config.seed, 4, step])
        indices = rng.integers(0, len(pool.scenes), size=config.batch_size)
        captions, matches = contrastive_batch(pool.scenes, descriptions, indices, rng)
        latents = (pool.means[torch.from_numpy(indices)].float() * scale_factor).to(device)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config.steps, config.lr, config.warmup)
        text_embeds = towers.text_projection(pooled_text(text_model, tokenizer, captions, device))
        loss, accuracy = contrastive_loss(text_embeds, towers.image(latents), matches.to(device), towers.logit_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        on_step(step, {"loss": float(loss.detach()), "accuracy": float(accuracy)})
    text_model.eval()
    towers.eval()


@torch.no_grad()
def shape_separation(text_model: nn.Module, tokenizer, device: torch.device, seed: int = 3) -> float:
    """How well the pooled text state tells the shape classes apart, whatever words name them.

    Every one-shape scene (5 shapes x 56 colour pairs) gets one caption drawn with ``data.caption``
    (synonyms, templates, size and place words); the score is the share of captions whose pooled
    state lies nearest (cosine) to the mean state of their own shape class. 0.2 is chance.
    """
    rng = np.random.default_rng(seed)
    names = list(data.COLOURS)
    scenes = [data.single_shape_scene(k, c, b) for k in data.SHAPES for c in names for b in names if b != c]
    embeds = F.normalize(pooled_text(text_model, tokenizer, [data.caption(s, rng) for s in scenes], device), dim=-1)
    labels = torch.tensor([data.SHAPES.index(s.shapes[0].kind) for s in scenes], device=embeds.device)
    centroids = torch.stack([embeds[labels == k].mean(dim=0) for k in range(len(data.SHAPES))])
    return float(((embeds @ centroids.T).argmax(dim=1) == labels).float().mean())

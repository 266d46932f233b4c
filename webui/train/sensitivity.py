"""Which caption words a demo-style model has learnt to read: a training diagnostic.

:mod:`webui.train.adherence` says whether generated pictures follow the prompt; this says which
words the model listens to. For the plain caption of a one-shape scene ("a red star on a blue
background") it swaps one word -- the shape, the shape's colour or the background colour -- and
measures how much the UNet's noise prediction for the same noisy latent changes (root mean square
over the latent), averaged over scenes and over noise levels high enough that the caption, not the
noisy latent, has to decide the picture. A word the model has not learnt to read changes nothing.

The figure moves long before the adherence rates do, and needs no sampling, so it tracks a
training recipe cheaply. A UNet whose cross-attention is cut off scores exactly 0 for every word.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from webui.train import data

WORDS: tuple[str, ...] = ("shape", "colour", "background")
TIMESTEPS: tuple[int, ...] = (950, 800, 650, 500)


@dataclass(frozen=True)
class WordSwap:
    """A one-shape scene and, for each kind of word, its caption with that word swapped."""

    kind: str
    colour: str
    background: str
    swapped: dict[str, str]

    @property
    def caption(self) -> str:
        return data.simple_caption(self.kind, self.colour, self.background)


def word_swaps(count: int, seed: int = 0) -> list[WordSwap]:
    """``count`` scenes over all shapes; each swap picks another shape or an unused colour."""
    rng = np.random.default_rng([seed, 11])
    names = list(data.COLOURS)
    swaps = []
    for i in range(count):
        kind = data.SHAPES[i % len(data.SHAPES)]
        colour = names[rng.integers(len(names))]
        background = [c for c in names if c != colour][rng.integers(len(names) - 1)]
        unused = [c for c in names if c not in (colour, background)]
        other_kind = [k for k in data.SHAPES if k != kind][rng.integers(len(data.SHAPES) - 1)]
        swapped = {
            "shape": data.simple_caption(other_kind, colour, background),
            "colour": data.simple_caption(kind, unused[rng.integers(len(unused))], background),
            "background": data.simple_caption(kind, colour, unused[rng.integers(len(unused))]),
        }
        swaps.append(WordSwap(kind, colour, background, swapped))
    return swaps


@dataclass(frozen=True)
class SensitivityReport:
    timesteps: tuple[int, ...]
    by_word: dict[str, tuple[float, ...]]
    """Mean RMS change of the noise prediction, per word kind, one value per timestep."""

    def mean(self, word: str) -> float:
        return float(np.mean(self.by_word[word]))

    def table(self) -> str:
        lines = [f"{'swapped word':<14}" + "".join(f"{f't={t}':>9}" for t in self.timesteps) + f"{'mean':>9}"]
        for word, values in self.by_word.items():
            lines.append(f"{word:<14}" + "".join(f"{v:>9.4f}" for v in values) + f"{self.mean(word):>9.4f}")
        lines.append(f"shape / colour = {self.mean('shape') / max(self.mean('colour'), 1e-12):.3f}")
        return "\n".join(lines)


@torch.no_grad()
def measure_word_sensitivity(
    model: Any, *, scenes: int = 10, timesteps: tuple[int, ...] = TIMESTEPS, seed: int = 0
) -> SensitivityReport:
    """Average noise-prediction change per swapped word kind (see the module docstring)."""
    width, height = model.native_size
    device = torch.device(model.device)
    dtype = next(model.unet.parameters()).dtype
    changes: dict[str, list[list[float]]] = {word: [[] for _ in timesteps] for word in WORDS}
    for index, swap in enumerate(word_swaps(scenes, seed)):
        image = data.render(data.single_shape_scene(swap.kind, swap.colour, swap.background), width)
        if height != width:
            image = image.resize((width, height))
        latent = model.encode(torch.from_numpy(data.image_to_array(image))[None].to(device)).float()
        # Drawn on the CPU so that the figures are the same on every device; moved once.
        noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed * 1000 + index)).to(device)
        context = model.text_encoder.encode_text(swap.caption).to(dtype)
        others = {word: model.text_encoder.encode_text(text).to(dtype) for word, text in swap.swapped.items()}
        for column, t in enumerate(timesteps):
            abar = float(model.alphas_cumprod[t])
            noisy = (abar**0.5 * latent + (1 - abar) ** 0.5 * noise).to(dtype)
            timestep = torch.tensor([t], device=device)
            base = model.unet(noisy, timestep, context).float()
            for word, other in others.items():
                change = model.unet(noisy, timestep, other).float() - base
                changes[word][column].append(float(change.pow(2).mean().sqrt()))
    by_word = {word: tuple(float(np.mean(c)) for c in columns) for word, columns in changes.items()}
    return SensitivityReport(tuple(timesteps), by_word)

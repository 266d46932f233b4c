"""Seeds and initial noise: the same seed gives the same image on any device.

Noise comes from one CPU ``torch.Generator`` per image, seeded with ``seed + i`` for image
``i`` of the job, drawn on the CPU and then moved to the model's device (diffusers'
``generator=torch.Generator("cpu").manual_seed(seed)``, AUTOMATIC1111's "CPU" RNG source).
Image ``i`` of a batch therefore equals a single run with seed ``seed + i``. The first draw
of an image's generator is its initial latent noise (txt2img) or, for img2img, the sample
of the VAE encoder's Gaussian; the next draws are the noise and then stochastic samplers'.
"""

from __future__ import annotations

import random

import torch

RANDOM_SEED_LIMIT = 4294967294


def random_seed() -> int:
    """A fresh seed for ``seed=-1``, drawn from the range AUTOMATIC1111 uses."""
    return random.randrange(RANDOM_SEED_LIMIT)


def resolve_seed(seed: int) -> int:
    """``-1`` -> a random seed; any other seed unchanged."""
    return random_seed() if seed == -1 else seed


def image_generators(seeds: list[int]) -> list[torch.Generator]:
    """One CPU generator per image."""
    return [torch.Generator("cpu").manual_seed(int(seed)) for seed in seeds]


def initial_noise(
    shape: tuple[int, ...], generators: list[torch.Generator], device: torch.device | str
) -> torch.Tensor:
    """(len(generators), *shape) standard normal float32 noise, drawn on the CPU, on ``device``."""
    from webui.sampling import randn_like

    return randn_like(torch.empty((len(generators), *shape), device=device), generators)

"""Noise for SDE samplers: a Brownian tree per image seed (k-diffusion's ``BrownianTreeNoiseSampler``).

White noise drawn step by step changes with the step count: the noise added between sigma 3 and 2 is a
different draw at 20 steps than at 30. A Brownian motion ``W(sigma)`` sampled on a tree (Li et al. 2020,
torchsde's ``BrownianTree``) gives the *same* path for any sequence of queries, so that an SDE sampler's
result converges as steps grow, and an AUTOMATIC1111 infotext reproduces: AUTOMATIC1111 builds one tree per
image, with the image's seed as entropy, over ``[min positive sigma, max sigma]`` of the run.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from webui.sampling.helpers import randn_like
from webui.sampling.types import Generator

NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``noise(sigma, sigma_next) -> standard normal noise`` shaped like the latent, for the step between them."""


def generator_seeds(generator: Generator) -> list[int]:
    """The seed of each image's generator (``torch.Generator.initial_seed``): the pipeline seeds one per image."""
    if isinstance(generator, torch.Generator):
        return [generator.initial_seed()]
    return [g.initial_seed() for g in generator]


class BrownianTreeNoise:
    """Normalised Brownian increments ``(W(sigma_next) - W(sigma)) / sqrt(|sigma_next - sigma|)``.

    Args:
        x: the latent; noise comes back with its shape, dtype and device.
        sigmas: the run's sigmas; the tree spans ``[min positive sigma, max sigma]``.
        seeds: one seed per batch item (one tree each, of the item's shape), or a single seed for one tree
            of the whole batch's shape, as k-diffusion's ``BatchedBrownianTree``.
    """

    def __init__(self, x: torch.Tensor, sigmas: torch.Tensor, seeds: list[int]):
        import torchsde  # type: ignore[import-untyped]  # only SDE samplers need it

        positive = sigmas[sigmas > 0]
        t0, t1 = positive.min(), sigmas.max()
        self.batched = len(seeds) == x.shape[0] and len(seeds) > 1
        w0 = torch.zeros_like(x[0] if self.batched else x)
        self.trees = [torchsde.BrownianTree(t0, w0, t1, entropy=seed) for seed in seeds]

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        sigma, sigma_next = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        low, high, sign = (sigma, sigma_next, 1) if sigma < sigma_next else (sigma_next, sigma, -1)
        with warnings.catch_warnings():
            # torchsde warns when a query end lies a float rounding below the tree's start (the smallest sigma
            # of the run, recomputed as exp(-t) by the sampler); the tree clamps it, as in k-diffusion.
            warnings.filterwarnings("ignore", message="Should have ta>=t0")
            warnings.filterwarnings("ignore", message="Should have tb<=t1")
            w = torch.stack([tree(low, high) for tree in self.trees]) * sign
        w = w if self.batched else w[0]
        return w / (sigma_next - sigma).abs().sqrt()


def brownian_noise(x: torch.Tensor, sigmas: torch.Tensor, generator: Generator) -> NoiseSampler:
    """The Brownian-tree noise of a run seeded from its generators' seeds (one tree per image, as AUTOMATIC1111).

    With a single generator for a whole batch, one tree of the batch's shape is seeded with its seed.
    """
    seeds = generator_seeds(generator)
    if len(seeds) not in (1, x.shape[0]):
        raise ValueError(f"got {len(seeds)} generators for a batch of {x.shape[0]}")
    return BrownianTreeNoise(x, sigmas, seeds)


def white_noise(x: torch.Tensor, generator: Generator) -> NoiseSampler:
    """Fresh standard normal noise at every step, drawn from ``generator`` (what diffusers' SDE schedulers do)."""
    return lambda sigma, sigma_next: randn_like(x, generator)


def sde_noise(x: torch.Tensor, sigmas: torch.Tensor, generator: Generator, kind: str) -> NoiseSampler:
    """``kind`` ``"brownian"`` (AUTOMATIC1111's default) or ``"white"`` (diffusers'); ValueError otherwise."""
    if kind == "brownian":
        return brownian_noise(x, sigmas, generator)
    if kind == "white":
        return white_noise(x, generator)
    raise ValueError(f"noise must be 'brownian' or 'white', got {kind!r}")

"""Seeds and initial noise: the same seed gives the same image on any device.

Noise comes from one CPU ``torch.Generator`` per image, seeded with ``seed + i`` for image
``i`` of the job, drawn on the CPU and then moved to the model's device (diffusers'
``generator=torch.Generator("cpu").manual_seed(seed)``, AUTOMATIC1111's "CPU" RNG source).
Image ``i`` of a batch therefore equals a single run with seed ``seed + i``. The first draw
of an image's generator is its initial latent noise (txt2img) or, for img2img, the sample
of the VAE encoder's Gaussian; the next draws are the noise and then stochastic samplers'.

Variation seeds (AUTOMATIC1111's ``subseed``, ``subseed_strength``, ``seed_resize_from_w/h``) change only
that initial noise: :func:`variation_noise` slerps it towards a subseed's noise (:func:`slerp`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

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


def slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """AUTOMATIC1111's spherical interpolation from ``low`` (val 0) to ``high`` (val 1) of (C, H, W) noise.

    As its ``modules/rng.py``: the vectors are normalised over dim 1 (the noise's height, so one angle per
    channel and column), and nearly parallel ones (mean cosine above 0.9995) fall back to
    ``low * val + high * (1 - val)``, A1111's own (reversed) linear form, kept because seeds depend on it.
    """
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (torch.sin(val * omega) / so).unsqueeze(1) * high


@dataclass(frozen=True)
class Variation:
    """AUTOMATIC1111's variation seeds of one batch: ``subseeds`` (one per image), their ``strength``,
    and the ``resize_from`` size ``(width, height)`` in pixels whose noise is kept (None: off)."""

    subseeds: tuple[int, ...]
    strength: float = 0.0
    resize_from: tuple[int, int] | None = None

    @property
    def active(self) -> bool:
        return self.strength != 0 or self.resize_from is not None


def variation_noise(
    shape: tuple[int, ...],
    seeds: list[int],
    generators: list[torch.Generator],
    variation: Variation,
    device: torch.device | str,
) -> torch.Tensor:
    """Initial noise with variation seeds, as AUTOMATIC1111's ``ImageRNG.first`` (CPU RNG source).

    Per image: the seed's noise, drawn at the resize-from size when there is one; slerped towards the
    subseed's noise (a fresh generator of the subseed, same size) by ``strength``; then pasted centred
    into the image generator's own full-size draw (cropped when the resize-from size is larger). The image
    generator advances by exactly one full-size draw, as without variation, so stochastic samplers see the
    same later noise. Without variation this is :func:`initial_noise` (bit-identical).
    """
    if not variation.active:
        return initial_noise(shape, generators, device)
    channels, height, width = shape
    small = shape
    if variation.resize_from is not None:
        small = (channels, variation.resize_from[1] // 8, variation.resize_from[0] // 8)
    images = []
    for i, (seed, generator) in enumerate(zip(seeds, generators, strict=True)):
        if small != shape:
            noise = _fresh_noise(seed, small)
        else:
            noise = torch.randn(shape, generator=generator, dtype=torch.float32)
        if variation.strength != 0:
            subseed = variation.subseeds[i] if i < len(variation.subseeds) else 0
            noise = slerp(variation.strength, noise, _fresh_noise(subseed, small))
        if small != shape:
            full = torch.randn(shape, generator=generator, dtype=torch.float32)
            noise = paste_centred(noise, full)
        images.append(noise)
    return torch.stack(images).to(device)


def paste_centred(noise: torch.Tensor, into: torch.Tensor) -> torch.Tensor:
    """``noise`` (C, h, w) centred in ``into`` (C, H, W), cropped centred where larger (A1111's placement)."""
    dx = (into.shape[2] - noise.shape[2]) // 2
    dy = (into.shape[1] - noise.shape[1]) // 2
    w = noise.shape[2] if dx >= 0 else noise.shape[2] + 2 * dx
    h = noise.shape[1] if dy >= 0 else noise.shape[1] + 2 * dy
    tx, ty = max(dx, 0), max(dy, 0)
    sx, sy = max(-dx, 0), max(-dy, 0)
    out = into.clone()
    out[:, ty : ty + h, tx : tx + w] = noise[:, sy : sy + h, sx : sx + w]
    return out


def _fresh_noise(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The first draw of a new CPU generator of ``seed``."""
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(seed)), dtype=torch.float32)

"""Errors raised while reading model files: one class per kind of bad input, all ``ValueError``s.

The messages are written for the person who picked the file: they say what the file is (or
seems to be), why it cannot be used, and what to do instead.
"""

from __future__ import annotations

ONLY_SD1 = "This app runs Stable Diffusion 1.x models (such as SD 1.5 and its fine-tunes) only."
"""The sentence every refusal of another model family ends with."""


class CheckpointError(ValueError):
    """A model file or folder that cannot be loaded."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The path does not exist."""


class CorruptCheckpointError(CheckpointError):
    """The file is truncated, not a checkpoint at all, or its tensors have impossible shapes."""


class UnsafeCheckpointError(CheckpointError):
    """A ``.ckpt`` pickle that asks to run code (or build objects) beyond plain tensors."""


class UnsupportedModelError(CheckpointError):
    """A valid model of another family (SD 2.x, SDXL, inpainting, ...): this app runs SD 1.x."""


class MissingWeightsError(CheckpointError):
    """An SD 1.x file that lacks a part (UNet, VAE, text encoder) or some of its tensors."""


class TokenizerNotFoundError(CheckpointError):
    """No CLIP tokenizer files are available offline for a model."""

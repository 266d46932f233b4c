"""A model file's hash, as the Stable Diffusion ecosystem shows it (AUTOMATIC1111's "Model hash", Civitai)."""

from __future__ import annotations

import hashlib
from pathlib import Path

SHORT_HASH_LENGTH = 10


def file_sha256(path: Path, chunk_size: int = 1 << 20) -> str:
    """The hex sha256 of the whole file, read ``chunk_size`` bytes at a time."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def short_hash(sha256: str) -> str:
    """The first 10 hex digits of a file's sha256: what infotexts and model lists show."""
    return sha256[:SHORT_HASH_LENGTH]

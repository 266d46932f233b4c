"""Shared fixtures: a tiny, seeded, random-weight Stable Diffusion 1.x model built offline, and where the
browser tests put their screenshots.

The model's builders live in :mod:`tests.support.tiny_model` (the benchmarks use them too). Fixtures (all
session-scoped, built once, cheap: a few MB and well under a second to run):

- ``tiny_tokenizer_dir``: a folder with the tiny byte-level CLIP BPE vocabulary.
- ``tiny_components``: :class:`TinyComponents` with the UNet, VAE, CLIP text model and tokenizer
  (eval mode; do not modify them, they are shared by every test).
- ``tiny_checkpoint``: :class:`TinyCheckpoint`, those weights written as one SD 1.x single file
  ``<tmp>/tiny/tiny.safetensors`` with the tokenizer next to it in ``<tmp>/tiny/tokenizer/``, plus a
  ``models.yaml`` whose only (default) entry ``tiny`` points at it (64x64 images, 8x8 latents).
- ``screenshots_dir``: a temporary folder, or the README's ``docs/screenshots/`` with ``--update-screenshots``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.browser import chromium_page
from tests.support.tiny_model import (
    TinyCheckpoint,
    TinyComponents,
    build_tiny_components,
    write_tiny_checkpoint,
    write_tiny_tokenizer,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
README_SCREENSHOTS = ROOT / "docs" / "screenshots"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-screenshots",
        action="store_true",
        default=False,
        help="browser tests write their screenshots into docs/screenshots/ (the README's) instead of a temporary "
        "folder",
    )


@pytest.fixture(scope="session")
def screenshots_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the browser tests save screenshots: a temporary folder, so that running the tests never changes a
    tracked file; the README's folder only when asked with ``--update-screenshots``."""
    if request.config.getoption("--update-screenshots"):
        README_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        return README_SCREENSHOTS
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_tokenizer(tmp_path_factory.mktemp("tiny_tokenizer"))


@pytest.fixture(scope="session")
def tiny_components(tiny_tokenizer_dir: Path) -> TinyComponents:
    return build_tiny_components(tiny_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_components: TinyComponents) -> TinyCheckpoint:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny_model"), tiny_components)


@pytest.fixture
def page() -> Iterator[Any]:
    """A fresh 1400x1100 page in Debian's Chromium (the test is skipped where there is none)."""
    with chromium_page() as opened:
        yield opened

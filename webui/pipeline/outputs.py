"""Saving generated images: ``<outputs>/<txt2img|img2img>/<YYYY-MM-DD>/<NNNNN>-<seed>.png``.

A file is written under a temporary name in the same folder, flushed to disk, then
hard-linked to its final name (``os.link`` fails if the name exists, so a file is never
overwritten, even by another process) and the temporary name removed. A reader therefore
sees either no file or a complete PNG. The 5-digit counter continues from the largest one
already in the day's folder, like AUTOMATIC1111's.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import tempfile
from pathlib import Path

from PIL import Image, PngImagePlugin

INFOTEXT_KEY = "parameters"
_COUNTER = re.compile(r"^(\d{5,})[-.]")  # 00012-1234.png, and 00012.png (Extras results: no seed)
MAX_ATTEMPTS = 1000


def day_folder(outputs_dir: Path, mode: str, now: dt.datetime | None = None) -> Path:
    """``outputs_dir/mode/YYYY-MM-DD`` for ``now`` (local time, like A1111)."""
    return Path(outputs_dir) / mode / (now or dt.datetime.now()).strftime("%Y-%m-%d")


def next_counter(folder: Path) -> int:
    """One more than the largest ``NNNNN-`` prefix in ``folder`` (0 for an empty folder)."""
    if not folder.is_dir():
        return 0
    numbers = [int(m.group(1)) for name in os.listdir(folder) if (m := _COUNTER.match(name))]
    return max(numbers, default=-1) + 1


def png_bytes_info(infotext: str | None) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    if infotext:
        info.add_text(INFOTEXT_KEY, infotext)
    return info


def save_image(
    image: Image.Image,
    outputs_dir: Path,
    mode: str,
    seed: int | None,
    infotext: str | None,
    *,
    now: dt.datetime | None = None,
) -> Path:
    """Write ``image`` as a PNG with a ``parameters`` text chunk; returns the final path. Without a ``seed``
    (Extras) the name is the counter alone, ``NNNNN.png``, as A1111 names its Extras results."""
    folder = day_folder(outputs_dir, mode, now)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=folder)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG", pnginfo=png_bytes_info(infotext))
            f.flush()
            os.fsync(f.fileno())
        counter = next_counter(folder)
        for _ in range(MAX_ATTEMPTS):
            final = folder / (f"{counter:05d}-{seed}.png" if seed is not None else f"{counter:05d}.png")
            try:
                _link_no_overwrite(tmp, final)
                return final
            except FileExistsError:
                counter = max(counter + 1, next_counter(folder))
        raise FileExistsError(f"no free file name in {folder} after {MAX_ATTEMPTS} attempts")
    finally:
        tmp.unlink(missing_ok=True)


def _link_no_overwrite(source: Path, target: Path) -> None:
    """Give ``source`` the name ``target``; raise FileExistsError if ``target`` exists."""
    try:
        os.link(source, target)
    except FileExistsError:
        raise
    except OSError:
        # Filesystems without hard links: claim the name exclusively, then replace it atomically.
        with open(target, "xb"):
            pass
        os.replace(source, target)


def read_text_chunks(path_or_image: Path | str | Image.Image) -> dict[str, str]:
    """Every text entry of an image's metadata (PNG tEXt/zTXt/iTXt chunks), leaving out binary entries such
    as ICC profiles. Raises ``OSError`` for a file that is missing or not an image."""
    if isinstance(path_or_image, Image.Image):
        return _text_entries(path_or_image)
    with Image.open(path_or_image) as image:
        return _text_entries(image)


def _text_entries(image: Image.Image) -> dict[str, str]:
    image.load()  # a PNG may put its text chunks after the pixel data: Pillow reads those only with the pixels
    return {key: value for key, value in image.info.items() if isinstance(key, str) and isinstance(value, str)}


def read_infotext(path_or_image: Path | str | Image.Image) -> str | None:
    """The ``parameters`` text of an image (what A1111's PNG Info shows), or None when it has none."""
    return read_text_chunks(path_or_image).get(INFOTEXT_KEY)

"""Finding the user's extra-network files: a folder and its sub-folders, as AUTOMATIC1111 scans them."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def find_files(folder: Path, suffixes: Iterable[str]) -> list[Path]:
    """Files under ``folder`` (sub-folders included) whose suffix is one of ``suffixes``, sorted by path.

    A missing folder is simply empty: a fresh install has no ``models/Lora`` yet, and that is not an error.
    Hidden files and folders (``.git``, editor swap files) are skipped.
    """
    wanted = {s.lower() for s in suffixes}
    if not folder.is_dir():
        return []
    found = [
        path
        for path in folder.rglob("*")
        if path.is_file()
        and path.suffix.lower() in wanted
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    ]
    return sorted(found)

"""The user's LoRA folder: what is in it, the names a prompt may use, and the tags of a prompt resolved to files.

As AUTOMATIC1111 1.10 lists them (``extensions-builtin/Lora/networks.py``): every ``.safetensors``/``.pt``/
``.ckpt`` under the folder, sub-folders included; a LoRA's *name* is its file stem, its *alias* its
``ss_output_name`` metadata (kohya's training name) when that names no other file. ``<lora:NAME:W>`` finds NAME
among names, then aliases; a name not found triggers one re-scan (a file dropped in since the last scan works
without a refresh). Its hash is A1111's: the sha256 of a ``.safetensors`` file's data after the header (the
"addnet" hash kohya writes as ``sshs_model_hash``), of the whole file otherwise; the short hash is 12 digits.
"""

from __future__ import annotations

import difflib
import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from webui.extra_networks.files import find_files
from webui.extra_networks.lora_file import (
    LORA_SUFFIXES,
    LoraFileError,
    lora_metadata,
    read_safetensors_header,
    refuse_other_architecture,
)
from webui.extra_networks.lora_merge import LoraUse
from webui.extra_networks.prompt_tags import ExtraNetworkTag, parse_tags

LORA_TAG_KINDS = ("lora", "lyco")  # A1111 1.10 reads the old LyCORIS extension's <lyco:...> as <lora:...>
SHORT_HASH_LENGTH = 12


class LoraNotFound(LookupError):
    """A prompt names a LoRA that is not in the folder; the message lists the closest names."""


class LoraTagError(ValueError):
    """A ``<lora:...>`` tag whose arguments are not numbers."""


@dataclass
class LoraEntry:
    """One LoRA file of the folder."""

    name: str  # file stem: what <lora:NAME:...> uses
    path: Path
    alias: str  # ss_output_name, or the name
    metadata: dict[str, str] = field(default_factory=dict)
    error: str | None = None  # the header could not be read (listed anyway, refused when used)


def addnet_hash(path: Path, chunk_size: int = 1 << 20) -> str:
    """A1111's LoRA hash: sha256 of a ``.safetensors`` file's bytes after its header, of the whole file otherwise."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        if path.suffix.lower() == ".safetensors":
            length = int.from_bytes(f.read(8), "little")
            f.seek(8 + length)
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


class LoraLibrary:
    """The LoRA files of ``folder``, scanned now and again on :meth:`refresh` (thread-safe)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._lock = threading.Lock()
        self._entries: list[LoraEntry] = []
        self._hashes: dict[tuple[str, int, int], str] = {}
        self.refresh()

    def refresh(self) -> list[LoraEntry]:
        """Scan the folder again (headers only: metadata for the list and the aliases)."""
        entries = []
        for path in find_files(self.folder, LORA_SUFFIXES):
            try:
                metadata, error = lora_metadata(path), None
            except LoraFileError as err:
                metadata, error = {}, str(err)
            alias = metadata.get("ss_output_name") or path.stem
            entries.append(LoraEntry(name=path.stem, path=path, alias=alias, metadata=metadata, error=error))
        names = {e.name.lower() for e in entries}
        for entry in entries:  # an alias that is another file's name would be ambiguous: A1111 forbids it
            if entry.alias != entry.name and entry.alias.lower() in names:
                entry.alias = entry.name
        with self._lock:
            self._entries = entries
        return list(entries)

    @property
    def entries(self) -> list[LoraEntry]:
        with self._lock:
            return list(self._entries)

    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def find(self, name: str) -> LoraEntry:
        """The entry ``name`` (file stem, else alias) refers to; re-scans once before giving up.

        Raises:
            LoraNotFound: naming the closest names of the folder.
        """
        for attempt in range(2):
            entries = self.entries
            for match in (lambda e: e.name == name, lambda e: e.alias == name):
                found = next((e for e in entries if match(e)), None)
                if found is not None:
                    return found
            if attempt == 0:
                self.refresh()
        known = sorted({e.name for e in self.entries} | {e.alias for e in self.entries})
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5) or difflib.get_close_matches(
            name.lower(), [k.lower() for k in known], n=3, cutoff=0.5
        )
        hint = f"; closest: {', '.join(close)}" if close else ("" if known else f"; {self.folder} has no LoRA files")
        raise LoraNotFound(f"unknown LoRA {name!r} (not a file stem or alias in {self.folder}){hint}")

    def short_hash(self, path: Path) -> str:
        """The 12-digit hash of ``path``, computed once per file version (size and mtime)."""
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            cached = self._hashes.get(key)
        if cached is None:
            cached = addnet_hash(path)
            with self._lock:
                self._hashes[key] = cached
        return cached[:SHORT_HASH_LENGTH]

    def resolve(self, prompt: str, negative_prompt: str = "") -> tuple[LoraUse, ...]:
        """The LoRAs that the ``<lora:...>`` tags of the prompt and the negative prompt ask for, in order.

        Raises:
            LoraNotFound: a name not in the folder; LoraTagError: a weight that is not a number;
            LoraFileError: a file whose header is unreadable or that is made for SD 2.x/SDXL.
        """
        tags = [tag for text in (prompt, negative_prompt) for tag in parse_tags(text)[1]]
        uses = []
        for tag in tags:
            if tag.kind not in LORA_TAG_KINDS:
                continue
            name, te, unet = lora_tag_weights(tag)
            entry = self.find(name)
            if entry.error is not None:
                raise LoraFileError(entry.error)
            if entry.path.suffix.lower() == ".safetensors":
                header = read_safetensors_header(entry.path)
                refuse_other_architecture(entry.path, header.shapes, header.metadata)
            uses.append(LoraUse(name, entry.path, te, unet, self.short_hash(entry.path)))
        return tuple(uses)


def lora_tag_weights(tag: ExtraNetworkTag) -> tuple[str, float, float]:
    """``(name, te_weight, unet_weight)`` of a lora tag, read as A1111 1.10 reads them.

    ``<lora:name>`` is 1 for both, ``<lora:name:w>`` w for both, ``<lora:name:te:unet>`` each its own;
    ``te=`` and ``unet=`` named arguments override the positional ones. A third number (A1111's ``dyn`` rank
    limit) is not supported and refused.
    """
    if not tag.positional or not tag.positional[0].strip():
        raise LoraTagError(f"<{tag.kind}:{':'.join(tag.items)}> names no LoRA")
    name = tag.positional[0]
    try:
        te = float(tag.positional[1]) if len(tag.positional) > 1 else 1.0
        te = float(tag.named.get("te", te))
        unet = float(tag.positional[2]) if len(tag.positional) > 2 else te
        unet = float(tag.named.get("unet", unet))
    except ValueError:
        raise LoraTagError(f"<{tag.kind}:{':'.join(tag.items)}>: the weights must be numbers") from None
    if len(tag.positional) > 3 or "dyn" in tag.named:
        raise LoraTagError(f"<{tag.kind}:{':'.join(tag.items)}>: the dyn (rank limit) argument is not supported")
    return name, te, unet


def lora_hashes_text(uses: Sequence[LoraUse]) -> str | None:
    """A1111's ``Lora hashes`` infotext value, ``"name: hash, name2: hash2"`` (``:`` and ``,`` removed from names)."""
    seen: dict[str, str] = {}
    for use in uses:
        if use.short_hash:
            seen[use.name.replace(":", "").replace(",", "")] = use.short_hash
    return ", ".join(f"{name}: {short}" for name, short in seen.items()) or None

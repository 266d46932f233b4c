"""First-use download of hub entries in ``models.yaml`` (a ``repo`` + ``file`` on Hugging Face).

Files go into the Hugging Face cache (``cache_dir`` or the default ``~/.cache/huggingface/hub``) with
huggingface_hub's own progress bar, and are reused afterwards. With ``HF_HUB_OFFLINE=1`` (as in the
tests) only already-downloaded files are used. The tokenizer named by the entry is fetched the same
way (just its small text files), so that :func:`webui.models.loading.load_model` finds it offline.
"""

from __future__ import annotations

from pathlib import Path

from webui.models.errors import CheckpointError
from webui.models.registry import ModelEntry
from webui.models.text_encoder import TOKENIZER_FILES


class DownloadError(CheckpointError):
    """A hub model could not be downloaded (no network, offline mode, unknown repo or file)."""


def fetch_model_file(entry: ModelEntry, cache_dir: Path | None = None) -> Path:
    """The local path of ``entry``'s weights: its ``path``, or the hub file, downloaded if needed."""
    if entry.path is not None:
        return entry.path
    if entry.repo is None or entry.file is None:  # the registry refuses such entries; a hand-made one may not
        raise DownloadError(f"model {entry.name!r} has neither a 'path' nor a 'repo' and 'file'")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id=entry.repo, filename=entry.file, revision=entry.revision,
                                    cache_dir=str(cache_dir) if cache_dir else None))
    except Exception as exc:  # huggingface_hub raises many kinds (offline, HTTP, missing entry)
        raise DownloadError(
            f"model {entry.name!r}: could not get {entry.file} from https://huggingface.co/{entry.repo} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Check the network (and that "
            "HF_HUB_OFFLINE is not set), or download the file yourself and give its 'path' in models.yaml."
        ) from None


def fetch_tokenizer(hub_id: str, cache_dir: Path | None = None) -> Path | None:
    """The local folder of ``hub_id``'s CLIP tokenizer files, downloaded if needed; None if unavailable.

    A missing tokenizer is not an error here: :func:`~webui.models.loading.load_model` then explains
    exactly which files to get and where to put them.
    """
    if Path(hub_id).exists():
        return Path(hub_id)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=hub_id, allow_patterns=list(TOKENIZER_FILES),
                                      cache_dir=str(cache_dir) if cache_dir else None))
    except Exception:  # noqa: BLE001 - offline, unknown repo, ...: reported by load_model instead
        return None

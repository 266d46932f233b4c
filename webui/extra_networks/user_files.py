"""The service's view of the user's embeddings and VAE folders: what is there, and the "SD VAE" setting.

:class:`EmbeddingsAndVae` is what :class:`webui.service.WebUIService` delegates to; it holds no model. Both
lists are read when it is made and again on refresh (no restart), as A1111's refresh buttons and
``/sdapi/v1/refresh-embeddings`` / ``refresh-vae`` do.
"""

from __future__ import annotations

import threading
from pathlib import Path

from webui.extra_networks.embeddings import EmbeddingFolder, EmbeddingLibrary, EmbeddingVocabulary, TokenizingEncoder
from webui.extra_networks.vae_files import AUTOMATIC, NONE, VaeError, VaeFile, find_vae_files, resolve_vae_choice
from webui.models.model import StableDiffusionModel


class EmbeddingsAndVae:
    """Embeddings folder, VAE folder and the current VAE choice (A1111's ``sd_vae`` option).

    Args:
        embeddings_dir: textual-inversion files (None: none).
        vae_dir: VAE files and diffusers VAE folders (None: none).
        root: the folder ``models.yaml`` paths are relative to (for a ``vae:`` that is a path).
    """

    def __init__(self, embeddings_dir: Path | None, vae_dir: Path | None, root: Path) -> None:
        self.embedding_library = EmbeddingLibrary(embeddings_dir)
        self.vae_dir = Path(vae_dir) if vae_dir is not None else None
        self.root = Path(root)
        self._lock = threading.Lock()
        self._vae_files: list[VaeFile] = []
        self._sd_vae = AUTOMATIC
        self.refresh_vae()

    # --- embeddings -----------------------------------------------------------------------

    def embeddings(self, width: int | None) -> EmbeddingFolder:
        """Loaded and skipped embeddings for a text encoder ``width`` wide (None: no model loaded)."""
        return self.embedding_library.for_width(width)

    def refresh_embeddings(self) -> None:
        self.embedding_library.refresh()

    def vocabulary(self, encoder: TokenizingEncoder) -> EmbeddingVocabulary:
        return self.embedding_library.vocabulary(encoder)

    # --- VAE ------------------------------------------------------------------------------

    def vae_files(self) -> list[VaeFile]:
        with self._lock:
            return list(self._vae_files)

    def refresh_vae(self) -> list[VaeFile]:
        files = find_vae_files(self.vae_dir) if self.vae_dir is not None else []
        with self._lock:
            self._vae_files = files
        return list(files)

    @property
    def sd_vae(self) -> str:
        """The "SD VAE" setting: ``Automatic``, ``None`` or a VAE file's name."""
        return self._sd_vae

    def vae_choices(self) -> list[str]:
        """What the "SD VAE" dropdown offers, A1111's order: Automatic, None, then the files by name."""
        return [AUTOMATIC, NONE, *(vae.name for vae in self.vae_files())]

    def check_vae_choice(self, choice: str) -> str:
        """``choice`` if it names something; raises VaeError listing the choices otherwise."""
        if choice in (AUTOMATIC, NONE):
            return choice
        resolve_vae_choice(choice, self.vae_files(), None, None, self.root)
        return choice

    def set_sd_vae(self, choice: str) -> None:
        """Change the setting (checked first); the next job uses it, the running one keeps its VAE."""
        self._sd_vae = self.check_vae_choice(choice)

    def vae_path_for(self, model: StableDiffusionModel, choice: str | None, model_default: str | None) -> Path | None:
        """The file ``choice`` (None: the setting) means for ``model``; None is the checkpoint's baked-in VAE."""
        return resolve_vae_choice(
            choice if choice is not None else self._sd_vae, self.vae_files(), model_default, model.path, self.root
        )


__all__ = ["EmbeddingsAndVae", "VaeError"]

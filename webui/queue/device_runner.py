"""What a queue worker does with a job on its device: the one code path of a local device's worker and a Ray
actor, so that whatever one of them can run (scripts, embeddings, LoRAs, the VAE choice) the other runs too.

A :class:`DeviceRunner` holds a device's model cache (a ``ModelManager``) and what a job needs besides the
model: the embeddings and VAE folders (:class:`~webui.extra_networks.user_files.EmbeddingsAndVae`), the fitted
preview maps and the infotext's ``Version``. :meth:`DeviceRunner.run` runs a resolved request: a plain one
under the device's lock, or a script's cells in turn (:func:`webui.scripts.runner.run_script`). LoRAs need no
folder here: ``resolve_request`` already put their files' paths into the request. Styles neither: they are
applied to the prompt before the job is submitted.
"""

from __future__ import annotations

import functools
import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from webui.pipeline.generation import GenerationControl, Progress, generate
from webui.pipeline.preview import LatentPreview, fit_latent_preview
from webui.pipeline.requests import GenerationResult, ResolvedRequest

if TYPE_CHECKING:
    from webui.extra_networks.user_files import EmbeddingsAndVae
    from webui.models.manager import ModelManager
    from webui.models.model import StableDiffusionModel
    from webui.scripts.runner import ScriptImages

logger = logging.getLogger(__name__)


class PreviewMaps:
    """Each loaded model's fitted latent->RGB preview map, fitted once per model object."""

    def __init__(self) -> None:
        # id(model) -> (the model, weakly: this cache must never keep a model in memory that its manager
        # unloaded or evicted for another one; the model's fitted map, None if fitting failed).
        self._maps: dict[int, tuple[weakref.ReferenceType[StableDiffusionModel], LatentPreview | None]] = {}
        self._lock = threading.Lock()

    def get(self, model: StableDiffusionModel) -> LatentPreview | None:
        key = id(model)
        with self._lock:
            cached = self._maps.get(key)
            if cached is not None and cached[0]() is model:
                return cached[1]
            # Forget the maps of models that are gone (one per device stays while several devices work).
            for gone in [k for k, (ref, _) in self._maps.items() if ref() is None or k == key]:
                del self._maps[gone]
        try:
            fitted = fit_latent_preview(model.vae, float(model.vae.config.scale_factor))
        except Exception:  # noqa: BLE001 - previews are a nicety; generation goes on without them
            logger.warning("could not fit the live-preview map for %s", model.name, exc_info=True)
            fitted = None
        with self._lock:
            self._maps[key] = (weakref.ref(model), fitted)
        return fitted

    def clear(self) -> None:
        with self._lock:
            self._maps.clear()


@dataclass
class DeviceRunner:
    """Runs jobs' requests on one device.

    Args:
        manager: the device's model cache.
        extra_networks: the embeddings folder (the prompt's vocabulary) and the VAE files a request may choose.
        previews: where the preview maps are kept (shared by the devices of one process).
        version: ``Version`` written into infotexts.
        lock: held while a job runs on the device and while models load or unload there.
        entries: whose ``models.yaml`` entries give a model's own ``vae:`` (default: ``manager``).
        current_model: the model a job without one uses (default: ``manager``'s current or default model).
    """

    manager: ModelManager
    extra_networks: EmbeddingsAndVae
    previews: PreviewMaps
    version: str | None = None
    lock: threading.RLock | None = None
    entries: ModelManager | None = None
    current_model: Callable[[], str | None] | None = None

    def __post_init__(self) -> None:
        if self.lock is None:
            self.lock = threading.RLock()

    def run(
        self,
        request: ResolvedRequest,
        model_name: str | None,
        control: GenerationControl,
        on_progress: Callable[[Progress], None],
        *,
        save: Callable[[GenerationResult], list[Path]] | None = None,
        script_images: ScriptImages | None = None,
        on_step_seconds: Callable[[float], None] | None = None,
    ) -> GenerationResult:
        """``request``'s result: its images, or a script's.

        ``save`` writes a plain request's images (under the device's lock, so the job ends with its files),
        ``script_images`` a script's cells as they finish and its grid (None: nothing is saved);
        ``on_step_seconds`` receives the measured seconds of one sampling step per latent pixel per image.
        """
        if request.script is not None:  # X/Y/Z plot or prompt list: the cells save their images as they go
            from webui.scripts.runner import run_script

            cell = functools.partial(
                self.generate, control=control, on_progress=on_progress, on_step_seconds=on_step_seconds
            )
            return run_script(request, control, cell, script_images)
        assert self.lock is not None
        with self.lock:
            result = self.generate(
                request, model_name, control=control, on_progress=on_progress, on_step_seconds=on_step_seconds
            )
            if save is not None:
                result.paths = save(result)  # under the job's own names: a re-run never duplicates a file
        return result

    def generate(
        self,
        request: ResolvedRequest,
        model_name: str | None,
        adjust: Callable[[Progress], Progress] | None = None,
        *,
        control: GenerationControl,
        on_progress: Callable[[Progress], None],
        on_step_seconds: Callable[[float], None] | None = None,
    ) -> GenerationResult:
        """One generation of ``request`` with ``model_name`` (a script's cell: ``adjust`` maps its progress);
        nothing is saved here."""
        first: list[Progress] = []

        def progress(step: Progress) -> None:
            if not first:
                first.append(step)  # its time includes the prompt encoding: measure from it on
            on_progress(adjust(step) if adjust is not None else step)
            if on_step_seconds is not None and step.step > first[0].step:
                seconds = (step.elapsed_seconds - first[0].elapsed_seconds) / (step.step - first[0].step)
                on_step_seconds(seconds / (latent_pixels(request.width, request.height) * request.batch_size))

        assert self.lock is not None
        with self.lock:
            # Selecting a model downloads, Generate never.
            current = self.current_model() if self.current_model is not None else None
            model = self.manager.get(model_name or current, download=False)
            self.use_vae(model, request.sd_vae)
            return generate(
                model,
                request,
                progress=progress,
                control=control,
                previewer=self.previews.get(model),
                version=self.version,
                model_name=model.name,
                embeddings=self.extra_networks.vocabulary(model.text_encoder),
            )

    def use_vae(self, model: StableDiffusionModel, choice: str) -> None:
        """Give ``model`` the VAE the job asks for; only ``model.vae`` changes."""
        from webui.extra_networks.vae_files import VaeError, use_vae
        from webui.pipeline.errors import InvalidRequest

        try:
            entry_vae = (self.entries or self.manager).entry(model.name).vae
        except LookupError:
            entry_vae = None
        try:
            use_vae(model, self.extra_networks.vae_path_for(model, choice, entry_vae))
        except VaeError as err:  # the job fails with the file's message; the model keeps its VAE
            raise InvalidRequest("sd_vae", str(err)) from None


def latent_pixels(width: int, height: int) -> int:
    """Pixels of the latent of an SD 1.x image (1/8 of each side)."""
    return max(1, width // 8) * max(1, height // 8)


class RecordedScriptImages:
    """A :class:`~webui.scripts.runner.ScriptImages` that only keeps what it was given (a Ray actor's: the front end
    replays it into the real one with :meth:`replay`, as the images are written where users look for them)."""

    def __init__(self) -> None:
        self.cells: list[tuple[int, GenerationResult]] = []
        self.grids: list[tuple[Image.Image, str, int]] = []

    def cell(self, index: int, result: GenerationResult) -> list[Path]:
        self.cells.append(
            (index, GenerationResult(images=result.images, seeds=result.seeds, infotexts=result.infotexts))
        )
        return []

    def grid(self, image: Image.Image, infotext: str, seed: int) -> Path | None:
        self.grids.append((image, infotext, seed))
        return None

    def replay(self, images: ScriptImages) -> list[Path]:
        """Save the recorded images through ``images``; the paths as :func:`run_script` gives them (the grid's,
        or for a prompt list every cell's)."""
        cells = [path for index, result in self.cells for path in images.cell(index, result)]
        grids = [path for grid in self.grids if (path := images.grid(*grid)) is not None]
        return grids if self.grids else cells

"""txt2img, img2img and inpainting on a loaded Stable Diffusion 1.x model.

The loop (Rombach et al. 2022, arXiv 2112.10752): encode the prompts with CLIP, draw the
initial latent noise per image from a CPU ``torch.Generator`` seeded with ``seed + i``, run a
sampler from :mod:`webui.sampling` on a k-diffusion denoiser whose eps-model does
classifier-free guidance (Ho & Salimans 2022, arXiv 2207.12598) with one batched UNet call,
``eps = eps_uncond + cfg * (eps_cond - eps_uncond)``, and decode with the VAE.

img2img encodes the init image, samples its latent from the VAE's Gaussian with the image's
generator (as diffusers' ``StableDiffusionImg2ImgPipeline`` does), noises it to the sigma
where ``denoising_strength`` starts and runs the remaining steps. Inpainting with an ordinary
(4-channel) model keeps the unmasked latent region on the re-noised original at every model
call (a denoiser wrapper), then pastes the original pixels back outside the blurred mask.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from webui.extra_networks.embeddings import EmbeddingVocabulary
from webui.extra_networks.lora_file import LoraFileError
from webui.extra_networks.lora_merge import loras_merged
from webui.extra_networks.prompt_tags import strip_tags
from webui.extra_networks.vae_files import vae_infotext
from webui.pipeline.conditioning import Conditioning, encode_conditioning
from webui.pipeline.errors import InvalidRequest, OutOfMemory
from webui.pipeline.hires import HiresPass
from webui.pipeline.images import (
    fill_masked,
    image_to_tensor,
    latent_mask,
    prepare_mask,
    resize_image,
    tensor_to_images,
)
from webui.pipeline.infotext import format_infotext
from webui.pipeline.outputs import save_image
from webui.pipeline.preview import LatentPreview
from webui.pipeline.requests import GenerationResult, ResolvedImg2Img, ResolvedRequest
from webui.pipeline.seeds import Variation, image_generators, variation_noise

FILL, ORIGINAL, LATENT_NOISE, LATENT_NOTHING = range(4)


@dataclass
class Progress:
    """Where a generation is: steps over the whole job, the current batch, ETA and a preview."""

    step: int  # sampling steps finished in the whole job
    total_steps: int
    image_index: int  # index of the first image of the batch being sampled
    images_total: int
    sampling_step: int  # steps finished in the current batch
    sampling_steps: int
    eta_seconds: float | None
    elapsed_seconds: float
    preview: Image.Image | None = None
    # Sampling of this batch is over (finished or interrupted) and its images are being decoded: at 1024 px
    # the VAE's decode takes longer than a sampling step on a CPU.
    decoding: bool = False
    # How much of the batch's decode is done (0..1), where the VAE works in bands (a large image: minutes on a
    # CPU); None while it is not known (an image decoded in one piece reports nothing until it is done).
    decoded: float | None = None
    # What ``image_index`` / ``images_total`` count, as progress shows it ("image 2/4"): a script's runner
    # counts its generations, "cell 2/6" for an X/Y/Z plot (issue 17).
    unit: str = "image"

    @property
    def fraction(self) -> float:
        return self.step / self.total_steps if self.total_steps else 0.0


ProgressCallback = Callable[[Progress], None]


class GenerationControl:
    """Interrupt (stop now, keep finished images) and skip (abandon the current batch).

    Set from any thread; the sampling layer checks :meth:`should_stop` before every model
    call, and :func:`stop_between_blocks` before every UNet block, raising ``SamplingCancelled``,
    so both act within one block of the UNet (well under a second even when one step takes minutes).
    """

    def __init__(self) -> None:
        self._interrupt = threading.Event()
        self._skip = threading.Event()

    def interrupt(self) -> None:
        self._interrupt.set()

    def skip(self) -> None:
        self._skip.set()

    @property
    def interrupted(self) -> bool:
        return self._interrupt.is_set()

    @property
    def skipped(self) -> bool:
        return self._skip.is_set()

    def should_stop(self) -> bool:
        return self._interrupt.is_set() or self._skip.is_set()

    def clear_skip(self) -> None:
        self._skip.clear()


@dataclass
class _Prepared:
    """Per-request tensors for img2img / inpainting at the output size."""

    images: list[Image.Image]  # resized init images (after "fill" for inpainting)
    pixels: torch.Tensor  # (N, 3, H, W) in [-1, 1]
    overlay_masks: list[Image.Image] = field(default_factory=list)  # blurred, full size
    latent_masks: list[torch.Tensor] = field(default_factory=list)  # (1, 1, h, w) 0/1, 1 = repaint
    originals: list[Image.Image] = field(default_factory=list)  # resized, before "fill"


class InpaintDenoiser:
    """Keeps the unmasked region on the original latent (Lugmayr et al. 2022, RePaint, arXiv 2201.09865).

    Before every model call the kept region of ``x`` is replaced by the original latent noised
    to the current sigma with the job's own noise (``x0 + sigma * noise`` in the k-diffusion
    space), and the kept region of the predicted ``x0`` by the original latent; the sampler then
    stays on the re-noised original there, for any sampler, without changing samplers.
    """

    def __init__(
        self,
        inner: Callable[..., torch.Tensor],
        init_latent: torch.Tensor,
        noise: torch.Tensor,
        repaint_mask: torch.Tensor,
    ):
        self.inner = inner
        self.init_latent = init_latent
        self.noise = noise
        self.repaint = repaint_mask
        self.keep = 1.0 - repaint_mask

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)
        x = self.keep * (self.init_latent + s * self.noise) + self.repaint * x
        denoised = self.inner(x, sigma, **kwargs)
        return self.keep * self.init_latent + self.repaint * denoised


def cfg_eps_fn(
    unet: torch.nn.Module, conditioning: Conditioning, cfg_scale: float
) -> Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]:
    """The guided eps-model ``eps_fn(x_in, timestep, step)``: one UNet call on [uncond; cond].

    ``step`` is the 0-based sampling step (the sampling driver derives it from sigma), which picks
    the contexts when the prompt uses prompt editing. With ``cfg_scale == 1`` the unconditional
    half cannot change the result and is skipped.
    """
    dtype = next(unet.parameters()).dtype
    conditioning = conditioning.to(conditioning.cond.device, dtype)

    def eps_fn(x_in: torch.Tensor, timestep: torch.Tensor, step: int) -> torch.Tensor:
        b = x_in.shape[0]
        cond, uncond = conditioning.at(step)
        timestep = torch.as_tensor(timestep, device=x_in.device).reshape(-1).expand(b)
        if cfg_scale == 1.0:
            return unet(x_in.to(dtype), timestep, cond.expand(b, -1, -1)).to(x_in.dtype)
        context = torch.cat([uncond.expand(b, -1, -1), cond.expand(b, -1, -1)])
        eps = unet(torch.cat([x_in, x_in]).to(dtype), torch.cat([timestep, timestep]), context).to(x_in.dtype)
        eps_uncond, eps_cond = eps.chunk(2)
        return eps_uncond + cfg_scale * (eps_cond - eps_uncond)

    return eps_fn


# The UNet's top-level stages (CompVis names, then diffusers'); each is a module or a list of blocks.
UNET_STAGES = ("input_blocks", "middle_block", "output_blocks", "down_blocks", "mid_block", "up_blocks")


def unet_blocks(unet: torch.nn.Module) -> list[torch.nn.Module]:
    """The UNet's blocks in the order they run: the points where an interrupt can stop a step."""
    blocks: list[torch.nn.Module] = []
    for name in UNET_STAGES:
        stage = getattr(unet, name, None)
        if isinstance(stage, torch.nn.ModuleList):
            blocks.extend(stage)
        elif isinstance(stage, torch.nn.Module):
            blocks.append(stage)
    return blocks


def stop_points(unet: torch.nn.Module) -> list[torch.nn.Module]:
    """Every module inside the UNet's blocks: at 1024 px one attention block alone takes seconds on a CPU,
    so checking only between blocks is not enough (a hook costs microseconds, a module call far more).

    None for a UNet compiled by ``--compile``: hooks added per job inside a compiled graph would recompile
    it every job (issue 19); interrupt and skip then act between steps."""
    from webui.models.compile import is_compiled

    if is_compiled(unet):
        return []
    return [module for block in unet_blocks(unet) for module in block.modules()]


@contextmanager
def stop_between_blocks(blocks: list[torch.nn.Module], should_stop: Callable[[], bool]) -> Iterator[None]:
    """While inside, each of ``blocks`` first raises ``SamplingCancelled`` if ``should_stop()``.

    Forward pre-hooks, removed on exit: the model classes stay unaware of jobs, and one step of a
    large image (minutes on a CPU) no longer has to finish before an interrupt acts.
    """
    from webui.sampling import SamplingCancelled

    def check(module: torch.nn.Module, args: Any) -> None:
        if should_stop():
            raise SamplingCancelled("sampling cancelled inside a model call")

    handles = [block.register_forward_pre_hook(check) for block in blocks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def native_size(model: Any) -> tuple[int, int]:
    """The model's trained image size ``(width, height)``; SD 1.x's 512x512 if it does not say."""
    from webui.models.registry import SD1_NATIVE_SIZE

    size = getattr(model, "native_size", None)
    return (int(size[0]), int(size[1])) if size else SD1_NATIVE_SIZE


def decode_latents(
    model: Any, latents: torch.Tensor, report: Callable[[float], None] | None = None
) -> list[Image.Image]:
    """VAE-scaled latents -> images, one at a time to bound memory (fp16 overflow retried in fp32 by the core).

    ``report`` gets the fraction of the whole batch decoded, as the VAE reports it for large images.
    """
    images: list[Image.Image] = []
    for i, z in enumerate(latents):
        within = None if report is None else partial(_batch_fraction, report, i, len(latents))
        images += tensor_to_images(model.decode(z[None], within))
    return images


def _batch_fraction(report: Callable[[float], None], index: int, count: int, fraction: float) -> None:
    """``report`` the batch's fraction decoded when image ``index`` of ``count`` is ``fraction`` done."""
    report((index + fraction) / count)


def encode_images(model: Any, pixels: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """Images in [-1, 1] -> VAE-scaled latents, each sampled from the encoder's Gaussian with its generator.

    ``mean + exp(logvar / 2) * randn(generator)``, like diffusers' ``retrieve_latents(..., "sample")``
    with one generator per image, so that img2img equals ``StableDiffusionImg2ImgPipeline``.
    """
    return torch.cat([model.encode(x[None], g) for x, g in zip(pixels, generators, strict=True)])


def _prepare_img2img(request: ResolvedImg2Img, width: int, height: int, downscale: int) -> _Prepared:
    """Resized init images, their pixels and (inpainting) masks; ``downscale`` is the VAE's pixels per latent."""
    originals = [resize_image(img.convert("RGB"), width, height, request.resize_mode) for img in request.init_images]
    prepared = _Prepared(images=list(originals), pixels=torch.empty(0), originals=originals)
    if request.mask is not None:
        source_size = request.init_images[0].size
        mask = prepare_mask(
            request.mask,
            source_size,
            width,
            height,
            resize_mode=request.resize_mode,
            blur=request.mask_blur,
            invert=bool(request.inpainting_mask_invert),
        )
        prepared.overlay_masks = [mask] * len(originals)
        prepared.latent_masks = [latent_mask(mask, width // downscale, height // downscale)] * len(originals)
        if request.inpainting_fill == FILL:
            prepared.images = [fill_masked(img, mask) for img in originals]
    prepared.pixels = torch.cat([image_to_tensor(img) for img in prepared.images])
    return prepared


def _is_out_of_memory(err: BaseException) -> bool:
    oom_type = getattr(torch, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(err, oom_type):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def _out_of_memory(request: ResolvedRequest, device: torch.device) -> OutOfMemory:
    import gc

    from webui.devices import empty_cache

    gc.collect()  # free the failed step's tensors (their frames were cleared) before the cache
    empty_cache(device)
    field_ = "batch_size" if request.batch_size > 1 else "width"
    return OutOfMemory(
        field_,
        f"out of memory on {device} generating {request.batch_size} image(s) of {request.width}x{request.height}; "
        "lower the batch size, then the width and height (or use a smaller model / half precision)" + OOM_FLAGS_HINT,
    )


# issue 19: the start-up flags that bound memory, named in every out-of-memory message
OOM_FLAGS_HINT = (
    "; or restart with --vae-tiling on (large images decoded in bands of rows), --models-in-memory 1 "
    "and, on a GPU, --precision fp16"
)


def generate(
    model: Any,
    request: ResolvedRequest,
    *,
    outputs_dir: Path | None = None,
    progress: ProgressCallback | None = None,
    control: GenerationControl | None = None,
    previewer: LatentPreview | None = None,
    model_name: str | None = None,
    version: str | None = None,
    embeddings: EmbeddingVocabulary | None = None,
) -> GenerationResult:
    """Run ``request`` on ``model``; images of batches finished before an interrupt are kept.

    Args:
        model: a loaded :class:`webui.models.model.StableDiffusionModel`.
        request: from :func:`webui.pipeline.resolve_request` (which checks it: nothing reaches
            generation unchecked); txt2img, or img2img (inpainting with a mask) when ``request.img2img`` is set.
        outputs_dir: where to save PNGs (``<outputs_dir>/<txt2img|img2img>/<date>/``); None saves nothing.
        progress: called after every sampling step (from this thread).
        control: interrupt/skip from another thread.
        previewer: latent -> RGB map for ``Progress.preview``; None gives no previews.
        model_name: name for the infotext (default ``model.name``).
        version: ``Version`` of the infotext.
        embeddings: the textual-inversion words prompt and negative prompt may use (their hashes go into
            the infotext's ``TI hashes``).

    Raises:
        OutOfMemory: the device ran out of memory (its cache is freed); an :class:`InvalidRequest`
            naming the field to lower.
    """
    control = control or GenerationControl()
    device = torch.device(getattr(model, "device", None) or next(model.unet.parameters()).device)
    try:
        with ExitStack() as job_scope:
            try:  # LoRA (issue 15): merged for the job, restored after it; a file that does not fit is a bad prompt
                job_scope.enter_context(loras_merged(model, request.loras))
            except LoraFileError as err:
                raise InvalidRequest("prompt", str(err)) from None
            run = _Run(model, request, device, progress, previewer, embeddings)
            return run.all_batches(control, outputs_dir, model_name or getattr(model, "name", None), version)
    except Exception as err:
        if _is_out_of_memory(err):
            traceback.clear_frames(err.__traceback__)  # issue 19: the frames hold the failed step's tensors
            raise _out_of_memory(request, device) from err
        raise


class _Run:
    """One request's generation: what is shared by its batches, and how to run one batch."""

    def __init__(
        self,
        model: Any,
        request: ResolvedRequest,
        device: torch.device,
        progress: ProgressCallback | None,
        previewer: LatentPreview | None,
        embeddings: EmbeddingVocabulary | None = None,
    ):
        self.model, self.request, self.device = model, request, device
        self.progress, self.previewer = progress, previewer
        down = model.vae.config.downscale
        self.prepared = None
        if request.img2img is not None:
            self.prepared = _prepare_img2img(request.img2img, request.width, request.height, down)
        prompt, negative = strip_tags(request.prompt), strip_tags(request.negative_prompt)  # <lora:...> is no text
        conditioning = encode_conditioning(
            model.text_encoder, prompt, negative, request.clip_skip, request.steps, embeddings
        )
        # Extra networks' infotext keys, as A1111 writes them (issue 15).
        self.network_params: dict[str, Any] = {}
        if embeddings is not None and conditioning.embeddings_used:
            self.network_params["TI hashes"] = embeddings.infotext_hashes(conditioning.embeddings_used) or None
        self.network_params.update(vae_infotext(model))
        self.eps_fn = cfg_eps_fn(model.unet, conditioning.to(device), request.cfg_scale)
        self.alphas_cumprod = model.alphas_cumprod.to(device)
        self.latent_shape = (model.vae.config.embed_dim, request.height // down, request.width // down)
        # Hires fix: the second pass's guided eps function; its steps count in the progress (steps_per_batch).
        self.hires = HiresPass(model, request, device) if request.hires is not None else None
        self.steps_per_batch = request.sampling_steps
        self.total_steps = self.steps_per_batch * request.n_iter
        self.done_steps = 0
        self.started = time.monotonic()
        # The sampler's latest x0 estimate of the batch being sampled, and its 1-based step: what an
        # interrupt keeps (AUTOMATIC1111 decodes its ``current_latent`` likewise).
        self.latest: tuple[torch.Tensor, int] | None = None
        self.last_progress: Progress | None = None

    def all_batches(
        self, control: GenerationControl, outputs_dir: Path | None, model_name: str | None, version: str | None
    ) -> GenerationResult:
        from webui.sampling import SamplingCancelled

        request = self.request
        result = GenerationResult(
            request=request, model_name=model_name, model_hash=getattr(self.model, "short_hash", None)
        )
        for iteration in range(request.n_iter):
            if control.interrupted:
                result.interrupted = True
                break
            first = iteration * request.batch_size
            seeds = request.seeds()[first : first + request.batch_size]
            steps_before = self.done_steps
            extra: dict[str, Any] | None = None
            first_pass, first_images, info_request = None, None, request
            try:
                with stop_between_blocks(stop_points(self.model.unet), control.should_stop):
                    latents = self.sample_batch(first, seeds, control)
                    if self.hires is not None:
                        first_pass = latents
                        latents, first_images = self.hires_pass(first, seeds, latents, control, outputs_dir)
            except SamplingCancelled:
                if not control.interrupted:
                    control.clear_skip()  # skip: this batch only
                    self.done_steps = steps_before + self.steps_per_batch
                    continue
                result.interrupted = True
                if first_pass is not None:  # the hires pass was cut: keep the first pass's image, as A1111
                    latents, info_request = first_pass, replace(request, hires=None)
                elif self.latest is None:  # not one step of this batch finished: nothing to keep
                    break
                else:
                    latents, step = self.latest
                    extra = {"Interrupted": f"step {step}/{self.steps_per_batch}"}
            for b, image in enumerate(self.finish_images(first, latents, self._decode_report())):
                infotext = format_infotext(
                    info_request,
                    seed=seeds[b],
                    model_name=model_name,
                    model_hash=result.model_hash,
                    batch_pos=b if request.batch_size > 1 else None,
                    version=version,
                    extra={**self.network_params, **(extra or {})},
                    subseed=request.subseeds()[first + b],
                )
                result.images.append(image)
                result.seeds.append(seeds[b])
                if request.subseed_strength != 0:
                    result.subseeds.append(request.subseeds()[first + b])
                result.infotexts.append(infotext)
                if outputs_dir is not None:
                    result.paths.append(save_image(image, outputs_dir, request.mode, seeds[b], infotext))
            if first_images and outputs_dir is not None:  # hires fix's "save the first pass too"
                for b, image in enumerate(first_images):
                    text = format_infotext(
                        replace(request, hires=None),
                        seed=seeds[b],
                        model_name=model_name,
                        model_hash=result.model_hash,
                        version=version,
                    )
                    save_image(image, outputs_dir, request.mode, seeds[b], text)
            if result.interrupted:
                break
        return result

    def sample_batch(self, first: int, seeds: list[int], control: GenerationControl) -> torch.Tensor:
        """Latents of the images ``first .. first + len(seeds)``; raises ``SamplingCancelled``."""
        from webui.sampling import DiscreteEpsDenoiser

        prepared, img2img = self.prepared, self.request.img2img
        generators = image_generators(seeds)
        denoiser: Any = DiscreteEpsDenoiser(self.eps_fn, self.alphas_cumprod)
        request = self.request
        variation = Variation(
            tuple(request.subseeds()[first : first + len(seeds)]), request.subseed_strength, request.seed_resize_from
        )
        if prepared is None or img2img is None:
            noise = variation_noise(self.latent_shape, seeds, generators, variation, self.device)
            return self._sample(first, denoiser, noise, generators, control)
        index = [(first + b) % len(prepared.images) for b in range(len(seeds))]
        # The encoder's sample is each generator's first draw, the noise its second (as diffusers).
        init_latent = encode_images(self.model, prepared.pixels[index], generators).to(self.device)
        noise = variation_noise(self.latent_shape, seeds, generators, variation, self.device)
        if prepared.latent_masks:
            repaint = torch.cat([prepared.latent_masks[i] for i in index]).to(self.device)
            if img2img.inpainting_fill == LATENT_NOISE:
                init_latent = init_latent * (1 - repaint) + noise * repaint
            elif img2img.inpainting_fill == LATENT_NOTHING:
                init_latent = init_latent * (1 - repaint)
            denoiser = InpaintDenoiser(denoiser, init_latent, noise, repaint)
        return self._sample(first, denoiser, noise, generators, control, init_latent, img2img.denoising_strength)

    def _sample(
        self,
        first: int,
        denoiser: Any,
        noise: torch.Tensor,
        generators: list[torch.Generator],
        control: GenerationControl,
        init_latent: torch.Tensor | None = None,
        denoising_strength: float = 1.0,
    ) -> torch.Tensor:
        from webui.sampling import sample

        request = self.request
        # with no step left (a tiny strength), sample() returns init_latent as encoded; speed-ups: issue 19
        with torch.no_grad(), request.speedups.applied(self.model.unet):
            return sample(
                request.sampler,
                denoiser,
                noise,
                steps=request.steps,
                schedule=request.schedule_type or request.scheduler,  # "" in a hand-made ResolvedRequest
                alphas_cumprod=self.alphas_cumprod,
                generator=generators,
                init_latent=init_latent,
                denoising_strength=denoising_strength,
                callback=self._step_callback(first),
                cancel=control.should_stop,
                options=request.sampler_options,
            )

    def _decode_report(self) -> Callable[[float], None] | None:
        """Say that the batch is being decoded, and return what reports how much of it is (None: no progress)."""
        progress, last = self.progress, self.last_progress
        if progress is None or last is None:
            return None
        decoding = replace(last, decoding=True)
        progress(decoding)
        return lambda fraction: progress(replace(decoding, decoded=fraction))

    def finish_images(
        self, first: int, latents: torch.Tensor, report: Callable[[float], None] | None = None
    ) -> list[Image.Image]:
        """Decode (``report`` gets the fraction decoded); for inpainting, paste the original pixels back
        outside the (blurred) mask."""
        images = decode_latents(self.model, latents, report)
        prepared = self.prepared
        if prepared is None or not prepared.overlay_masks:
            return images
        out = []
        for b, image in enumerate(images):
            i = (first + b) % len(prepared.originals)
            out.append(Image.composite(image, prepared.originals[i], prepared.overlay_masks[i]))
        return out

    def hires_pass(
        self, first: int, seeds: list[int], latents: torch.Tensor, control: GenerationControl, outputs_dir: Path | None
    ) -> tuple[torch.Tensor, list[Image.Image] | None]:
        """Hires fix's second pass of one batch; the first pass's images too when they are to be saved."""
        assert self.hires is not None and self.request.hires is not None
        keep = self.request.hires.given.save_first_pass and outputs_dir is not None
        callback = self._step_callback(first, offset=self.request.steps)
        with self.request.speedups.applied(self.model.unet, hires=True):  # issue 19
            out = self.hires.run(latents, seeds, control.should_stop, callback, keep_first_images=keep)
        return out.latents, out.first_images if keep else None

    def _step_callback(self, first: int, offset: int = 0) -> Callable[[dict[str, Any]], None]:
        """Per-step progress; ``offset`` is the batch's steps before this sampling (the hires pass's first pass)."""
        steps_before, batch_started = self.done_steps, time.monotonic()
        self.latest = self.last_progress = None

        def on_step(info: dict[str, Any]) -> None:
            step_in_batch = offset + int(info["i"]) + 1
            self.done_steps = steps_before + step_in_batch - offset
            denoised = info.get("denoised")
            self.latest = ((denoised if denoised is not None else info["x"]).detach(), step_in_batch)
            if self.progress is None:
                return
            now = time.monotonic()
            eta = (now - batch_started) / (step_in_batch - offset) * (self.total_steps - self.done_steps)
            preview = self.previewer(denoised) if self.previewer is not None and denoised is not None else None
            self.last_progress = Progress(
                step=self.done_steps,
                total_steps=self.total_steps,
                image_index=first,
                images_total=self.request.total_images,
                sampling_step=step_in_batch,
                sampling_steps=self.steps_per_batch,
                eta_seconds=eta,
                elapsed_seconds=now - self.started,
                preview=preview,
            )
            self.progress(self.last_progress)

        return on_step

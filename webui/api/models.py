"""Request and response bodies of the REST API, named and defaulted as AUTOMATIC1111's ``modules/api/models.py``.

Existing clients (the ``webuiapi`` package, Krita/Photoshop plugins, scripts written for A1111) send the full
A1111 payload; fields this server does not know are ignored (pydantic's default ``extra="ignore"``). The fields
below are the ones the server honours, plus a few A1111 features it does not implement (face
restoration, tiling, extensions): their schema admits only the "off" value, so that turning one
on is answered with 422 naming the field and a client never silently gets something else than it asked for.

The bounds here are the pipeline's (``webui.pipeline.requests``), true for any server; a server may set lower
ones (:class:`webui.api.limits.ApiLimits`), which the routes check.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from webui.pipeline.requests import (
    INPAINTING_FILLS,
    MAX_BATCH_SIZE,
    MAX_CFG_SCALE,
    MAX_N_ITER,
    MAX_SEED,
    MAX_SIZE,
    MAX_STEPS,
    MIN_SIZE,
    RESIZE_MODES,
    SIZE_MULTIPLE,
)

NOT_SUPPORTED = "is not supported by this server"


def _choices(names: tuple[str, ...]) -> str:
    return ", ".join(f"{i} {name}" for i, name in enumerate(names))


def _has_lone_surrogate(value: Any) -> bool:
    """Whether ``value`` holds text that is not valid Unicode (JSON's ``"\\ud800"`` escapes decode to such text,
    which cannot be tokenized, written into a PNG or encoded as UTF-8)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_lone_surrogate(v) for v in value)
    return False


class _Body(BaseModel):
    """A request body: unknown fields are ignored (A1111 clients send many), ``model_*`` names allowed,
    numbers must be finite and text valid Unicode."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=(), allow_inf_nan=False)

    @field_validator("*")
    @classmethod
    def _valid_unicode(cls, value: Any) -> Any:
        if _has_lone_surrogate(value):
            raise ValueError("text contains an unpaired UTF-16 surrogate: not valid Unicode")
        return value


class GenerationFields(_Body):
    """Fields shared by txt2img and img2img (A1111's ``StableDiffusionProcessing``)."""

    prompt: str = Field(default="", description="What to draw. A1111 prompt syntax: (word:1.2), [word], BREAK.")
    negative_prompt: str | None = Field(default=None, description="What to avoid; empty or null for none.")
    styles: list[str] | None = Field(
        default=None, description="Names from GET /sdapi/v1/prompt-styles, applied in order."
    )
    seed: int = Field(default=-1, ge=-1, le=MAX_SEED, description="-1 picks a random seed; image i uses seed + i.")
    subseed: int = Field(
        default=-1, ge=-1, le=MAX_SEED, description="Variation seed (-1 random); used with subseed_strength > 0."
    )
    subseed_strength: float = Field(default=0, ge=0, le=1, description="Variation strength: 0 off, 1 = the subseed.")
    seed_resize_from_h: int = Field(default=-1, ge=-1, le=MAX_SIZE, description="Keep the noise of this height.")
    seed_resize_from_w: int = Field(default=-1, ge=-1, le=MAX_SIZE, description="Keep the noise of this width.")
    sampler_name: str | None = Field(default=None, description="A name or alias from GET /sdapi/v1/samplers.")
    sampler_index: str = Field(default="Euler", description="Deprecated A1111 alias of sampler_name.")
    scheduler: str | None = Field(default=None, description="A schedule from GET /sdapi/v1/schedulers.")
    batch_size: int = Field(default=1, ge=1, le=MAX_BATCH_SIZE, description="Images generated together.")
    n_iter: int = Field(default=1, ge=1, le=MAX_N_ITER, description="Number of batches (A1111 'Batch count').")
    steps: int = Field(default=50, ge=1, le=MAX_STEPS, description="Sampling steps.")
    cfg_scale: float = Field(default=7.0, ge=0, le=MAX_CFG_SCALE, description="Guidance scale.")
    width: int | None = Field(
        default=None,
        ge=MIN_SIZE,
        le=MAX_SIZE,
        multiple_of=SIZE_MULTIPLE,
        description="Image width in pixels; null = the model's native size.",
    )
    height: int | None = Field(
        default=None,
        ge=MIN_SIZE,
        le=MAX_SIZE,
        multiple_of=SIZE_MULTIPLE,
        description="Image height in pixels; null = the model's native size.",
    )
    restore_faces: Literal[False] | None = Field(default=None, description=f"Face restoration {NOT_SUPPORTED}.")
    tiling: Literal[False] | None = Field(default=None, description=f"Tiling {NOT_SUPPORTED}.")
    do_not_save_samples: bool = Field(default=False)
    do_not_save_grid: bool = Field(default=False)
    eta: float | None = Field(default=None, ge=0, description="DDIM / ancestral noise multiplier; null = default.")
    s_churn: float | None = Field(default=None)
    s_tmax: float | None = Field(default=None)
    s_tmin: float | None = Field(default=None)
    s_noise: float | None = Field(default=None)
    override_settings: dict[str, Any] = Field(
        default_factory=dict,
        description="Per-request options: sd_model_checkpoint (model title or name), CLIP_stop_at_last_layers.",
    )
    override_settings_restore_afterwards: bool = Field(default=True)
    script_name: str | None = Field(default=None, description="'x/y/z plot' or 'prompts from file or textbox'.")
    script_args: list[Any] = Field(default_factory=list, description="The script's arguments, as A1111 1.10's.")
    alwayson_scripts: dict[str, Any] = Field(
        default_factory=dict, max_length=0, description=f"A1111 extensions {NOT_SUPPORTED}: empty only."
    )
    send_images: bool = Field(default=True, description="Return the images in the response.")
    save_images: bool = Field(default=False, description="Also save the images under the server's outputs folder.")
    force_task_id: str | None = Field(
        default=None, max_length=200, description="Job id to use (follow it with GET /sdapi/v1/progress?id_task=)."
    )
    infotext: Literal[""] | None = Field(default=None, description=f"Parameters from an infotext {NOT_SUPPORTED}.")


class StableDiffusionTxt2ImgProcessingAPI(GenerationFields):
    """``POST /sdapi/v1/txt2img``."""

    # Hires fix (webui/pipeline/hires.py, webui/api/extras.py): A1111's names and defaults.
    enable_hr: bool = Field(default=False, description="Hires fix: sample, upscale, then a second img2img pass.")
    denoising_strength: float | None = Field(
        default=None, ge=0, le=1, description="Hires fix's second-pass strength; null = 0.7."
    )
    firstphase_width: int = Field(default=0, description="Old A1111 field (ignored).")
    firstphase_height: int = Field(default=0, description="Old A1111 field (ignored).")
    hr_scale: float = Field(default=2.0, ge=1, le=8, description="Upscale factor (when hr_resize_x/y are 0).")
    hr_upscaler: str | None = Field(default=None, description="A latent mode or upscaler name; null = Latent.")
    hr_second_pass_steps: int = Field(default=0, ge=0, le=MAX_STEPS, description="0 = steps.")
    hr_resize_x: int = Field(default=0, ge=0, description="Target width; 0 = from hr_scale or the aspect ratio.")
    hr_resize_y: int = Field(default=0, ge=0, description="Target height; 0 = from hr_scale or the aspect ratio.")
    hr_checkpoint_name: str | None = Field(default=None, description=f"Another checkpoint {NOT_SUPPORTED}.")
    hr_sampler_name: str | None = Field(default=None, description="Second-pass sampler; empty = the first's.")
    hr_scheduler: str | None = Field(default=None, description="Second-pass schedule; empty = the first's.")
    hr_prompt: str = Field(default="", description="Second-pass prompt; empty = prompt.")
    hr_negative_prompt: str = Field(default="", description="Second-pass negative prompt; empty = the first's.")
    hr_cfg: float | None = Field(default=None, ge=0, le=MAX_CFG_SCALE, description="Second-pass CFG; null = same.")


class StableDiffusionImg2ImgProcessingAPI(GenerationFields):
    """``POST /sdapi/v1/img2img``; inpainting when ``mask`` is given (white = repaint, unless inverted)."""

    init_images: list[str] = Field(min_length=1, description="Base64 images (PNG, JPEG, WebP; data: URLs too).")
    resize_mode: int = Field(default=0, ge=0, le=len(RESIZE_MODES) - 1, description=_choices(RESIZE_MODES))
    denoising_strength: float = Field(default=0.75, ge=0, le=1)
    image_cfg_scale: float | None = Field(default=None, description="instruct-pix2pix only (ignored).")
    mask: str | None = Field(default=None, description="Base64 mask image for inpainting.")
    mask_blur_x: int = Field(default=4, ge=0)
    mask_blur_y: int = Field(default=4, ge=0)
    mask_blur: int | None = Field(default=None, ge=0, description="Sets mask_blur_x and mask_blur_y.")
    mask_round: bool = Field(default=True)
    inpainting_fill: int = Field(default=0, ge=0, le=len(INPAINTING_FILLS) - 1, description=_choices(INPAINTING_FILLS))
    inpaint_full_res: bool = Field(default=True, description="A1111 'Only masked' inpainting area.")
    inpaint_full_res_padding: int = Field(default=0, ge=0)
    inpainting_mask_invert: int = Field(default=0, ge=0, le=1, description="1 repaints the black part of the mask.")
    initial_noise_multiplier: float | None = Field(default=None)
    include_init_images: bool = Field(default=False, description="Echo init_images and mask in 'parameters'.")


class TextToImageResponse(BaseModel):
    images: list[str] | None = Field(default=None, description="The generated images, base64 PNG with infotext.")
    parameters: dict[str, Any]
    info: str = Field(description="JSON string: seed, all_seeds, infotexts, id_task, ... as A1111's Processed.js().")


class ImageToImageResponse(TextToImageResponse):
    pass


class PNGInfoRequest(_Body):
    image: str = Field(description="The base64 encoded PNG image (a data: URL works too).")


class PNGInfoResponse(BaseModel):
    info: str = Field(description="The 'parameters' text the image carries (empty when none).")
    items: dict[str, Any] = Field(description="The other text chunks of the image.")
    parameters: dict[str, Any] = Field(description="The infotext parsed into fields (A1111 rules).")


class ProgressResponse(BaseModel):
    progress: float = Field(description="Fraction done, 0 to 1.")
    eta_relative: float = Field(description="Estimated seconds left.")
    state: dict[str, Any] = Field(description="A1111's state snapshot: job, job_count, job_no, sampling_step, ...")
    current_image: str | None = Field(default=None, description="Base64 PNG preview of the current image.")
    textinfo: str | None = Field(default=None)
    id_task: str | None = Field(default=None, description="The job these numbers are about (null when idle).")
    queued: bool = False
    active: bool = False
    completed: bool = False
    queue_position: int | None = Field(default=None, description="Jobs ahead of this one (0 = running next).")


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, Any]


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: list[str] | None = None
    default_rho: float | None = None
    need_inner_model: bool | None = None


class SDModelItem(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    title: str
    model_name: str
    hash: str | None = Field(default=None, description="Short hash: first 10 hex digits of the file's sha256.")
    sha256: str | None = None
    filename: str
    config: str | None = None


class ScriptsList(BaseModel):
    txt2img: list[str] = Field(default_factory=list)
    img2img: list[str] = Field(default_factory=list)

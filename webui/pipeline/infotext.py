"""AUTOMATIC1111's generation-parameters text ("infotext"), written to and read from PNGs.

Format (``modules/processing.py::create_infotext`` and
``modules/infotext_utils.py::parse_generation_parameters``)::

    <prompt, possibly several lines>
    Negative prompt: <negative prompt>        (omitted when empty)
    Steps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 1, Size: 512x512, ...

A value containing ``,``, ``:`` or a newline is written JSON-quoted. A reader takes the last
line as parameters only if it holds at least 3 ``Key: value`` pairs, and splits ``WxH``
values into ``Key-1`` / ``Key-2``.
"""

from __future__ import annotations

import json
import re
from dataclasses import fields, replace
from typing import Any

from webui.extra_networks.lora_library import lora_hashes_text
from webui.pipeline.hires import hires_from_infotext, infotext_params
from webui.pipeline.requests import GenerationRequest, Img2ImgRequest, ResolvedRequest

_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_IMAGE_SIZE = re.compile(r"^(\d+)x(\d+)$")
NEGATIVE_PREFIX = "Negative prompt:"
RNG_SOURCE = "CPU"
LEGACY_SCHEDULE_SUFFIXES = ("Karras", "Exponential")


def quote(value: Any) -> str:
    """A1111's quoting: JSON-encode a value holding ``,``, ``:`` or a newline; else ``str``."""
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text: str) -> str:
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def _number(value: float) -> str:
    """``7.0`` -> ``7``, ``7.5`` -> ``7.5`` (how A1111's values read)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def infotext_parameters(
    request: ResolvedRequest,
    *,
    seed: int,
    model_name: str | None = None,
    model_hash: str | None = None,
    batch_pos: int | None = None,
    version: str | None = None,
    extra: dict[str, Any] | None = None,
    subseed: int | None = None,
) -> dict[str, Any]:
    """The ordered ``Key: value`` pairs of one image (None values are left out).

    Of the sampler options, those the request set are written: ``eta`` as A1111's ``Eta``, the others
    under their own names after the fixed keys.
    """
    options = {name: request.sampler_options[name] for name in request.given_options}
    eta = options.pop("eta", None)
    img2img = request.img2img
    params: dict[str, Any] = {
        "Steps": request.steps,
        "Sampler": request.sampler_name,
        "Schedule type": request.scheduler,
        "CFG scale": _number(request.cfg_scale),
        "Seed": seed,
        "Size": f"{request.width}x{request.height}",
        "Model hash": model_hash,
        "Model": model_name,
        # Variation seeds, as A1111 writes them (``subseed``: this image's variation seed).
        "Variation seed": subseed if request.subseed_strength != 0 else None,
        "Variation seed strength": _number(request.subseed_strength) if request.subseed_strength != 0 else None,
        "Seed resize from": "{}x{}".format(*request.seed_resize_from) if request.seed_resize_from else None,
        "Denoising strength": _number(img2img.denoising_strength) if img2img is not None else None,
        "Clip skip": request.clip_skip if request.clip_skip > 1 else None,
        **request.speedups.infotext(hires=request.hires is not None),  # issue 19: token merging, DeepCache
        "RNG": RNG_SOURCE,
        "Eta": _number(eta) if eta is not None else None,
    }
    if img2img is not None and img2img.mask is not None:
        params["Mask blur"] = img2img.mask_blur
    if request.hires is not None:  # hires fix: Denoising strength, Hires upscale, Hires upscaler, ...
        params.update(infotext_params(request.hires, request))
    if request.batch_size > 1:
        params["Batch size"] = request.batch_size
        params["Batch pos"] = batch_pos
    for key, value in options.items():
        params.setdefault(str(key), value)
    params["Lora hashes"] = lora_hashes_text(request.loras)  # LoRA (issue 15), as A1111's extra_generation_params
    params.update(extra or {})
    params["Version"] = version
    return {key: value for key, value in params.items() if value is not None}


def format_infotext(
    request: ResolvedRequest,
    *,
    seed: int,
    model_name: str | None = None,
    model_hash: str | None = None,
    batch_pos: int | None = None,
    version: str | None = None,
    extra: dict[str, Any] | None = None,
    subseed: int | None = None,
) -> str:
    """The ``parameters`` text of one image of ``request``."""
    params = infotext_parameters(
        request,
        seed=seed,
        model_name=model_name,
        model_hash=model_hash,
        batch_pos=batch_pos,
        version=version,
        extra=extra,
        subseed=subseed,
    )
    line = ", ".join(f"{key}: {quote(value)}" for key, value in params.items())
    negative = f"\n{NEGATIVE_PREFIX} {request.negative_prompt}" if request.negative_prompt else ""
    return f"{request.prompt}{negative}\n{line}".strip()


def parse_infotext(text: str) -> dict[str, str]:
    """Parse an infotext into ``{"Prompt", "Negative prompt", key: value, "Size-1", "Size-2", ...}``.

    Values stay strings, as A1111 returns them. Never raises on odd input.
    """
    *lines, last = text.strip().split("\n")
    if len(_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt: list[str] = []
    negative: list[str] = []
    in_negative = False
    for line in lines:
        line = line.strip()
        if line.startswith(NEGATIVE_PREFIX):
            in_negative = True
            line = line[len(NEGATIVE_PREFIX) :].strip()
        (negative if in_negative else prompt).append(line)
    result: dict[str, str] = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in _PARAM.findall(last):
        value = unquote(value.strip())
        size = _IMAGE_SIZE.match(value)
        if size is not None:
            result[f"{key}-1"], result[f"{key}-2"] = size.group(1), size.group(2)
        else:
            result[key] = value
    return result


# Infotext key -> (request field, converter).
_FIELDS: dict[str, tuple[str, type]] = {
    "Steps": ("steps", int),
    "Sampler": ("sampler_name", str),
    "Schedule type": ("scheduler", str),
    "CFG scale": ("cfg_scale", float),
    "Seed": ("seed", int),
    "Size-1": ("width", int),
    "Size-2": ("height", int),
    "Clip skip": ("clip_skip", int),
    "Denoising strength": ("denoising_strength", float),
    "Mask blur": ("mask_blur", int),
    "VAE": ("sd_vae", str),  # issue 15: the VAE file's name, as A1111 restores it into override settings
    "Variation seed": ("subseed", int),
    "Variation seed strength": ("subseed_strength", float),
    "Seed resize from-1": ("seed_resize_from_w", int),
    "Seed resize from-2": ("seed_resize_from_h", int),
    # issue 19: the speed-ups that trade quality, as A1111 restores its token merging ratios
    "Token merging ratio": ("token_merging_ratio", float),
    "Token merging ratio hr": ("token_merging_ratio_hr", float),
    "DeepCache interval": ("deepcache_interval", int),
    "DeepCache branch": ("deepcache_branch", int),
}


def request_from_infotext(infotext: str | dict[str, str], base: GenerationRequest | None = None) -> GenerationRequest:
    """A request that regenerates the image an infotext describes.

    ``base`` supplies what an infotext cannot hold (init images, masks); by default a plain
    :class:`GenerationRequest`. Keys the base type lacks (``Denoising strength`` on txt2img)
    and values that do not convert are ignored. ``Eta`` becomes the sampler option ``eta``. The
    returned request generates one image with the recorded seed (``Batch pos`` is folded into
    nothing: the seed already is seed + pos).
    """
    params = parse_infotext(infotext) if isinstance(infotext, str) else dict(infotext)
    sampler = params.get("Sampler", "")
    if "Schedule type" not in params:
        # Infotexts written before A1111 1.9 fold the schedule into the sampler: "DPM++ 2M Karras".
        for schedule in LEGACY_SCHEDULE_SUFFIXES:
            if sampler.endswith(f" {schedule}"):
                params["Sampler"], params["Schedule type"] = sampler[: -len(schedule) - 1], schedule
                break
    request = base if base is not None else GenerationRequest()
    names = {f.name for f in fields(request)}
    changes: dict[str, Any] = {"prompt": params.get("Prompt", ""), "negative_prompt": params.get("Negative prompt", "")}
    for key, (name, convert) in _FIELDS.items():
        if key not in params or name not in names:
            continue
        try:
            value = convert(params[key])
        except (TypeError, ValueError):
            continue
        changes[name] = value
    if "Eta" in params:
        try:
            changes["sampler_options"] = {**request.sampler_options, "eta": float(params["Eta"])}
        except ValueError:
            pass
    hires = hires_from_infotext(params)
    if hires is not None and not isinstance(request, Img2ImgRequest):
        changes["hires"] = hires
    # One infotext describes one image: regenerate exactly it.
    changes["batch_size"], changes["n_iter"] = 1, 1
    return replace(request, **changes)

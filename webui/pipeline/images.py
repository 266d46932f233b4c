"""Pixel-space helpers for img2img and inpainting (AUTOMATIC1111's behaviour).

Resize modes follow ``modules/images.py::resize_image``; the "fill" masked content follows
``modules/masking.py::fill``; tensors follow diffusers' ``VaeImageProcessor`` (pixels / 255 * 2 - 1
in, ``round((x / 2 + 0.5).clamp(0, 1) * 255)`` out) so that images match it exactly.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps

RESAMPLE = Image.Resampling.LANCZOS


def resize_image(image: Image.Image, width: int, height: int, mode: int = 0) -> Image.Image:
    """Fit ``image`` to ``width`` x ``height``: 0 just resize, 1 crop and resize, 2 resize and fill."""
    if mode == 0 or image.size == (width, height):
        return image.resize((width, height), RESAMPLE)
    ratio, src_ratio = width / height, image.width / image.height
    crop = mode == 1
    if (ratio > src_ratio) == crop:
        src_w, src_h = width, image.height * width // image.width
    else:
        src_w, src_h = image.width * height // image.height, height
    resized = image.resize((src_w, src_h), RESAMPLE)
    out = Image.new(image.mode, (width, height))
    out.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    if crop:
        return out
    # Resize and fill: stretch the outermost rows or columns into the empty bands.
    if ratio < src_ratio:
        band = height // 2 - src_h // 2
        if band > 0:
            out.paste(resized.resize((width, band), box=(0, 0, width, 0)), box=(0, 0))
            out.paste(resized.resize((width, band), box=(0, src_h, width, src_h)), box=(0, band + src_h))
    elif ratio > src_ratio:
        band = width // 2 - src_w // 2
        if band > 0:
            out.paste(resized.resize((band, height), box=(0, 0, 0, height)), box=(0, 0))
            out.paste(resized.resize((band, height), box=(src_w, 0, src_w, height)), box=(band + src_w, 0))
    return out


def prepare_mask(
    mask: Image.Image,
    source_size: tuple[int, int],
    width: int,
    height: int,
    *,
    resize_mode: int,
    blur: int,
    invert: bool,
) -> Image.Image:
    """Greyscale mask (white = repaint) at the output size, inverted and Gaussian-blurred as asked.

    A mask of another size than the init image is first resized to the init image's size,
    then undergoes the same resize mode as the image so that they stay aligned.
    """
    if mask.mode in ("RGBA", "LA", "PA") and mask.getchannel("A").getextrema() != (255, 255):
        # Brush strokes on a transparent layer: the alpha channel is the mask.
        mask = mask.getchannel("A")
    mask = mask.convert("L")
    if mask.size != source_size:
        mask = mask.resize(source_size, Image.Resampling.BILINEAR)
    mask = resize_image(mask, width, height, resize_mode)
    if invert:
        mask = ImageOps.invert(mask)
    if blur > 0:
        mask = mask.filter(ImageFilter.GaussianBlur(blur))
    return mask


def latent_mask(mask: Image.Image, latent_width: int, latent_height: int) -> torch.Tensor:
    """The repaint region at latent resolution, rounded to 0/1: (1, 1, h, w) float32."""
    small = np.asarray(mask.resize((latent_width, latent_height), Image.Resampling.BILINEAR), dtype=np.float32)
    return torch.from_numpy(np.around(small / 255.0)).reshape(1, 1, latent_height, latent_width)


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """Replace the masked part of ``image`` by ever finer blurs of the unmasked colours (A1111 "fill")."""
    kept = Image.new("RGBa", image.size)
    kept.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    out = Image.new("RGBA", image.size)
    for radius, repeats in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        blurred = kept.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            out.alpha_composite(blurred)
    return out.convert("RGB")


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL image -> (1, 3, H, W) float32 in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0) * 2.0 - 1.0


def tensor_to_images(x: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in about [-1, 1] -> RGB images, rounded like diffusers."""
    x = (x.detach().float().cpu() / 2 + 0.5).clamp(0, 1)
    arrays = (x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(a, "RGB") for a in arrays]

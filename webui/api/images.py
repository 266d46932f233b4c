"""Base64 images in and out of the API, as AUTOMATIC1111 exchanges them.

In: plain base64 or a ``data:image/...;base64,`` URL (what ``webuiapi`` sends), any format Pillow reads.
URLs are refused (A1111 fetches them only when an option allows it; a server must not be made to fetch
arbitrary addresses). Out: base64 PNG carrying the infotext in its ``parameters`` text chunk, so that saving
the response gives a file that A1111's PNG Info, Civitai or this server's ``/png-info`` read back.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings

from PIL import Image

from webui.api.errors import field_error
from webui.pipeline.outputs import png_bytes_info


def decode_image(data: str, field: str, *, max_pixels: int) -> Image.Image:
    """Decode a base64 image; raise a 422 naming ``field`` for anything that is not one (or is too large)."""
    if not isinstance(data, str) or not data.strip():
        raise field_error(field, "expected a base64 encoded image, got an empty string")
    text = data.strip()
    if text.startswith(("http://", "https://")):
        raise field_error(field, "image URLs are not fetched: send the image itself, base64 encoded")
    if text.startswith("data:"):
        header, sep, text = text.partition(",")
        if not sep or ";base64" not in header:
            raise field_error(field, "a data: URL must be base64 encoded (data:image/png;base64,...)")
    try:
        raw = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise field_error(field, f"invalid base64: {exc}") from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw))
            if image.width * image.height > max_pixels:
                raise field_error(field, f"image is {image.width}x{image.height}, more than {max_pixels} pixels")
            image.load()
    except (
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
        EOFError,
    ) as exc:
        raise field_error(field, f"not a readable image: {exc}") from exc
    return image


def encode_png(image: Image.Image, infotext: str | None = None) -> str:
    """Base64 PNG of ``image`` with ``infotext`` as its ``parameters`` chunk."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=png_bytes_info(infotext))
    return base64.b64encode(buffer.getvalue()).decode("ascii")

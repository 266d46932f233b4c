"""How much one API request may ask for.

The defaults are the pipeline's own bounds (the ranges of AUTOMATIC1111's sliders: batch size 8, batch count
100, 150 steps, 2048 px, CFG 30), so that any request its UI could make is accepted; a server on a small machine
(or a test) lowers them. A value above them is answered with 422 naming the field before anything is queued.
"""

from __future__ import annotations

from dataclasses import dataclass

from webui.pipeline.requests import MAX_BATCH_SIZE, MAX_CFG_SCALE, MAX_N_ITER, MAX_SIZE, MAX_STEPS

MIB = 1024 * 1024


@dataclass(frozen=True)
class ApiLimits:
    """Per-request limits of the REST API.

    Args:
        max_batch_size: images per batch (``batch_size``).
        max_n_iter: batches per request (``n_iter``, "Batch count").
        max_steps: sampling ``steps``.
        max_width / max_height: image size in pixels.
        max_cfg_scale: ``cfg_scale``.
        max_prompt_chars: length of ``prompt`` and ``negative_prompt`` each.
        max_image_pixels: width x height of an uploaded image (init image, mask, png-info), checked from the
            header before it is decoded.
        max_body_bytes: request body; larger ones are refused with 413 from ``Content-Length`` or, for a
            streamed body, as soon as the count passes it.
    """

    max_batch_size: int = MAX_BATCH_SIZE
    max_n_iter: int = MAX_N_ITER
    max_steps: int = MAX_STEPS
    max_width: int = MAX_SIZE
    max_height: int = MAX_SIZE
    max_cfg_scale: float = MAX_CFG_SCALE
    max_prompt_chars: int = 20_000
    max_image_pixels: int = 4096 * 4096
    max_body_bytes: int = 50 * MIB

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value <= 0:
                raise ValueError(f"ApiLimits.{name} must be positive, got {value!r}")

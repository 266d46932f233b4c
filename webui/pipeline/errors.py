"""Errors raised by the generation pipeline.

Every problem with what the caller asked for is an :class:`InvalidRequest` that names the
offending request field, so that the UI can highlight it and the API can answer 422.
"""

from __future__ import annotations


class PipelineError(RuntimeError):
    """Generation failed for a reason that is not the request's fault."""


class InvalidRequest(ValueError):
    """A request field has a value the pipeline cannot use; ``field`` names it (A1111 names)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class OutOfMemory(InvalidRequest):
    """The device ran out of memory; the message says which fields to lower.

    It is an :class:`InvalidRequest` because the fix is a smaller request (``field`` is the
    size or batch field to lower first). The pipeline frees the device cache before raising,
    so the next request works.
    """

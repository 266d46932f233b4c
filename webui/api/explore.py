"""The API side of styles and scripts: ``GET /sdapi/v1/prompt-styles``, ``styles`` in txt2img/img2img, and
``script_name`` / ``script_args`` (AUTOMATIC1111's "x/y/z plot" and "prompts from file or textbox").

:func:`explore_routes` is the one call ``mount_api`` makes to register these routes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from webui.api.errors import field_error
from webui.pipeline.errors import InvalidRequest
from webui.pipeline.requests import GenerationRequest
from webui.pipeline.styles import apply_styles, load_styles
from webui.scripts import SCRIPT_NAMES, plan_script
from webui.service import Service


def styled_prompts(service: Service, prompt: str, negative_prompt: str, names: list[str] | None) -> tuple[str, str]:
    """The prompts with the request's ``styles`` applied (A1111's merge rules); 422 naming an unknown style."""
    if not names:
        return prompt, negative_prompt
    styles = load_styles(service.styles_file)
    try:
        chosen = styles.get(names)
    except KeyError as exc:
        raise field_error("styles", str(exc).strip("\"'")) from exc
    return apply_styles(prompt, negative_prompt, chosen)


def with_script(
    service: Service, script_name: str | None, script_args: list[Any], request: GenerationRequest, model: str | None
) -> GenerationRequest:
    """``request`` with the plan of A1111's ``script_name``/``script_args`` (unchanged without a script); 422
    naming ``script_name`` or ``script_args`` for an unknown script or a bad axis, value or line."""
    if not script_name:
        return request

    def registry_name(name: str) -> str:
        try:
            return service.registry.get(name).name
        except LookupError:
            raise InvalidRequest("script_args", f"unknown checkpoint {name!r} (see GET /sdapi/v1/sd-models)") from None

    try:
        return replace(request, script=plan_script(script_name, script_args, request, model, registry_name))
    except InvalidRequest as exc:
        raise field_error(exc.field, exc.message) from exc


def scripts_list() -> dict[str, list[str]]:
    """``GET /sdapi/v1/scripts``: the scripts of both tabs, by A1111's lower-case names."""
    return {"txt2img": list(SCRIPT_NAMES), "img2img": list(SCRIPT_NAMES)}


def explore_routes(service: Service) -> list[tuple[str, Callable[..., Any], list[str], Any]]:
    """``(path, endpoint, methods, response model)`` rows for ``mount_api``'s route table."""

    async def prompt_styles() -> list[dict[str, str]]:
        styles = load_styles(service.styles_file)
        return [{"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt} for s in styles.styles]

    return [("/prompt-styles", prompt_styles, ["GET"], list[dict[str, str]])]

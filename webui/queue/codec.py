"""A resolved request as versioned JSON, so that a queued job outlives the process.

The encoding is generic: every dataclass is written field by field (``dataclasses.fields``) with its class
name, so fields added to :class:`~webui.pipeline.ResolvedRequest` (or new nested dataclasses of a feature)
are stored without a change here. Values that JSON cannot hold are tagged: images as PNG (lossless), tuples,
read-only mappings, paths, enums, non-finite floats, and by their names the objects that a registry holds: the
:class:`~webui.sampling.Sampler`, a plugin's :class:`~webui.sampling.ScheduleType` and a hires fix's upscaler
(looked up again in the sampler and upscaler registries when the job is read back). A value of another type
raises :class:`UnstorableValue`, naming the field.

Only classes from this application's packages are rebuilt on decoding, so a database cannot make the app
import or call anything else.
"""

from __future__ import annotations

import base64
import dataclasses
import importlib
import io
import json
import math
from collections.abc import Mapping
from enum import Enum
from pathlib import Path, PurePath
from types import MappingProxyType
from typing import Any

from PIL import Image

from webui.pipeline.requests import ResolvedRequest
from webui.sampling import Sampler, SamplerRegistry, ScheduleType
from webui.upscalers import UpscalerRegistry
from webui.upscalers.base import Resampler
from webui.upscalers.models import ModelUpscaler

FORMAT_VERSION = 1
TRUSTED_MODULES = ("webui.", "samplers.")


class UnstorableValue(TypeError):
    """A request holds a value this codec cannot write (the message names the field)."""


class UnreadableRequest(ValueError):
    """A stored request cannot be rebuilt (another format version, an unknown sampler or class...)."""


def encode_request(request: ResolvedRequest) -> str:
    """``request`` as JSON text: ``{"version": 1, "request": <tagged dataclass>}``."""
    return json.dumps({"version": FORMAT_VERSION, "request": _encode(request, "request")}, allow_nan=False)


def decode_request(text: str, samplers: SamplerRegistry, upscalers: UpscalerRegistry | None = None) -> ResolvedRequest:
    """The request :func:`encode_request` wrote; samplers and schedules are looked up by name in ``samplers``,
    a hires fix's upscaler in ``upscalers`` (None: the built-in ones)."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as err:
        raise UnreadableRequest(f"not JSON: {err}") from None
    version = document.get("version") if isinstance(document, dict) else None
    if version != FORMAT_VERSION:
        raise UnreadableRequest(f"stored in format version {version!r}; this version reads {FORMAT_VERSION}")
    request = _decode(document.get("request"), _Registries(samplers, upscalers or UpscalerRegistry()))
    if not isinstance(request, ResolvedRequest):
        raise UnreadableRequest(f"holds a {type(request).__name__}, not a ResolvedRequest")
    return request


def _class_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _encode(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (bool, int, str)) and not isinstance(value, Enum):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, Enum):
        return {"__enum__": _class_name(type(value)), "value": _encode(value.value, where)}
    if isinstance(value, Sampler):
        return {"__sampler__": value.name}
    if isinstance(value, ScheduleType):
        return {"__schedule__": value.name}
    if isinstance(value, (Resampler, ModelUpscaler)):
        return {"__upscaler__": value.name}
    if isinstance(value, Image.Image):
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return {"__image__": base64.b64encode(buffer.getvalue()).decode("ascii")}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            "__dataclass__": _class_name(type(value)),
            "fields": {
                f.name: _encode(getattr(value, f.name), f"{where}.{f.name}")
                for f in dataclasses.fields(value)
                if f.init
            },
        }
    if isinstance(value, PurePath):
        return {"__path__": str(value)}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        items = [[_encode(k, f"{where} key"), _encode(v, f"{where}[{k!r}]")] for k, v in value.items()]
        return {"__proxy__" if isinstance(value, MappingProxyType) else "__dict__": items}
    raise UnstorableValue(f"{where}: a {type(value).__name__} cannot be stored in the queue database")


@dataclasses.dataclass(frozen=True)
class _Registries:
    """Where the objects stored by name are looked up again."""

    samplers: SamplerRegistry
    upscalers: UpscalerRegistry


def _decode(value: Any, registries: _Registries) -> Any:
    if isinstance(value, list):
        return [_decode(v, registries) for v in value]
    if not isinstance(value, dict):
        return value
    if "__float__" in value:
        return float(value["__float__"])
    if "__sampler__" in value:
        try:
            return registries.samplers.get(value["__sampler__"])
        except (KeyError, ValueError) as err:
            raise UnreadableRequest(f"sampler {value['__sampler__']!r} is not installed: {err}") from None
    if "__schedule__" in value:
        try:
            return registries.samplers.schedule(value["__schedule__"])
        except ValueError as err:
            raise UnreadableRequest(f"schedule {value['__schedule__']!r} is not installed: {err}") from None
    if "__upscaler__" in value:
        try:
            return registries.upscalers.get(value["__upscaler__"])
        except KeyError as err:
            raise UnreadableRequest(f"upscaler {value['__upscaler__']!r} is gone: {err}") from None
    if "__image__" in value:
        with Image.open(io.BytesIO(base64.b64decode(value["__image__"]))) as image:
            image.load()
            return image.copy()
    if "__path__" in value:  # a concrete Path: the job opens it (a LoRA's file); building one touches no file
        return Path(value["__path__"])
    if "__tuple__" in value:
        return tuple(_decode(v, registries) for v in value["__tuple__"])
    if "__dict__" in value or "__proxy__" in value:
        pairs = value["__dict__"] if "__dict__" in value else value["__proxy__"]
        items = {_decode(k, registries): _decode(v, registries) for k, v in pairs}
        return MappingProxyType(items) if "__proxy__" in value else items
    if "__enum__" in value:
        return _trusted_class(value["__enum__"])(_decode(value["value"], registries))
    if "__dataclass__" in value:
        cls = _trusted_class(value["__dataclass__"])
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            raise UnreadableRequest(f"{value['__dataclass__']} is not a dataclass")
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        given = {name: _decode(v, registries) for name, v in value["fields"].items() if name in known}
        try:
            return cls(**given)
        except TypeError as err:  # a field this version requires that the stored job lacks
            raise UnreadableRequest(f"{value['__dataclass__']}: {err}") from None
    raise UnreadableRequest(f"unknown tagged value with keys {sorted(value)}")


def _trusted_class(name: str) -> Any:
    module_name, _, qualname = name.partition(":")
    if not module_name.startswith(TRUSTED_MODULES):
        raise UnreadableRequest(f"class {name} is not one of this application's")
    try:
        target: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as err:
        raise UnreadableRequest(f"class {name} no longer exists: {err}") from None
    return target


def plain_params(text: str | None) -> dict[str, Any]:
    """A stored request as plain JSON values for display (the queue API's ``params``): the sampler by name,
    images left out, nested dataclasses as dicts. Nothing is imported or rebuilt; {} if unreadable."""
    if not text:
        return {}
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        return {}
    plain = _plain(document.get("request") if isinstance(document, dict) else None)
    return plain if isinstance(plain, dict) else {}


def _plain(value: Any) -> Any:
    if isinstance(value, list):
        return [_plain(v) for v in value if not (isinstance(v, dict) and "__image__" in v)]
    if not isinstance(value, dict):
        return value
    for by_name in ("__sampler__", "__schedule__", "__upscaler__"):
        if by_name in value:
            return value[by_name]
    if "__image__" in value:
        return None
    if "__float__" in value:
        return value["__float__"]
    if "__path__" in value:
        return value["__path__"]
    if "__tuple__" in value:
        return _plain(value["__tuple__"])
    if "__enum__" in value:
        return _plain(value["value"])
    if "__dict__" in value or "__proxy__" in value:
        pairs = value["__dict__"] if "__dict__" in value else value["__proxy__"]
        return {str(_plain(k)): _plain(v) for k, v in pairs}
    if "__dataclass__" in value:
        return {name: _plain(v) for name, v in value["fields"].items()}
    return value

"""AUTOMATIC1111's extra-network tags in prompts: ``<kind:arg1:arg2...>``, e.g. ``<lora:name:0.8>``.

As A1111's ``modules/extra_networks.py`` parses them: ``<(\\w+):([^>]+)>`` anywhere in the text, the
arguments split on ``:``, an argument ``key=value`` is named (``<lora:name:unet=0.5>``), the others are
positional. The tags are removed from the text before it is encoded; the text keeps no other trace of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

TAG = re.compile(r"<(\w+):([^>]+)>")


@dataclass(frozen=True)
class ExtraNetworkTag:
    """One ``<kind:items...>`` tag; ``positional`` and ``named`` split ``items`` as A1111 does."""

    kind: str
    items: tuple[str, ...]
    positional: tuple[str, ...] = field(default=())
    named: dict[str, str] = field(default_factory=dict, hash=False)

    @classmethod
    def of(cls, kind: str, args: str) -> ExtraNetworkTag:
        items = tuple(args.split(":"))
        positional: list[str] = []
        named: dict[str, str] = {}
        for item in items:
            key, sep, value = item.partition("=")
            if sep and "=" not in value:
                named[key] = value
            else:
                positional.append(item)
        return cls(kind, items, tuple(positional), named)


def parse_tags(prompt: str) -> tuple[str, list[ExtraNetworkTag]]:
    """``prompt`` without its extra-network tags, and the tags in order."""
    tags: list[ExtraNetworkTag] = []

    def found(match: re.Match[str]) -> str:
        tags.append(ExtraNetworkTag.of(match[1], match[2]))
        return ""

    return TAG.sub(found, prompt), tags


def strip_tags(prompt: str) -> str:
    """``prompt`` as it is encoded: every ``<kind:...>`` tag removed."""
    return TAG.sub("", prompt)

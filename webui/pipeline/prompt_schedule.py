"""AUTOMATIC1111's prompt editing: ``[from:to:when]``, ``[to:when]``, ``[from::when]`` and ``[a|b]``.

- ``[from:to:when]`` uses ``from`` up to step ``when`` and ``to`` after it; ``when`` with a
  decimal point is a fraction of the steps (``0.25``), without one a step number (``5``).
- ``[to:when]`` adds ``to`` after ``when``; ``[from::when]`` removes ``from`` after ``when``.
- ``[a|b|c]`` alternates every step (a on step 1, b on step 2, ...).

:func:`prompt_schedule` turns a prompt into ``[(end_step, text), ...]`` as AUTOMATIC1111's
``get_learned_conditioning_prompt_schedules`` does: ``text`` is used while the sampling step
index (0-based) is ``<= end_step``. Brackets that are not prompt editing (``[word]``,
``(word:1.2)``) are kept as they are for the attention parser. A prompt without editing
syntax, or one this grammar cannot read, gives ``[(steps, prompt)]``: it never raises.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Scheduled:
    before: list | None  # None: "[to:when]" (nothing before)
    after: list
    when: str


@dataclass
class Alternate:
    options: list[list]


@dataclass
class Group:
    """Brackets that stay literal: ``(...)`` or ``[...]`` (attention), content parsed for editing."""

    open: str
    body: list
    close: str


_PAIRS = {"[": "]", "(": ")"}


def _matching(text: str, start: int) -> int:
    """Index of the bracket closing ``text[start]``, or -1."""
    stack = [_PAIRS[text[start]]]
    i = start + 1
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch in _PAIRS:
            stack.append(_PAIRS[ch])
        elif ch in ")]":
            if ch != stack[-1]:
                return -1
            stack.pop()
            if not stack:
                return i
        i += 1
    return -1


def _split_top_level(text: str, separators: str) -> list[tuple[str, str]]:
    """Split on separators outside nested brackets; returns ``(separator_before, part)`` pairs."""
    parts: list[tuple[str, str]] = []
    depth, start, sep, i = 0, 0, "", 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch in "[(":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif depth == 0 and ch in separators:
            parts.append((sep, text[start:i]))
            sep, start = ch, i + 1
        i += 1
    parts.append((sep, text[start:]))
    return parts


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse(text: str) -> list:
    """Parse ``text`` into plain strings, :class:`Scheduled`, :class:`Alternate` and :class:`Group` nodes."""
    nodes: list = []
    plain: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            plain.append(text[i : i + 2])
            i += 2
            continue
        end = _matching(text, i) if ch in _PAIRS else -1
        if end < 0:
            plain.append(ch)
            i += 1
            continue
        if plain:
            nodes.append("".join(plain))
            plain = []
        nodes.append(_bracket(text[i], text[i + 1 : end], text[end]))
        i = end + 1
    if plain:
        nodes.append("".join(plain))
    return nodes


def _bracket(open_: str, body: str, close: str) -> object:
    if open_ == "[":
        parts = _split_top_level(body, ":|")
        seps = [sep for sep, _ in parts[1:]]
        if seps and all(sep == "|" for sep in seps):
            return Alternate([parse(part) for _, part in parts])
        if seps and all(sep == ":" for sep in seps) and len(parts) in (2, 3) and _is_number(parts[-1][1].strip()):
            when = parts[-1][1].strip()
            if len(parts) == 3:
                return Scheduled(parse(parts[0][1]), parse(parts[1][1]), when)
            return Scheduled(None, parse(parts[0][1]), when)
    return Group(open_, parse(body), close)


def _when_step(when: str, steps: int) -> int:
    """A1111's new scheduling: a decimal is a fraction of ``steps``, an integer a step number."""
    value = float(when) * steps if "." in when else float(when)
    return min(steps, int(value))


def _collect_steps(nodes: list, steps: int, found: set[int]) -> None:
    for node in nodes:
        if isinstance(node, Scheduled):
            step = _when_step(node.when, steps)
            if step >= 1:
                found.add(step)
            for part in (node.before or [], node.after):
                _collect_steps(part, steps, found)
        elif isinstance(node, Alternate):
            found.update(range(1, steps + 1))
            for option in node.options:
                _collect_steps(option, steps, found)
        elif isinstance(node, Group):
            _collect_steps(node.body, steps, found)


def _text_at(nodes: list, step: int, steps: int) -> str:
    out: list[str] = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, Scheduled):
            part = (node.before or []) if step <= _when_step(node.when, steps) else node.after
            out.append(_text_at(part, step, steps))
        elif isinstance(node, Alternate):
            out.append(_text_at(node.options[(step - 1) % len(node.options)], step, steps))
        else:
            out.append(node.open + _text_at(node.body, step, steps) + node.close)
    return "".join(out)


def prompt_schedule(prompt: str, steps: int) -> list[tuple[int, str]]:
    """``[(end_step, text), ...]`` for ``steps`` sampling steps, ending with ``end_step == steps``."""
    if "[" not in prompt or (":" not in prompt and "|" not in prompt):
        return [(steps, prompt)]
    try:
        nodes = parse(prompt)
        boundaries: set[int] = {steps}
        _collect_steps(nodes, steps, boundaries)
        schedule = [(step, _text_at(nodes, step, steps)) for step in sorted(boundaries)]
    except (RecursionError, ValueError, IndexError):
        return [(steps, prompt)]
    # Merge neighbours with the same text (the earlier end step is then redundant).
    merged: list[tuple[int, str]] = []
    for end, text in schedule:
        if merged and merged[-1][1] == text:
            merged[-1] = (end, text)
        else:
            merged.append((end, text))
    return merged


def text_at_step(schedule: list[tuple[int, str]], step: int) -> str:
    """The text in force at 0-based sampling step ``step`` (A1111's ``reconstruct_cond_batch``)."""
    for end, text in schedule:
        if step <= end:
            return text
    return schedule[-1][1]

"""AUTOMATIC1111's "Prompts from file or textbox" script: one generation per line, as one job.

``script_args`` as A1111 1.10: ``[iterate_seed, same_random_seed, prompt_position, prompt_text]``
(``iterate_seed``: each line's seed is the previous one + its image count; ``same_random_seed``: a seed of
-1 is drawn once for all lines; ``prompt_position`` "start" or "end": where a line's prompt goes when the
base prompt is not empty). A plain line is a prompt; a line with ``--`` options sets fields, e.g.::

    --prompt "a cat" --negative_prompt "dog" --steps 20 --cfg_scale 7 --seed 1 --sampler_name "Euler a"

Options: those of :data:`OPTIONS`, ``--sd_model`` for a checkpoint. A bad line is refused with its number
before anything runs.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from webui.pipeline.errors import InvalidRequest
from webui.pipeline.requests import GenerationRequest
from webui.pipeline.script_plan import PROMPTS_FROM_FILE, ScriptCell, ScriptPlan
from webui.pipeline.seeds import resolve_seed

ARGS = "script_args"
OPTIONS: dict[str, type] = {
    "prompt": str,
    "negative_prompt": str,
    "seed": int,
    "subseed": int,
    "subseed_strength": float,
    "seed_resize_from_w": int,
    "seed_resize_from_h": int,
    "sampler_name": str,
    "sampler_index": str,
    "scheduler": str,
    "batch_size": int,
    "n_iter": int,
    "steps": int,
    "cfg_scale": float,
    "width": int,
    "height": int,
    "clip_skip": int,
}


def parse_line(line: str, number: int) -> dict[str, Any]:
    """One line's fields (``sd_model`` for a checkpoint); ``InvalidRequest`` naming the line number."""
    if not line.startswith("--"):
        return {"prompt": line}
    try:
        words = shlex.split(line)
    except ValueError as err:
        raise InvalidRequest(ARGS, f"line {number}: {err}") from None
    fields: dict[str, Any] = {}
    i = 0
    while i < len(words):
        word = words[i]
        if not word.startswith("--"):
            raise InvalidRequest(ARGS, f"line {number}: expected an option, got {word!r}")
        key = word[2:]
        if key not in OPTIONS and key != "sd_model":
            raise InvalidRequest(ARGS, f"line {number}: unknown option --{key}")
        if i + 1 >= len(words):
            raise InvalidRequest(ARGS, f"line {number}: --{key} needs a value")
        kind = OPTIONS.get(key, str)
        try:
            value = kind(words[i + 1])
        except ValueError:
            raise InvalidRequest(ARGS, f"line {number}: --{key} takes {kind.__name__}, got {words[i + 1]!r}") from None
        fields["sampler_name" if key == "sampler_index" else key] = value
        i += 2
    return fields


def plan_prompts(base: GenerationRequest, script_args: Sequence[Any], model_name: str | None) -> ScriptPlan:
    """One cell per non-empty line of the text, in order."""
    args = list(script_args) + [False, False, "start", ""][len(script_args) :]
    if len(args) != 4:
        raise InvalidRequest(ARGS, f"prompts from file takes 4 arguments, got {len(script_args)}")
    iterate, same_seed, position, text = bool(args[0]), bool(args[1]), str(args[2] or "start"), str(args[3] or "")
    if position not in ("start", "end"):
        raise InvalidRequest(ARGS, f"prompt position must be 'start' or 'end', got {position!r}")
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not lines:
        raise InvalidRequest(ARGS, "no prompts: the text is empty")
    parsed = [(parse_line(line, n)) for n, line in lines]  # every line checked before anything runs
    if iterate or same_seed:
        base = replace(base, seed=resolve_seed(base.seed))
    cells = []
    seed = base.seed
    for fields in parsed:
        model = fields.pop("sd_model", model_name)
        request = replace(base, **{**fields, "prompt": base.prompt, "negative_prompt": base.negative_prompt})
        if "seed" not in fields:
            request = replace(request, seed=seed)
        for key in ("prompt", "negative_prompt"):
            own = fields.get(key)
            if own:
                joined = (own, getattr(base, key)) if position == "start" else (getattr(base, key), own)
                joined_text: dict[str, Any] = {key: " ".join(part for part in joined if part)}
                request = replace(request, **joined_text)
        cells.append(ScriptCell(request, model))
        if iterate and seed >= 0:
            seed += request.batch_size * request.n_iter
    return ScriptPlan(PROMPTS_FROM_FILE, tuple(cells), tuple(range(len(cells))))

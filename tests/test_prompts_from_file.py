"""'Prompts from file or textbox': A1111's line syntax, prompt position and seeds (the API run of five lines
with their settings is in test_xyz_api.py)."""

from __future__ import annotations

import pytest

from webui.pipeline.errors import InvalidRequest
from webui.pipeline.requests import GenerationRequest
from webui.scripts.prompts_from_file import parse_line, plan_prompts


def test_lines_are_prompts_or_a1111_options() -> None:
    assert parse_line("a cat, (sharp:1.2)", 1) == {"prompt": "a cat, (sharp:1.2)"}
    fields = parse_line("--prompt \"a 'b' c\" --steps 20 --cfg_scale 7.5 --seed 1 --sampler_index 'Euler a'", 3)
    assert fields == {"prompt": "a 'b' c", "steps": 20, "cfg_scale": 7.5, "seed": 1, "sampler_name": "Euler a"}
    assert parse_line("--sd_model tiny-b --width 96", 1) == {"sd_model": "tiny-b", "width": 96}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("--stepz 3", "line 4: unknown option --stepz"),
        ("--steps many", "line 4: --steps takes int, got 'many'"),
        ("--steps", "line 4: --steps needs a value"),
        ('--prompt "open', "line 4: No closing quotation"),
        ("--prompt a b", "line 4: expected an option, got 'b'"),
    ],
)
def test_a_bad_line_names_its_number(line: str, message: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        plan_prompts(GenerationRequest(), [False, False, "start", f"a\nb\n\n{line}\nc"], None)
    assert err.value.field == "script_args" and err.value.message == message


def test_prompt_position_and_iterated_seeds() -> None:
    base = GenerationRequest(prompt="base", negative_prompt="neg", seed=-1, batch_size=2)
    start = plan_prompts(
        base, [True, False, "start", 'one\n--prompt two --negative_prompt "n2" --n_iter 2\nthree'], None
    )
    requests = [c.request for c in start.cells]
    assert [r.prompt for r in requests] == ["one base", "two base", "three base"]
    assert [r.negative_prompt for r in requests] == ["neg", "n2 neg", "neg"]
    seed = requests[0].seed
    assert seed >= 0 and [r.seed for r in requests] == [seed, seed + 2, seed + 6]  # each line's images
    end = plan_prompts(base, [False, True, "end", "one\n--seed 9 --prompt x"], "m")
    assert [c.request.prompt for c in end.cells] == ["base one", "base x"]
    assert end.cells[0].request.seed == end.cells[0].request.seed >= 0 and end.cells[1].request.seed == 9
    assert all(c.model_name == "m" for c in end.cells) and end.order == (0, 1)
    fresh = plan_prompts(base, [False, False, "start", "a\nb"], None)
    assert [c.request.seed for c in fresh.cells] == [-1, -1]  # drawn per line when neither box is ticked

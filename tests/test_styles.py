"""Prompt styles: A1111's styles.csv, its merge rules, and ``styles`` through the REST API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from tests.support.api import from_b64, serve
from webui.api import mount_api
from webui.pipeline.styles import PromptStyle, apply_styles, load_styles, merge_prompts, parse_styles, save_style
from webui.service import WebUIService

SIZE = 64
STYLES_CSV = (
    "name,prompt,negative_prompt\n"
    'cinematic,"{prompt}, cinematic lighting, 35mm",blurry\n'
    "oil,oil painting,\n"
    '"portrait","portrait of {prompt}, detailed face","ugly, deformed"\n'
)


# A1111's rules (modules/styles.py merge_prompts), on the examples of its wiki ("Styles").
@pytest.mark.parametrize(
    ("style", "prompt", "expected"),
    [
        ("oil painting", "a cat", "a cat, oil painting"),  # appended with ", "
        ("{prompt}, by artist", "a cat", "a cat, by artist"),  # placeholder replaced
        ("a photo of {prompt} at night", "a cat", "a photo of a cat at night"),
        ("oil painting", "", "oil painting"),  # empty prompt: no leading comma
        ("", "a cat", "a cat"),  # empty style: prompt unchanged
        ("  oil painting ", " a cat ", "a cat, oil painting"),  # both stripped when appended
        ("{prompt} and {prompt}", "x", "x and x"),  # every placeholder
    ],
)
def test_merge_prompts_follows_a1111(style: str, prompt: str, expected: str) -> None:
    assert merge_prompts(style, prompt) == expected


def test_styles_apply_in_order_to_both_prompts() -> None:
    styles = [PromptStyle("a", "{prompt}, sharp", "blurry"), PromptStyle("b", "portrait of {prompt}", "{prompt}, ugly")]
    assert apply_styles("cat", "dog", styles) == ("portrait of cat, sharp", "dog, blurry, ugly")
    # the placeholder is replaced verbatim, even by an empty prompt (A1111 leaves the ", " too)
    assert apply_styles("cat", "", styles[::-1]) == ("portrait of cat, sharp", ", ugly, blurry")


def test_parse_reads_a1111_files_and_reports_bad_rows_with_line_numbers() -> None:
    parsed = parse_styles(STYLES_CSV)
    assert parsed.names == ["cinematic", "oil", "portrait"] and not parsed.problems
    assert parsed.get(["portrait"])[0] == PromptStyle(
        "portrait", "portrait of {prompt}, detailed face", "ugly, deformed"
    )
    old = parse_styles("\ufeffname, text\nink, ink drawing\n")  # A1111's old two-column format, BOM, spaces
    assert old.styles == (PromptStyle("ink", "ink drawing", ""),)
    broken = parse_styles("name,prompt,negative_prompt\ngood,a,b\n,no name,\nwide,a,b,c,d\n\nlast,x,\n")
    assert broken.names == ["good", "last"]
    assert [(p.line, p.message.split(" ")[0]) for p in broken.problems] == [(3, "the"), (4, "5")]
    assert "line 4" in str(broken.problems[1])
    with pytest.raises(KeyError, match="'nope'"):
        parsed.get(["oil", "nope"])


def test_save_adds_or_replaces_and_keeps_a_backup(tmp_path: Path) -> None:
    path = tmp_path / "styles.csv"
    save_style(path, PromptStyle("a", "x, {prompt}", 'say "hi", twice'))
    saved = save_style(path, PromptStyle("b", "y"))
    assert saved.names == ["a", "b"] and saved.get(["a"])[0].negative_prompt == 'say "hi", twice'
    assert save_style(path, PromptStyle("a", "z")).get(["a"])[0].prompt == "z"
    assert path.read_bytes().startswith(b"\xef\xbb\xbfname,prompt,negative_prompt")  # as A1111 writes it
    assert load_styles(tmp_path / "styles.csv.bak").names == ["a", "b"]
    path.write_text("name,prompt\n,bad\n")
    with pytest.raises(ValueError, match="line 2"):  # never drop a row the user still has to fix
        save_style(path, PromptStyle("c", "w"))
    assert load_styles(tmp_path / "missing.csv").styles == ()


@pytest.fixture(scope="module")
def styled_service(tiny_checkpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebUIService]:
    folder = tmp_path_factory.mktemp("styles_api")
    (folder / "models.yaml").write_text(
        f"models:\n  - name: tiny\n    path: {tiny_checkpoint.path}\n    width: {SIZE}\n    height: {SIZE}\n"
    )
    (folder / "styles.csv").write_text(STYLES_CSV)  # next to models.yaml: the default place
    service = WebUIService(folder / "models.yaml")
    yield service
    service.close()


@pytest.fixture(scope="module")
def url(styled_service: WebUIService) -> Iterator[str]:
    app = FastAPI()
    mount_api(app, styled_service)
    with serve(app) as base:
        yield base


def txt2img(url: str, **body) -> httpx.Response:
    body = {"steps": 2, "sampler_name": "Euler", "seed": 5, **body}
    return httpx.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=300)


def test_api_lists_styles_and_applies_them_like_the_written_out_prompt(url: str) -> None:
    listed = httpx.get(f"{url}/sdapi/v1/prompt-styles").json()
    assert [s["name"] for s in listed] == ["cinematic", "oil", "portrait"]
    assert listed[0] == {
        "name": "cinematic",
        "prompt": "{prompt}, cinematic lighting, 35mm",
        "negative_prompt": "blurry",
    }
    styled = txt2img(url, prompt="a cat", negative_prompt="dog", styles=["portrait", "oil"]).json()
    written = txt2img(
        url, prompt="portrait of a cat, detailed face, oil painting", negative_prompt="dog, ugly, deformed"
    ).json()
    a, b = (np.asarray(from_b64(r["images"][0]).convert("RGB"), dtype=np.int16) for r in (styled, written))
    assert np.array_equal(a, b)
    infotext = from_b64(styled["images"][0]).info["parameters"]  # the final prompt: reproducible without the file
    assert infotext.startswith("portrait of a cat, detailed face, oil painting\nNegative prompt: dog, ugly, deformed")
    plain = txt2img(url, prompt="a cat", negative_prompt="dog").json()
    assert not np.array_equal(a, np.asarray(from_b64(plain["images"][0]).convert("RGB"), dtype=np.int16))


def test_unknown_style_is_a_422_naming_it(url: str) -> None:
    response = txt2img(url, prompt="a cat", styles=["oil", "no such style"])
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "styles"] and "'no such style'" in response.text


def test_edits_to_the_file_are_picked_up(url: str, styled_service: WebUIService) -> None:
    path = styled_service.styles_file
    original = path.read_text()
    try:
        path.write_text(original + "new,fresh style,\n")
        assert "new" in [s["name"] for s in httpx.get(f"{url}/sdapi/v1/prompt-styles").json()]
        assert txt2img(url, prompt="a", styles=["new"]).status_code == 200
    finally:
        path.write_text(original)


def test_webuiapi_client_lists_and_applies_styles(url: str) -> None:
    import webuiapi

    host, port = url.removeprefix("http://").split(":")
    api = webuiapi.WebUIApi(host=host, port=int(port), sampler="Euler", steps=2)
    assert [s["name"] for s in api.get_prompt_styles()] == ["cinematic", "oil", "portrait"]
    result = api.txt2img(prompt="a cat", styles=["cinematic"], seed=5, width=SIZE, height=SIZE)
    assert result.info["prompt"] == "a cat, cinematic lighting, 35mm" and result.info["negative_prompt"] == "blurry"

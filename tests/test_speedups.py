"""Token merging and DeepCache in generation (issue 19): off by default, per request, in the infotext, scoped.

The equality with the reference packages is tests/test_token_merging.py's and tests/test_deep_cache.py's;
here: the request fields reach the UNet (the image changes), nothing leaks into the next job, the infotext
keys are A1111's, the app's settings fill what a request leaves out, and bad values are refused.
"""

from __future__ import annotations

import numpy as np
import pytest

from webui.pipeline import generate, native_size, resolve_request
from webui.pipeline.errors import InvalidRequest
from webui.pipeline.hires import HiresRequest
from webui.pipeline.infotext import parse_infotext, request_from_infotext
from webui.pipeline.requests import GenerationRequest, Img2ImgRequest
from webui.pipeline.speedups import Speedups, SpeedupSettings


@pytest.fixture(scope="module")
def tiny_model(tiny_checkpoint):
    from webui.models.loading import load_model

    return load_model(tiny_checkpoint.path, native_size=(64, 64))


@pytest.fixture(scope="module")
def samplers():
    from webui.sampling import create_sampler_registry

    return create_sampler_registry()


def run(model, samplers, **fields):
    request = GenerationRequest(prompt="a cat", seed=5, steps=4, sampler_name="DDIM", width=128, height=128, **fields)
    result = generate(model, resolve_request(request, samplers, native_size(model)))
    return np.asarray(result.images[0], dtype=np.int16), parse_infotext(result.infotexts[0])


@pytest.fixture(scope="module")
def exact(tiny_model, samplers):
    return run(tiny_model, samplers)


def test_off_by_default_and_zero_is_the_exact_path(tiny_model, samplers, exact):
    image, info = exact
    zero, zero_info = run(tiny_model, samplers, token_merging_ratio=0.0, deepcache_interval=1)
    assert np.array_equal(image, zero)
    assert not any("merging" in key or "DeepCache" in key for key in info)
    assert zero_info == info


@pytest.mark.parametrize(
    ("fields", "keys"),
    [
        ({"token_merging_ratio": 0.5}, {"Token merging ratio": "0.5"}),
        ({"deepcache_interval": 2}, {"DeepCache interval": "2", "DeepCache branch": "0"}),
        ({"deepcache_interval": 3, "deepcache_branch": 1}, {"DeepCache interval": "3", "DeepCache branch": "1"}),
    ],
)
def test_each_option_changes_the_image_and_is_in_the_infotext(tiny_model, samplers, exact, fields, keys):
    image, info = run(tiny_model, samplers, **fields)
    assert np.abs(image - exact[0]).max() > 0
    assert {k: info[k] for k in keys} == keys
    assert "Token merging ratio hr" not in info
    again, _ = run(tiny_model, samplers)  # the next job without them is exact again: nothing leaked
    assert np.array_equal(again, exact[0])
    assert tiny_model.unet.feature_cache is None
    assert all(getattr(m, "token_merge", None) is None for m in tiny_model.unet.modules())


def test_infotext_restores_the_options(tiny_model, samplers):
    _, info = run(tiny_model, samplers, token_merging_ratio=0.3, deepcache_interval=2, deepcache_branch=1)
    request = request_from_infotext(info)
    assert (request.token_merging_ratio, request.deepcache_interval, request.deepcache_branch) == (0.3, 2, 1)


def test_hires_pass_ratio_is_its_own_or_the_first_pass_one(samplers):
    hires = HiresRequest(hr_scale=1.5, hr_upscaler="Latent")
    resolved = resolve_request(
        GenerationRequest(token_merging_ratio=0.3, token_merging_ratio_hr=0.5, hires=hires), samplers, (64, 64)
    )
    assert resolved.speedups.token_merging_ratio_hr == 0.5
    assert resolved.speedups.infotext(hires=True)["Token merging ratio hr"] == 0.5
    fallback = resolve_request(GenerationRequest(token_merging_ratio=0.3, hires=hires), samplers, (64, 64))
    assert fallback.speedups.token_merging_ratio_hr == 0.3


@pytest.mark.parametrize(
    ("fields", "bad"),
    [
        ({"token_merging_ratio": 0.8}, "token_merging_ratio"),
        ({"token_merging_ratio_hr": -0.1}, "token_merging_ratio_hr"),
        ({"deepcache_interval": 0}, "deepcache_interval"),
        ({"deepcache_branch": 2.5}, "deepcache_branch"),
        ({"deepcache_branch": 12}, "deepcache_branch"),
    ],
)
def test_bad_values_name_their_field(samplers, fields, bad):
    with pytest.raises(InvalidRequest) as err:
        resolve_request(GenerationRequest(**fields), samplers, (64, 64))
    assert err.value.field == bad


def test_a_branch_deeper_than_the_model_is_refused_when_it_runs(tiny_model, samplers):
    with pytest.raises(InvalidRequest) as err:
        run(tiny_model, samplers, deepcache_interval=2, deepcache_branch=9)  # the tiny UNet has 6 input blocks
    assert err.value.field == "deepcache_branch"
    assert tiny_model.unet.feature_cache is None


def test_settings_fill_what_a_request_leaves_out():
    settings = SpeedupSettings().updated({"token_merging_ratio": 0.4, "deepcache_interval": 3, "sd_vae": "x"})
    assert settings.options()["token_merging_ratio"] == 0.4
    assert settings.fill(GenerationRequest()) == {
        "token_merging_ratio": 0.4,
        "token_merging_ratio_hr": 0.0,
        "deepcache_interval": 3,
        "deepcache_branch": 0,
    }
    assert settings.fill(GenerationRequest(token_merging_ratio=0.0, deepcache_interval=1)) == {
        "token_merging_ratio_hr": 0.0,
        "deepcache_branch": 0,
    }
    # img2img: token_merging_ratio_img2img when set, else token_merging_ratio (A1111's get_token_merging_ratio)
    img2img = settings.updated({"token_merging_ratio_img2img": 0.2})
    assert img2img.fill(Img2ImgRequest())["token_merging_ratio"] == 0.2
    assert settings.fill(Img2ImgRequest())["token_merging_ratio"] == 0.4
    with pytest.raises(InvalidRequest) as err:
        settings.updated({"deepcache_interval": "3"})
    assert err.value.field == "deepcache_interval"


def test_speedups_default_is_off():
    assert Speedups.checked({}) == Speedups()
    assert all(v is None for v in Speedups().infotext(hires=True).values())


def test_settings_reach_the_cells_of_a_script(samplers):
    from webui.pipeline.script_plan import ScriptCell, ScriptPlan

    cells = (ScriptCell(GenerationRequest(prompt="a")), ScriptCell(GenerationRequest(prompt="b", deepcache_interval=1)))
    request = GenerationRequest(script=ScriptPlan("prompts from file", cells, (0, 1)))
    filled = SpeedupSettings(token_merging_ratio=0.5, deepcache_interval=2).filled(request)
    resolved = resolve_request(filled, samplers, (64, 64))
    first, second = (cell.request.speedups for cell in resolved.script.cells)
    assert (first.token_merging_ratio, first.deepcache_interval) == (0.5, 2)
    assert (second.token_merging_ratio, second.deepcache_interval) == (0.5, 1)  # the cell's own value wins


def test_a_queued_job_keeps_its_speedups_through_the_queue_database(samplers):
    from webui.queue.codec import decode_request, encode_request

    resolved = resolve_request(GenerationRequest(token_merging_ratio=0.4, deepcache_interval=3), samplers, (64, 64))
    assert decode_request(encode_request(resolved), samplers).speedups == Speedups(0.4, 0.4, 3, 0)

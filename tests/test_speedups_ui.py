"""The Models tab's "Speed-ups that trade quality" accordion (issue 19) sets the app's settings, which the next
txt2img job takes (a real Gradio server on the fake service, driven through gradio_client)."""

from __future__ import annotations

import pytest

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from tests.support.browser import serving  # noqa: E402
from tests.support.fakes import FakeService  # noqa: E402

TXT2IMG = dict(
    model_name="tiny",
    prompt="a cat",
    negative_prompt="",
    sampler_name="Euler",
    scheduler="Automatic",
    steps=2,
    cfg_scale=7,
    width=64,
    height=64,
    seed=1,
    n_iter=1,
    batch_size=1,
)


def test_sliders_set_the_settings_the_next_job_takes():
    service = FakeService()
    try:
        with serving(service) as url:
            client = gradio_client.Client(url, verbose=False)
            assert client.predict(0.5, api_name="/set_token_merging_ratio") == 0.5
            assert client.predict(3, api_name="/set_deepcache_interval") == 3
            settings = service.speedup_settings
            assert (settings.token_merging_ratio, settings.deepcache_interval) == (0.5, 3)
            client.predict(**TXT2IMG, api_name="/txt2img")
            speedups = service.submitted[-1].request.speedups
            assert (speedups.token_merging_ratio, speedups.deepcache_interval) == (0.5, 3)
            with pytest.raises(Exception, match="whole number"):  # the service's own check, past the slider's range
                client.predict(2.5, api_name="/set_deepcache_interval")
            assert service.speedup_settings.deepcache_interval == 3
    finally:
        service.close()

"""The "Speed-ups that trade quality" accordion (issue 19): the app's token merging and DeepCache settings.

AUTOMATIC1111 has token merging under Settings > Optimizations; here the accordion sits in the Models tab.
Each slider changes the service's setting at once (as ``POST /sdapi/v1/options`` does); every job submitted
afterwards that does not set its own value (an API request's ``override_settings``) uses it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr

from webui.models.token_merging import MAX_RATIO
from webui.pipeline.errors import InvalidRequest
from webui.pipeline.speedups import MAX_DEEPCACHE_BRANCH, MAX_DEEPCACHE_INTERVAL
from webui.service import Service

EXPLANATION = (
    "Both are off by default and change the image a little; the infotext records them. "
    "**Token merging** (ToMe) merges similar image tokens before the self-attention of the largest UNet level: "
    "faster at large sizes, 0.3-0.5 is usual. **DeepCache** runs the whole UNet every N steps only and, "
    "in between, the shallow branch on the cached deep features (1 = off, 2-3 usual; a higher branch is "
    "closer to the exact image and saves less). Figures: README, Performance."
)


def build_speedups_panel(service: Service) -> dict[str, gr.Slider]:
    """Lay out the accordion (inside the caller's tab); returns the sliders by option name."""
    current = service.speedup_settings
    with gr.Accordion("Speed-ups that trade quality", open=False, elem_id="speedups"):
        gr.Markdown(EXPLANATION)
        with gr.Row():
            sliders = {
                name: gr.Slider(0.0, MAX_RATIO, value=getattr(current, name), step=0.05, label=label, elem_id=name)
                for name, label in (
                    ("token_merging_ratio", "Token merging ratio"),
                    ("token_merging_ratio_hr", "Token merging ratio for hires fix (0: the same)"),
                    ("token_merging_ratio_img2img", "Token merging ratio for img2img (0: the same)"),
                )
            }
        with gr.Row():
            sliders["deepcache_interval"] = gr.Slider(
                1, MAX_DEEPCACHE_INTERVAL, value=current.deepcache_interval, step=1, label="DeepCache interval"
            )
            sliders["deepcache_branch"] = gr.Slider(
                0, MAX_DEEPCACHE_BRANCH, value=current.deepcache_branch, step=1, label="DeepCache branch"
            )
    for name, slider in sliders.items():
        slider.change(setter(service, name), slider, slider, show_progress="hidden", api_name=f"set_{name}")
    return sliders


def setter(service: Service, name: str) -> Callable[[Any], Any]:
    """The change handler of one slider: set the option, answer with the value in force."""

    def change(value: Any) -> Any:
        try:
            service.set_speedup_options({name: value})
        except InvalidRequest as err:
            raise gr.Error(err.message) from None
        return getattr(service.speedup_settings, name)

    return change

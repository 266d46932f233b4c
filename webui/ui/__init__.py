"""The Gradio web UI: a thin adapter that turns widget values into typed requests for `WebUIService`.

`build_ui(service)` returns a `gr.Blocks`; `webui.server` launches it with `CSS` and `JS` (gradio 6 takes
page-level CSS/JS in `launch()`). Nothing here generates images:
the service queues requests (one at a time per device) and the UI shows their progress.
"""

from webui.ui.app import CSS, JS, build_ui

__all__ = ["CSS", "JS", "build_ui"]

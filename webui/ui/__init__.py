"""The Gradio web UI: a thin adapter that turns widget values into typed requests for `WebUIService`.

`build_ui(service)` returns a `gr.Blocks`; `webui.server` launches it. Nothing here generates images:
the service queues requests (one at a time per device) and the UI shows their progress.
"""

from webui.ui.app import CSS, build_ui

__all__ = ["CSS", "build_ui"]

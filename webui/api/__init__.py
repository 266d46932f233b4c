"""AUTOMATIC1111-compatible REST API (``/sdapi/v1/*``) on the same server as the Gradio UI.

``mount_api(app, service, api_auth=..., limits=...)`` adds the routes; see :mod:`webui.api.routes`.
"""

from webui.api.limits import ApiLimits
from webui.api.routes import mount_api

__all__ = ["ApiLimits", "mount_api"]

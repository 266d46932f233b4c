"""Hook specifications for sampler plugins (pluggy).

A sampler plugin is a module (or any object) with a function decorated with ``hookimpl``::

    from webui.sampling import Sampler, hookimpl

    @hookimpl
    def register_samplers(register):
        register(Sampler(name="My sampler", function=sample_mine))

This module holds only the markers and the spec stubs; the plugin manager lives in
:mod:`webui.sampling.registry`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from webui.sampling.types import Sampler

PROJECT_NAME = "webui.samplers"
"""pluggy project name; also the entry-point group that third-party packages use."""

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_samplers(register: Callable[[Sampler], None]) -> None:
    """Register samplers by calling ``register(sampler)`` once per :class:`~webui.sampling.Sampler`.

    Args:
        register: validates the sampler (type, name, options, schedules) and rejects names or
            aliases already taken, case-insensitively. A plugin whose call raises, or that
            registers anything invalid, is skipped as a whole with one warning naming it.
    """

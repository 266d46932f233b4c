"""Hook specifications for sampler plugins (pluggy).

A sampler plugin is a module (or any object) with a function decorated with ``hookimpl``::

    from webui.sampling import Sampler, hookimpl

    @hookimpl
    def register_samplers(register):
        register(Sampler(name="My sampler", function=sample_mine))

A plugin may also (or instead) register schedules, in the same way::

    @hookimpl
    def register_schedules(register):
        register(ScheduleType(name="My schedule", function=my_sigmas))

A plugin's schedules are registered before its samplers, so its samplers may name them.
This module holds only the markers and the spec stubs; the plugin manager lives in
:mod:`webui.sampling.registry`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from webui.sampling.schedules import ScheduleType
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


@hookspec
def register_schedules(register: Callable[[ScheduleType], None]) -> None:
    """Register schedules by calling ``register(schedule)`` once per :class:`~webui.sampling.ScheduleType`.

    Args:
        register: validates the schedule and rejects names or aliases already taken (the core
            schedules "Automatic", "Karras" and "Exponential" included), case-insensitively. As for
            samplers, a plugin whose call raises or registers anything invalid is skipped as a whole.
    """

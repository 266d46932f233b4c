"""Sampling: sampler plugins (pluggy), noise schedules, the eps->x0 denoiser and the ``sample()`` driver.

Samplers follow k-diffusion (Crowson, https://github.com/crowsonkb/k-diffusion): one plain function per
sampler working in sigma space on a denoiser ``model(x, sigma) -> x0``. Importing this package has no
side effects; :func:`create_sampler_registry` builds the plugin manager on demand.

A plugin needs only this package: ``Sampler``, ``hookimpl``, the ``Model`` and ``Generator`` types of a
sampler function's arguments, ``StepCallback`` and the helpers (``to_d``, ``randn_like``, ...).
"""

from webui.sampling.denoiser import DiscreteEpsDenoiser
from webui.sampling.driver import sample
from webui.sampling.helpers import ancestral_step, linear_multistep_coeff, randn_like, to_d
from webui.sampling.hookspecs import hookimpl
from webui.sampling.registry import SamplerRegistry, create_sampler_registry
from webui.sampling.schedules import (
    SCHEDULES,
    Schedule,
    ScheduleFunction,
    ScheduleType,
    build_schedule,
    normalize_schedule,
)
from webui.sampling.types import (
    Denoiser,
    Generator,
    Model,
    Sampler,
    SamplerFunction,
    SamplingCancelled,
    StepCallback,
    UnknownSamplerError,
)

__all__ = [
    "SCHEDULES",
    "Denoiser",
    "DiscreteEpsDenoiser",
    "Generator",
    "Model",
    "Sampler",
    "SamplerFunction",
    "SamplerRegistry",
    "SamplingCancelled",
    "Schedule",
    "ScheduleFunction",
    "ScheduleType",
    "StepCallback",
    "UnknownSamplerError",
    "ancestral_step",
    "build_schedule",
    "create_sampler_registry",
    "hookimpl",
    "linear_multistep_coeff",
    "normalize_schedule",
    "randn_like",
    "sample",
    "to_d",
]

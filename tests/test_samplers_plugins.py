"""The second hook: plugins register schedules like samplers, and a sampler may limit the schedules it runs with."""

from __future__ import annotations

import textwrap

import pytest
import torch

from webui.models.noise_schedule import scaled_linear_alphas_cumprod
from webui.pipeline.requests import GenerationRequest, InvalidRequest, resolve_request
from webui.sampling import DiscreteEpsDenoiser, create_sampler_registry, sample

PLUGIN = '''
import torch
from webui.sampling import Sampler, ScheduleType, hookimpl


def two_level(steps, table):
    """Half the steps at sigma_max, half at the middle, then 0 (an odd schedule nobody ships)."""
    top, mid = float(table[-1]), float(table[len(table) // 2])
    return torch.tensor([top] * (steps - steps // 2) + [mid] * (steps // 2) + [0.0])


def sample_x0(model, x, sigmas, *, generator, callback=None):
    for i in range(len(sigmas) - 1):
        x = model(x, sigmas[i]) + sigmas[i + 1] * (x - model(x, sigmas[i])) / sigmas[i]
    return x


@hookimpl
def register_schedules(register):
    register(ScheduleType(name="Two Level", function=two_level, aliases=("two_level",)))


@hookimpl
def register_samplers(register):
    register(Sampler(name="Picky", function=sample_x0, schedules=("two_level", "Karras")))
'''


def write(folder, name: str, text: str):
    (folder / f"{name}.py").write_text(textwrap.dedent(text))
    return folder


def toy_eps(x_in: torch.Tensor, t: torch.Tensor, step: int = 0) -> torch.Tensor:
    return torch.tanh(0.8 * x_in) * (0.5 + (t / 1000).reshape(-1, 1, 1, 1))


def test_a_plugin_registers_a_schedule_that_its_sampler_and_others_use(tmp_path):
    registry = create_sampler_registry(write(tmp_path, "two", PLUGIN))
    assert registry.warnings == []
    assert registry.schedule_names[-1] == "Two Level" and registry.schedule_sources["Two Level"].endswith("two.py")
    assert registry.normalize_schedule("TWO_LEVEL") == "Two Level"
    ac = scaled_linear_alphas_cumprod()
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    calls: list[float] = []

    def spy(x_in, t, step=0):
        calls.append(float(t[0]))
        return toy_eps(x_in, t)

    out = sample(
        registry.get("Euler"),
        DiscreteEpsDenoiser(spy, ac),
        x,
        steps=4,
        schedule=registry.schedule("two level"),
        alphas_cumprod=ac,
        generator=torch.Generator(),
    )
    assert torch.isfinite(out).all()
    assert calls == pytest.approx([999.0, 999.0, 499.5, 499.5], abs=0.6)  # t(sigma) of the plugin's sigmas


def test_a_sampler_limited_to_some_schedules_is_refused_the_others_with_the_list(tmp_path):
    registry = create_sampler_registry(write(tmp_path, "two", PLUGIN))
    picky = registry.get("picky")
    assert picky.supports("Two Level") and picky.supports("Karras") and not picky.supports("Automatic")
    ok = resolve_request(GenerationRequest(prompt="a", sampler_name="Picky", scheduler="two_level"), registry, (64, 64))
    assert ok.scheduler == "Two Level" and ok.schedule_type is registry.schedule("Two Level")
    assert resolve_request(GenerationRequest(scheduler="karras"), registry, (64, 64)).schedule_type == "Karras"
    with pytest.raises(InvalidRequest, match=r"sampler 'Picky' supports Two Level, Karras, not 'Automatic'"):
        resolve_request(GenerationRequest(prompt="a", sampler_name="Picky", scheduler="Automatic"), registry, (64, 64))
    with pytest.raises(ValueError, match="does not support the 'Exponential' schedule"):
        ac = scaled_linear_alphas_cumprod()
        sample(
            picky,
            DiscreteEpsDenoiser(toy_eps, ac),
            torch.zeros(1, 4, 8, 8),
            steps=3,
            schedule="Exponential",
            alphas_cumprod=ac,
            generator=torch.Generator(),
        )


@pytest.mark.parametrize(
    ("source", "warning"),
    [
        (
            "@hookimpl\ndef register_schedules(register):\n    register(ScheduleType(name='karras', function=f))\n",
            "schedule name 'karras' is registered already by 'the core'",
        ),
        (
            "@hookimpl\ndef register_schedules(register):\n    register(ScheduleType(name='Mine', function=f, "
            "aliases=('SGMUniform',)))\n",
            "schedule name 'SGMUniform' is registered already by 'samplers.schedules'",
        ),
        (
            "@hookimpl\ndef register_samplers(register):\n    register(Sampler(name='S', function=f, "
            "schedules=('cosine',)))\n",
            "sampler 'S': Unknown schedule 'cosine'; choose one of Automatic, Karras",
        ),
        (
            "@hookimpl\ndef register_schedules(register):\n    register(ScheduleType(name='Bad', function=None))\n",
            "register_schedules() raised ValueError: Schedule 'Bad': function must be callable, got None",
        ),
    ],
)
def test_bad_schedule_plugins_are_skipped_with_one_warning(tmp_path, source, warning):
    header = "from webui.sampling import Sampler, ScheduleType, hookimpl\n\ndef f(*a, **k):\n    return a[1]\n\n"
    registry = create_sampler_registry(write(tmp_path, "bad", header + source))
    assert len(registry.warnings) == 1 and warning in registry.warnings[0]
    assert "Mine" not in registry.schedule_names and "S" not in registry.names


def test_a_schedule_giving_bad_sigmas_fails_with_its_name(tmp_path):
    from webui.sampling import ScheduleType, build_schedule

    up = ScheduleType(name="Up", function=lambda steps, table: torch.linspace(0, 1, steps + 1))
    with pytest.raises(ValueError, match="Schedule 'Up' gave sigmas that are not finite, >= 0 and descending"):
        build_schedule(up, 4, scaled_linear_alphas_cumprod())
    short = ScheduleType(name="Short", function=lambda steps, table: torch.tensor([1.0]))
    with pytest.raises(ValueError, match=r"Schedule 'Short' gave \(1,\) sigmas"):
        build_schedule(short, 4, scaled_linear_alphas_cumprod())

"""Every registered sampler keeps the driver's contract: cancel within one model call, one callback per step,
the step index of each model call, finite results on every schedule, reproducible from its seed."""

from __future__ import annotations

import pytest
import torch

from webui.models.noise_schedule import scaled_linear_alphas_cumprod
from webui.sampling import DiscreteEpsDenoiser, SamplingCancelled, create_sampler_registry, sample

REGISTRY = create_sampler_registry()
NAMES = REGISTRY.names
AC = scaled_linear_alphas_cumprod()


def toy_eps(x_in: torch.Tensor, t: torch.Tensor, step: int = 0) -> torch.Tensor:
    tt = (t.to(x_in.dtype) / 1000).reshape(-1, 1, 1, 1)
    return torch.tanh(0.8 * x_in + 0.3 * torch.sin(5 * tt + x_in.roll(1, dims=-1))) * (0.5 + tt)


def run(name: str, eps_fn=toy_eps, seed: int = 0, **kw) -> torch.Tensor:
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    return sample(
        REGISTRY.get(name),
        DiscreteEpsDenoiser(eps_fn, AC),
        x,
        alphas_cumprod=AC,
        generator=torch.Generator().manual_seed(seed),
        **{"steps": 6, **kw},
    )


def test_the_samplers_a1111_users_name_are_all_registered():
    expected = {"DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ SDE", "DPM++ 2S a", "DPM++ 3M SDE", "DPM2", "DPM2 a"}
    expected |= {"UniPC", "LCM", "PLMS", "DEIS", "Restart"}
    assert expected <= set(NAMES)
    assert REGISTRY.get("k_dpmpp_2m_sde").name == "DPM++ 2M SDE" and REGISTRY.get("k_dpm_2_a").name == "DPM2 a"


@pytest.mark.parametrize("name", NAMES)
def test_cancel_stops_within_one_model_call(name):
    calls = []

    def counting(x_in, t, step=0):
        calls.append(t)
        return toy_eps(x_in, t)

    with pytest.raises(SamplingCancelled):
        run(name, counting, steps=10, cancel=lambda: len(calls) >= 3)
    assert len(calls) == 3


@pytest.mark.parametrize("name", NAMES)
def test_one_callback_per_step_and_each_call_knows_its_step(name):
    reported: list[dict] = []
    steps: list[tuple[int, int]] = []

    def eps(x_in, t, step):
        steps.append((step, len(reported)))
        return toy_eps(x_in, t)

    out = run(name, eps, callback=reported.append)
    assert [r["i"] for r in reported] == list(range(len(reported))) and {r["total"] for r in reported} <= {6, 7}
    if name != "DPM++ 2S a":  # its midpoint lies below sigma_down < sigma_next: the driver counts it a step later
        assert [given for given, _ in steps] == [before for _, before in steps]
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_result_on_every_schedule_it_supports(name):
    sampler = REGISTRY.get(name)
    for schedule in REGISTRY.schedule_names:
        if not sampler.supports(schedule):
            continue
        a = run(name, schedule=REGISTRY.schedule(schedule), steps=4, seed=3)
        assert torch.isfinite(a).all(), schedule
        assert torch.equal(a, run(name, schedule=REGISTRY.schedule(schedule), steps=4, seed=3)), schedule

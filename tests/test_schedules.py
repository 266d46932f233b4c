"""Noise schedules: pinned numbers and equality with diffusers' schedulers (SD 1.5 settings)."""

from __future__ import annotations

import pytest
import torch

from webui.models.noise_schedule import scaled_linear_alphas_cumprod
from webui.sampling import SCHEDULES, build_schedule, normalize_schedule
from webui.sampling.schedules import discrete_sigmas, sigma_to_t

diffusers = pytest.importorskip("diffusers")

SD15 = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


@pytest.fixture(scope="module")
def alphas_cumprod() -> torch.Tensor:
    return scaled_linear_alphas_cumprod()


def test_ddim_automatic_is_leading_with_offset_one_ending_at_alpha_zero(alphas_cumprod):
    s = build_schedule("Automatic", 20, alphas_cumprod, automatic="leading-offset")
    assert s.timesteps.tolist() == [float(t) for t in range(951, 0, -50)]
    # final alphas_cumprod[0] = 0.99915 -> sigma(t=0) = 0.0292, not 0
    assert 1 / (1 + s.sigmas[-1].item() ** 2) == pytest.approx(0.99915, abs=1e-6)
    assert s.sigmas[-1].item() == pytest.approx(0.029168, abs=1e-5)


def test_ddpm_automatic_is_leading_without_offset_ending_at_zero(alphas_cumprod):
    s = build_schedule("Automatic", 20, alphas_cumprod, automatic="leading")
    assert s.timesteps.tolist() == [float(t) for t in range(950, -1, -50)]
    assert s.sigmas[-1].item() == 0.0
    assert s.sigmas[-2].item() == pytest.approx(0.029168, abs=1e-5)


def test_euler_automatic_matches_published_sigmas(alphas_cumprod):
    s = build_schedule("automatic", 20, alphas_cumprod)
    assert s.timesteps[0].item() == 999.0 and s.timesteps[-1].item() == 0.0
    assert s.timesteps[1].item() == pytest.approx(946.42, abs=0.01)
    assert s.timesteps[-2].item() == pytest.approx(52.58, abs=0.01)
    assert s.sigmas[:3].tolist() == pytest.approx([14.6146, 10.7469, 8.0815], abs=1e-4)
    assert s.sigmas[-3:].tolist() == pytest.approx([0.2322, 0.0292, 0.0], abs=1e-4)


def test_karras_follows_the_rho_formula_and_appends_zero(alphas_cumprod):
    s = build_schedule("Karras", 10, alphas_cumprod)
    table = discrete_sigmas(alphas_cumprod).double()
    smin, smax, rho = table[0].item(), table[-1].item(), 7.0
    expected = [(smax ** (1 / rho) + i / 9 * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho for i in range(10)]
    assert s.sigmas[:-1].tolist() == pytest.approx(expected, rel=1e-6)
    assert s.sigmas[-1].item() == 0.0


def test_exponential_is_log_linear_and_appends_zero(alphas_cumprod):
    s = build_schedule("exponential", 5, alphas_cumprod)
    log = s.sigmas[:-1].double().log()
    assert torch.allclose(log.diff(), log.diff()[0].expand(4), atol=1e-6)
    assert s.sigmas[0].item() == pytest.approx(14.6146, abs=1e-4)
    assert s.sigmas[-2].item() == pytest.approx(0.0292, abs=1e-4)
    assert s.sigmas[-1].item() == 0.0


def test_schedule_names_are_case_insensitive_and_unknown_ones_list_the_choices():
    assert [normalize_schedule(n) for n in ("automatic", "KARRAS", " Exponential ")] == list(SCHEDULES)
    with pytest.raises(ValueError, match="Automatic, Karras, Exponential"):
        normalize_schedule("polyexponential")


def test_bad_step_counts_are_rejected(alphas_cumprod):
    for steps in (0, -3, 2.5):
        with pytest.raises(ValueError, match="steps"):
            build_schedule("Automatic", steps, alphas_cumprod)


def test_sigma_to_t_inverts_the_discrete_sigmas(alphas_cumprod):
    table = discrete_sigmas(alphas_cumprod)
    t = torch.tensor([0, 1, 500, 998, 999])
    assert torch.allclose(sigma_to_t(table[t], table.log()), t.double(), atol=1e-4)


def _diffusers(name: str, **config):
    if name == "LMSDiscreteScheduler":
        pytest.importorskip("scipy", reason="diffusers' LMS scheduler needs scipy")
    cls = getattr(diffusers, name)
    defaults = dict(SD15)
    if name in ("DDIMScheduler", "DDPMScheduler"):
        defaults.update(clip_sample=False, set_alpha_to_one=False)
        defaults.pop("set_alpha_to_one") if name == "DDPMScheduler" else None
    return cls(**{**defaults, **config})


CASES = [
    # (diffusers scheduler, its config, our schedule, automatic, round karras timesteps)
    ("DDIMScheduler", {"steps_offset": 1}, "Automatic", "leading-offset", False),
    ("DDPMScheduler", {"steps_offset": 0}, "Automatic", "leading", False),
    ("EulerDiscreteScheduler", {}, "Automatic", "linspace", False),
    ("EulerDiscreteScheduler", {"use_karras_sigmas": True}, "Karras", "linspace", False),
    ("EulerDiscreteScheduler", {"use_exponential_sigmas": True}, "Exponential", "linspace", False),
    ("EulerAncestralDiscreteScheduler", {}, "Automatic", "linspace", False),
    ("HeunDiscreteScheduler", {}, "Automatic", "linspace", False),
    ("HeunDiscreteScheduler", {"use_karras_sigmas": True}, "Karras", "linspace", False),
    ("LMSDiscreteScheduler", {}, "Automatic", "linspace", False),
    ("LMSDiscreteScheduler", {"use_karras_sigmas": True}, "Karras", "linspace", False),
    ("DPMSolverMultistepScheduler", {}, "Automatic", "linspace-integer", False),
    ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, "Karras", "linspace-integer", True),
]


@pytest.mark.parametrize("steps", [20, 7])
@pytest.mark.parametrize(("scheduler", "config", "schedule", "automatic", "round_karras"), CASES)
def test_timesteps_and_sigmas_equal_diffusers(
    alphas_cumprod, steps, scheduler, config, schedule, automatic, round_karras
):
    ref = _diffusers(scheduler, **config)
    ref.set_timesteps(steps)
    ours = build_schedule(schedule, steps, alphas_cumprod, automatic=automatic, round_karras_timesteps=round_karras)
    timesteps = ref.timesteps.to(torch.float32)
    if scheduler == "HeunDiscreteScheduler":  # Heun repeats each timestep after the first for its corrector
        timesteps = torch.cat([timesteps[:1], timesteps[1::2]])
    torch.testing.assert_close(ours.timesteps, timesteps, rtol=1e-6, atol=1e-4)
    if hasattr(ref, "sigmas"):
        sigmas = ref.sigmas.to(torch.float32)
        if scheduler == "HeunDiscreteScheduler":
            sigmas = torch.cat([sigmas[:1], sigmas[1:-1:2], sigmas[-1:]])
        torch.testing.assert_close(ours.sigmas, sigmas, rtol=1e-6, atol=1e-7)
    else:  # DDIM / DDPM: sigma of each timestep, then of the final alpha
        abar = ref.alphas_cumprod
        final = ref.final_alpha_cumprod if scheduler == "DDIMScheduler" else torch.tensor(1.0)
        abars = torch.cat([abar[ref.timesteps], final.reshape(1)])
        torch.testing.assert_close(ours.sigmas, ((1 - abars) / abars) ** 0.5, rtol=1e-6, atol=1e-7)

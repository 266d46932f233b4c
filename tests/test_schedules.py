"""Noise schedules: pinned numbers and equality with diffusers' schedulers (SD 1.5 settings)."""

from __future__ import annotations

import math

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


# ---------------------------------------------------------------- schedule plugins (AUTOMATIC1111 1.10's types)


@pytest.fixture(scope="module")
def registry():
    from webui.sampling import create_sampler_registry

    return create_sampler_registry()


class KDiscrete:
    """k-diffusion's ``DiscreteSchedule`` (k_diffusion/external.py) as AUTOMATIC1111 wraps SD 1.x, written from
    its source: the reference of the schedules that AUTOMATIC1111's ``sd_schedulers.py`` builds on it."""

    def __init__(self, alphas_cumprod: torch.Tensor):
        self.sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.log_sigmas = self.sigmas.log()

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        log_sigma = sigma.log()
        dists = log_sigma - self.log_sigmas[:, None]
        low_idx = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=self.log_sigmas.shape[0] - 2)
        low, high = self.log_sigmas[low_idx], self.log_sigmas[low_idx + 1]
        w = ((low - log_sigma) / (low - high)).clamp(0, 1)
        return ((1 - w) * low_idx + w * (low_idx + 1)).view(sigma.shape)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = t.float()
        low_idx, high_idx, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low_idx] + w * self.log_sigmas[high_idx]).exp()


def a1111_sigmas(name: str, n: int, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """AUTOMATIC1111 1.10 ``modules/sd_schedulers.py`` (and k-diffusion's ``get_sigmas_*``), formula by formula."""
    import numpy as np

    m = KDiscrete(alphas_cumprod.float())
    sigma_min, sigma_max = m.sigmas[0].item(), m.sigmas[-1].item()
    zero = [0.0]
    if name == "Uniform":
        return torch.cat([m.t_to_sigma(torch.linspace(len(m.sigmas) - 1, 0, n)), torch.zeros(1)])
    if name in ("Normal", "SGM Uniform"):
        start, end = m.sigma_to_t(torch.tensor(sigma_max)), m.sigma_to_t(torch.tensor(sigma_min))
        ts = torch.linspace(start, end, n + 1)[:-1] if name == "SGM Uniform" else torch.linspace(start, end, n)
        return torch.FloatTensor([float(m.t_to_sigma(t)) for t in ts] + zero)
    if name == "Polyexponential":
        ramp = torch.linspace(1, 0, n) ** 1.0
        return torch.cat(
            [torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min)), torch.zeros(1)]
        )
    if name == "KL Optimal":
        alpha_min, alpha_max = torch.arctan(torch.tensor(sigma_min)), torch.arctan(torch.tensor(sigma_max))
        i = torch.arange(n + 1)
        return torch.tan(i / n * alpha_min + (1.0 - i / n) * alpha_max)
    if name == "Align Your Steps":
        published = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029]
        if n == len(published):
            return torch.FloatTensor(published + zero)
        xs, ys = np.linspace(0, 1, len(published)), np.log(published[::-1])
        return torch.FloatTensor(np.append(np.exp(np.interp(np.linspace(0, 1, n), xs, ys))[::-1].copy(), zero))
    if name == "Simple":
        ss = len(m.sigmas) / n
        return torch.FloatTensor([float(m.sigmas[-(1 + int(x * ss))]) for x in range(n)] + zero)
    if name == "DDIM":
        ss, sigs, x = max(len(m.sigmas) // n, 1), [], 1
        while x < len(m.sigmas):
            sigs.append(float(m.sigmas[x]))
            x += ss
        return torch.FloatTensor(sigs[::-1] + zero)
    if name == "Beta":
        stats = pytest.importorskip("scipy.stats")
        ppf = [stats.beta.ppf(x, 0.6, 0.6) for x in 1 - np.linspace(0, 1, n)]
        return torch.FloatTensor([sigma_min + x * (sigma_max - sigma_min) for x in ppf] + zero)
    raise AssertionError(name)


NEW_SCHEDULES = [
    "Uniform",
    "Polyexponential",
    "SGM Uniform",
    "KL Optimal",
    "Align Your Steps",
    "Simple",
    "Normal",
    "DDIM",
    "Beta",
]


def test_the_schedule_plugin_registers_a1111s_schedule_types(registry):
    assert registry.schedule_names == ["Automatic", "Karras", "Exponential", *NEW_SCHEDULES]
    assert registry.schedule_sources["Beta"] == "samplers.schedules"
    assert registry.normalize_schedule("sgm_uniform") == registry.normalize_schedule("SGMUniform") == "SGM Uniform"
    assert registry.normalize_schedule(" align your steps ") == "Align Your Steps"
    assert registry.schedule("karras") == "Karras"
    with pytest.raises(ValueError, match="Unknown schedule 'cosine'; choose one of Automatic, .*, Beta"):
        registry.schedule("cosine")


@pytest.mark.parametrize("steps", [10, 11, 7, 30])
@pytest.mark.parametrize("name", NEW_SCHEDULES)
def test_new_schedules_equal_a1111_formulas(alphas_cumprod, registry, name, steps):
    ours = build_schedule(registry.schedule(name), steps, alphas_cumprod)
    expected = a1111_sigmas(name, steps, alphas_cumprod)
    torch.testing.assert_close(ours.sigmas, expected, rtol=2e-6, atol=2e-6)
    # the UNet sees what k-diffusion's wrapper feeds it: t(sigma), log-sigma interpolated
    t = KDiscrete(alphas_cumprod.float()).sigma_to_t(expected[:-1])
    torch.testing.assert_close(ours.timesteps, t, rtol=0, atol=2e-3)


def test_beta_equals_diffusers_beta_sigmas(alphas_cumprod, registry):
    pytest.importorskip("scipy")
    ref = _diffusers("EulerDiscreteScheduler", use_beta_sigmas=True)
    ref.set_timesteps(12)
    ours = build_schedule(registry.schedule("Beta"), 12, alphas_cumprod)
    torch.testing.assert_close(ours.sigmas, ref.sigmas.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.timesteps, ref.timesteps.float(), rtol=0, atol=1e-3)


def test_sgm_uniform_is_diffusers_trailing_up_to_rounding_the_timesteps(alphas_cumprod, registry):
    ref = _diffusers("EulerDiscreteScheduler", timestep_spacing="trailing")
    ref.set_timesteps(10)
    ours = build_schedule(registry.schedule("SGM Uniform"), 10, alphas_cumprod)
    assert ref.timesteps.tolist() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert (ours.timesteps - ref.timesteps.float()).abs().max() <= 0.91  # 999, 899.1, 799.2, ...: unrounded


def test_align_your_steps_at_its_native_eleven_steps_is_nvidias_published_list(alphas_cumprod, registry):
    """The published SD 1.5 sigmas sit on diffusers' Align-Your-Steps timesteps (999, 850, ..., 24), +-1."""
    from diffusers.schedulers import AysSchedules

    ours = build_schedule(registry.schedule("align_your_steps"), 11, alphas_cumprod)
    assert ours.sigmas.tolist()[:2] == pytest.approx([14.615, 6.475], abs=1e-5)
    published_t = torch.tensor(AysSchedules["StableDiffusionTimesteps"], dtype=torch.float32)
    assert (ours.timesteps[:10] - published_t).abs().max() < 1.5


def test_kl_optimal_ends_at_sigma_min_like_a1111_and_ddim_may_add_steps(alphas_cumprod, registry):
    kl = build_schedule(registry.schedule("KL Optimal"), 8, alphas_cumprod)
    assert kl.sigmas[-1].item() == pytest.approx(0.029168, abs=1e-5) and kl.steps == 8
    ddim = build_schedule(registry.schedule("DDIM"), 30, alphas_cumprod)
    assert ddim.steps == 31 and ddim.timesteps[:2].tolist() == [991.0, 958.0] and ddim.timesteps[-1].item() == 1.0


def test_beta_ppf_equals_scipy():
    stats = pytest.importorskip("scipy.stats")
    from samplers.schedules import beta_ppf

    for p in (0.0, 1e-6, 0.1, 0.37, 0.5, 0.9, 0.999999, 1.0):
        for a, b in ((0.6, 0.6), (2.0, 0.5), (1.0, 1.0)):
            assert beta_ppf(p, a, b) == pytest.approx(stats.beta.ppf(p, a, b), abs=1e-12)

"""Built-in samplers through ``sample()``: parity with diffusers' schedulers, noise, cancel, callbacks, img2img.

The reference loops drive diffusers' schedulers by hand (``set_timesteps``, ``scale_model_input``,
``step``) with the very same eps model, on a deterministic toy model and on a tiny random-weight
UNet (``webui.models.unet.UNetModel``).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from webui.models.noise_schedule import scaled_linear_alphas_cumprod
from webui.models.unet import UNetConfig, UNetModel
from webui.sampling import (
    DiscreteEpsDenoiser,
    SamplingCancelled,
    create_sampler_registry,
    randn_like,
    sample,
)

diffusers = pytest.importorskip("diffusers")

EpsFn = Callable[..., torch.Tensor]  # eps_fn(x_in, t[, step]): diffusers' loop passes no step
SD15 = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
SHAPE = (1, 4, 8, 8)


def toy_eps(x_in: torch.Tensor, t: torch.Tensor, step: int = 0) -> torch.Tensor:
    """A smooth, nonlinear, timestep-dependent stand-in for a UNet."""
    tt = (t.to(x_in.dtype) / 1000).reshape(-1, 1, 1, 1)
    return torch.tanh(0.8 * x_in + 0.3 * torch.sin(5 * tt + x_in.roll(1, dims=-1))) * (0.5 + tt)


@pytest.fixture(scope="module")
def alphas_cumprod() -> torch.Tensor:
    return scaled_linear_alphas_cumprod()


@pytest.fixture(scope="module")
def registry():
    return create_sampler_registry()


@pytest.fixture(scope="module")
def tiny_unet_eps() -> EpsFn:
    config = UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, num_heads=2, context_dim=16)
    unet = UNetModel(config).eval()
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for p in unet.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    context = torch.randn(1, 4, 16, generator=g)

    @torch.no_grad()
    def eps(x_in: torch.Tensor, t: torch.Tensor, step: int = 0) -> torch.Tensor:
        return unet(x_in, t, context.expand(x_in.shape[0], -1, -1))

    return eps


def noise(seed: int = 0, shape: tuple[int, ...] = SHAPE) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def reference(scheduler, eps_fn: EpsFn, x: torch.Tensor, steps: int, seed: int | None = None, **step_kwargs):
    """diffusers' txt2img denoising loop (StableDiffusionPipeline without guidance)."""
    scheduler.set_timesteps(steps)
    x = x * scheduler.init_noise_sigma
    if seed is not None:
        step_kwargs["generator"] = torch.Generator().manual_seed(seed)
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(x, t)
        eps = eps_fn(x_in, t.reshape(1).expand(x.shape[0]))
        x = scheduler.step(eps, t, x, **step_kwargs).prev_sample
    return x


def ours(registry, alphas_cumprod, name: str, eps_fn: EpsFn, x: torch.Tensor, steps: int, seed: int = 0, **kw):
    denoiser = DiscreteEpsDenoiser(eps_fn, alphas_cumprod)
    generator = torch.Generator().manual_seed(seed)
    return sample(
        registry.get(name), denoiser, x, steps=steps, alphas_cumprod=alphas_cumprod, generator=generator, **kw
    )


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def scheduler(name: str, **config):
    if name == "LMSDiscreteScheduler":
        pytest.importorskip("scipy", reason="diffusers' LMS scheduler needs scipy")
    defaults = dict(SD15)
    if name == "DDIMScheduler":
        defaults.update(clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    if name == "DDPMScheduler":
        defaults.update(clip_sample=False, steps_offset=0)
    return getattr(diffusers, name)(**{**defaults, **config})


DETERMINISTIC = [
    ("DDIM", "Automatic", "DDIMScheduler", {}),
    ("Euler", "Automatic", "EulerDiscreteScheduler", {}),
    ("Euler", "Karras", "EulerDiscreteScheduler", {"use_karras_sigmas": True}),
    ("Euler", "Exponential", "EulerDiscreteScheduler", {"use_exponential_sigmas": True}),
    ("Heun", "Automatic", "HeunDiscreteScheduler", {}),
    ("Heun", "Karras", "HeunDiscreteScheduler", {"use_karras_sigmas": True}),
    ("DPM++ 2M", "Automatic", "DPMSolverMultistepScheduler", {}),
    ("DPM++ 2M", "Karras", "DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    ("LMS", "Automatic", "LMSDiscreteScheduler", {}),
    ("LMS", "Karras", "LMSDiscreteScheduler", {"use_karras_sigmas": True}),
]
STOCHASTIC = [
    ("DDPM", "DDPMScheduler", {}),
    ("Euler a", "EulerAncestralDiscreteScheduler", {}),
]


@pytest.mark.parametrize(("name", "schedule", "ref_name", "config"), DETERMINISTIC)
def test_deterministic_samplers_equal_diffusers_on_toy_model(
    registry, alphas_cumprod, name, schedule, ref_name, config
):
    x = noise(1)
    expected = reference(scheduler(ref_name, **config), toy_eps, x, steps=20)
    got = ours(registry, alphas_cumprod, name, toy_eps, x, steps=20, schedule=schedule)
    assert rel_err(got, expected) < 1e-4


@pytest.mark.parametrize(("name", "ref_name", "config"), STOCHASTIC)
def test_stochastic_samplers_equal_diffusers_given_the_same_noise(registry, alphas_cumprod, name, ref_name, config):
    x = noise(2)
    expected = reference(scheduler(ref_name, **config), toy_eps, x, steps=20, seed=7)
    got = ours(registry, alphas_cumprod, name, toy_eps, x, steps=20, seed=7)
    assert rel_err(got, expected) < 1e-4
    assert torch.equal(got, ours(registry, alphas_cumprod, name, toy_eps, x, steps=20, seed=7))
    assert rel_err(ours(registry, alphas_cumprod, name, toy_eps, x, steps=20, seed=8), got) > 1e-2


def test_ddim_with_eta_equals_diffusers_ddim_with_eta(registry, alphas_cumprod):
    x = noise(3)
    expected = reference(scheduler("DDIMScheduler"), toy_eps, x, steps=15, seed=5, eta=0.6)
    got = ours(registry, alphas_cumprod, "DDIM", toy_eps, x, steps=15, seed=5, options={"eta": 0.6})
    assert rel_err(got, expected) < 1e-4


TINY_UNET_CASES = [
    ("DDIM", "Automatic", "DDIMScheduler", {}, None),
    ("DDPM", "Automatic", "DDPMScheduler", {}, 11),
    ("Euler", "Automatic", "EulerDiscreteScheduler", {}, None),
    ("Euler", "Karras", "EulerDiscreteScheduler", {"use_karras_sigmas": True}, None),
    ("Euler a", "Automatic", "EulerAncestralDiscreteScheduler", {}, 11),
    ("Heun", "Automatic", "HeunDiscreteScheduler", {}, None),
    ("DPM++ 2M", "Automatic", "DPMSolverMultistepScheduler", {}, None),
    ("DPM++ 2M", "Karras", "DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, None),
    ("LMS", "Automatic", "LMSDiscreteScheduler", {}, None),
]


@pytest.mark.parametrize(("name", "schedule", "ref_name", "config", "seed"), TINY_UNET_CASES)
def test_samplers_equal_diffusers_on_a_tiny_real_unet(
    registry, alphas_cumprod, tiny_unet_eps, name, schedule, ref_name, config, seed
):
    x = noise(4)
    expected = reference(scheduler(ref_name, **config), tiny_unet_eps, x, steps=10, seed=seed)
    got = ours(registry, alphas_cumprod, name, tiny_unet_eps, x, steps=10, seed=seed or 0, schedule=schedule)
    assert rel_err(got, expected) < 1e-4


def test_unet_sees_diffusers_timesteps_not_a_reconstruction(registry, alphas_cumprod):
    seen: list[float] = []

    def spy(x_in: torch.Tensor, t: torch.Tensor, step: int = 0) -> torch.Tensor:
        seen.append(t[0].item())
        return toy_eps(x_in, t)

    ours(registry, alphas_cumprod, "DPM++ 2M", spy, noise(), steps=20, schedule="Karras")
    ref = scheduler("DPMSolverMultistepScheduler", use_karras_sigmas=True)
    ref.set_timesteps(20)
    assert seen == ref.timesteps.float().tolist()  # integers, exactly
    seen.clear()
    ours(registry, alphas_cumprod, "Heun", spy, noise(), steps=5)
    ref = scheduler("HeunDiscreteScheduler")
    ref.set_timesteps(5)
    assert seen == ref.timesteps.tolist()  # 999.0, 749.25, 749.25, ...: fractional, corrector included


@pytest.mark.parametrize(("name", "ref_name"), [("Euler", "EulerDiscreteScheduler"), ("DDIM", "DDIMScheduler")])
def test_img2img_runs_the_last_steps_like_diffusers(registry, alphas_cumprod, name, ref_name):
    init, x = noise(5) * 0.5, noise(6)
    steps, strength = 10, 0.55  # int(5.5) = 5 steps
    ref = scheduler(ref_name)
    ref.set_timesteps(steps)
    timesteps = ref.timesteps[steps - 5 :]
    if hasattr(ref, "set_begin_index"):
        ref.set_begin_index(steps - 5)
    latent = ref.add_noise(init, x, timesteps[:1])
    for t in timesteps:
        latent = ref.step(toy_eps(ref.scale_model_input(latent, t), t.reshape(1)), t, latent).prev_sample
    infos: list[dict] = []
    got = ours(
        registry,
        alphas_cumprod,
        name,
        toy_eps,
        x,
        steps=steps,
        init_latent=init,
        denoising_strength=strength,
        callback=infos.append,
    )
    assert rel_err(got, latent) < 1e-4
    assert [(i["i"], i["total"]) for i in infos] == [(i, 5) for i in range(5)]


def test_callback_gets_plain_dicts_for_every_step(registry, alphas_cumprod):
    infos: list[dict] = []
    x = noise()
    ours(registry, alphas_cumprod, "Heun", toy_eps, x, steps=4, callback=infos.append)
    assert [i["i"] for i in infos] == [0, 1, 2, 3] and {i["total"] for i in infos} == {4}
    assert set(infos[0]) >= {"i", "total", "x", "denoised", "sigma"}
    assert infos[0]["sigma"] == pytest.approx(14.6146, abs=1e-4)
    assert infos[0]["denoised"].shape == x.shape


@pytest.mark.parametrize(
    ("name", "options", "img2img"),
    [(name, {}, False) for name in ("DDIM", "DDPM", "Euler", "Euler a", "Heun", "DPM++ 2M", "LMS")]
    + [("Euler", {"s_churn": 1.0}, False), ("Heun", {"s_churn": 1.0}, False), ("Euler", {}, True)],
)
def test_every_model_call_gets_the_step_its_sigma_belongs_to(registry, alphas_cumprod, name, options, img2img):
    """The step that picks prompt-edited contexts comes from the model wrapper; it equals the number of
    steps the sampler reported before the call (what the progress callback used to drive)."""
    reported: list[dict] = []
    steps: list[tuple[int, int]] = []

    def eps(x_in: torch.Tensor, t: torch.Tensor, step: int) -> torch.Tensor:
        steps.append((step, len(reported)))
        return toy_eps(x_in, t)

    start = {"init_latent": noise(3), "denoising_strength": 0.5} if img2img else {}
    ours(registry, alphas_cumprod, name, eps, noise(), steps=6, callback=reported.append, options=options, **start)
    assert [given for given, _ in steps] == [before for _, before in steps]
    assert steps[0][0] == 0 and steps[-1][0] == len(reported) - 1


def test_step_for_counts_the_schedule_sigmas_above_a_sigma(alphas_cumprod):
    from webui.sampling.driver import ScheduledModel
    from webui.sampling.schedules import build_schedule

    schedule = build_schedule("Karras", 4, alphas_cumprod)
    model = ScheduledModel(DiscreteEpsDenoiser(toy_eps, alphas_cumprod), schedule)
    sigmas = schedule.sigmas.tolist()
    assert [model.step_for(s) for s in sigmas] == [0, 1, 2, 3, 4]
    assert model.step_for(sigmas[1] * 1.01) == 1  # Euler's churned sigma_hat belongs to its step
    assert model.step_for((sigmas[1] * sigmas[2]) ** 0.5) == 2  # a midpoint counts with the step after it
    assert model.step_for(torch.tensor([sigmas[2], sigmas[2]])) == 2


@pytest.mark.parametrize("name", ["DDIM", "DDPM", "Euler", "Euler a", "Heun", "DPM++ 2M", "LMS"])
def test_cancel_stops_every_sampler_within_one_model_call(registry, alphas_cumprod, name):
    calls = []

    def counting(x_in: torch.Tensor, t: torch.Tensor, step: int = 0) -> torch.Tensor:
        calls.append(t)
        return toy_eps(x_in, t)

    with pytest.raises(SamplingCancelled):
        ours(registry, alphas_cumprod, name, counting, noise(), steps=10, cancel=lambda: len(calls) >= 3)
    assert len(calls) == 3


def test_batch_item_equals_single_run_with_its_own_generator(registry, alphas_cumprod):
    denoiser = DiscreteEpsDenoiser(toy_eps, alphas_cumprod)
    sampler = registry.get("euler a")
    x = torch.cat([noise(10), noise(11)])
    batch = sample(
        sampler,
        denoiser,
        x,
        steps=6,
        alphas_cumprod=alphas_cumprod,
        generator=[torch.Generator().manual_seed(100), torch.Generator().manual_seed(101)],
    )
    single = sample(
        sampler,
        denoiser,
        noise(11),
        steps=6,
        alphas_cumprod=alphas_cumprod,
        generator=torch.Generator().manual_seed(101),
    )
    assert rel_err(batch[1:], single) < 1e-5


def test_randn_like_draws_on_the_generator_per_item():
    x = torch.zeros(2, 3, 4, 4, dtype=torch.float64)
    n = randn_like(x, [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)])
    assert n.dtype == torch.float64 and n.shape == x.shape
    assert torch.equal(n[1].float(), torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(2)))
    with pytest.raises(ValueError, match="2 generators for a batch of 3"):
        randn_like(torch.zeros(3, 1), [torch.Generator(), torch.Generator()])


def test_options_unknown_to_the_sampler_and_none_values_are_ignored(registry, alphas_cumprod):
    x = noise()
    plain = ours(registry, alphas_cumprod, "Euler", toy_eps, x, steps=5)
    assert torch.equal(plain, ours(registry, alphas_cumprod, "Euler", toy_eps, x, steps=5, options={"eta": 0.3}))
    ddim = ours(registry, alphas_cumprod, "DDIM", toy_eps, x, steps=5, options={"eta": None})
    assert torch.equal(ddim, ours(registry, alphas_cumprod, "DDIM", toy_eps, x, steps=5))


def test_option_values_take_the_type_of_their_default(registry):
    from webui.sampling.driver import sampler_options

    assert sampler_options(registry.get("LMS"), {"order": 3.0}) == {"order": 3}
    assert sampler_options(registry.get("DDIM"), {"eta": "0.5"}) == {"eta": 0.5}
    for bad in ({"order": 2.5}, {"order": "four"}, {"order": True}):
        with pytest.raises(ValueError, match="option 'order' must be of type int"):
            sampler_options(registry.get("LMS"), bad)


def test_unknown_schedule_and_bad_strength_raise_value_errors(registry, alphas_cumprod):
    with pytest.raises(ValueError, match="Automatic, Karras, Exponential"):
        ours(registry, alphas_cumprod, "Euler", toy_eps, noise(), steps=5, schedule="cosine")
    with pytest.raises(ValueError, match="denoising_strength"):
        ours(registry, alphas_cumprod, "Euler", toy_eps, noise(), steps=5, init_latent=noise(), denoising_strength=2)


def test_ddim_equals_euler_on_the_same_sigmas(registry, alphas_cumprod):
    """DDIM (eta 0) is an Euler step in sigma space: same schedule, same result (Karras ends at 0 for both)."""
    x = noise(9)
    ddim = ours(registry, alphas_cumprod, "DDIM", toy_eps, x, steps=8, schedule="Karras")
    sigma_max = 14.614647
    euler = ours(
        registry,
        alphas_cumprod,
        "Euler",
        toy_eps,
        x * ((sigma_max**2 + 1) ** 0.5 / sigma_max),
        steps=8,
        schedule="Karras",
    )
    assert rel_err(ddim, euler) < 1e-5

"""DeepCache (issue 19) equals the ``DeepCache`` package's ``DeepCacheSDHelper`` on a diffusers UNet.

A UNet with two resblocks per level (SD 1.x's layout, which the package's branch numbering assumes) gets
random weights; the diffusers copy gets them through diffusers' own key converter. Both are called on the
same latents at DDIM's timesteps, one call per step as a sampler makes them.
"""

from __future__ import annotations

import types

import pytest
import torch

from webui.models.deep_cache import DeepCache, deep_cache
from webui.models.unet import UNetConfig, UNetModel

DeepCacheSDHelper = pytest.importorskip("DeepCache").DeepCacheSDHelper
diffusers = pytest.importorskip("diffusers")

STEPS = 7


@pytest.fixture(scope="module")
def unets(tiny_components):
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    from webui.models.checkpoint import single_file_state_dict

    config = UNetConfig(
        model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=2, attention_resolutions=(1, 2), context_dim=128
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        ours = UNetModel(config).eval()
        with torch.no_grad():
            for p in ours.parameters():
                p.add_(torch.randn_like(p) * 0.02)
    ref = diffusers.UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=128,
        attention_head_dim=8,
    )
    state = single_file_state_dict(ours, tiny_components.vae, tiny_components.text_model)
    ref.load_state_dict(convert_ldm_unet_checkpoint(state, dict(ref.config)))
    return ours, ref.eval()


def inputs(shape=(2, 4, 16, 16)):
    g = torch.Generator().manual_seed(3)
    latents = [torch.randn(*shape, generator=g) for _ in range(STEPS)]
    return latents, torch.randn(shape[0], 77, 128, generator=g)


def timesteps():
    scheduler = diffusers.DDIMScheduler(steps_offset=1, set_alpha_to_one=False)
    scheduler.set_timesteps(STEPS)
    return scheduler


def run_ours(unet, settings, latents, context, ts):
    with torch.no_grad(), deep_cache(unet, settings) as cache:
        out = [unet(x, t.float().expand(x.shape[0]), context) for x, t in zip(latents, ts, strict=True)]
    return out, cache


@pytest.mark.parametrize(("interval", "branch"), [(2, 0), (3, 0), (3, 1), (2, 4), (3, 8)])
def test_equals_deepcache_package(unets, interval, branch):
    ours, ref = unets
    latents, context = inputs()
    scheduler = timesteps()
    helper = DeepCacheSDHelper(pipe=types.SimpleNamespace(unet=ref, scheduler=scheduler))
    helper.set_params(cache_interval=interval, cache_branch_id=branch)
    helper.enable()
    try:
        with torch.no_grad():
            expected = [
                ref(x, t, encoder_hidden_states=context).sample
                for x, t in zip(latents, scheduler.timesteps, strict=True)
            ]
    finally:
        helper.disable()
    got, cache = run_ours(ours, DeepCache(interval, branch), latents, context, scheduler.timesteps)
    with torch.no_grad():
        exact = [ours(x, t.float().expand(2), context) for x, t in zip(latents, scheduler.timesteps, strict=True)]
    for i in range(STEPS):
        assert (got[i] - expected[i]).abs().max() < 1e-4, f"call {i}"
        if i % interval == 0:
            assert torch.equal(got[i], exact[i]), f"full call {i} is not the exact UNet"
        else:
            assert (got[i] - exact[i]).abs().max() > 1e-4, f"cached call {i} equals the exact UNet: nothing cached"
    assert (cache.full_calls, cache.cached_calls) == (
        len(range(0, STEPS, interval)),
        STEPS - len(range(0, STEPS, interval)),
    )


def count_block_calls(unet):
    counts: dict[str, int] = {}
    handles = []
    for stage in ("input_blocks", "output_blocks"):
        for i, block in enumerate(getattr(unet, stage)):
            name = f"{stage}.{i}"
            handles.append(block.register_forward_hook(lambda *a, n=name: counts.__setitem__(n, counts.get(n, 0) + 1)))
    handles.append(
        unet.middle_block.register_forward_hook(lambda *a: counts.__setitem__("middle", counts.get("middle", 0) + 1))
    )
    return counts, handles


def test_cached_calls_run_only_the_shallow_branch(unets):
    ours, _ = unets
    latents, context = inputs()
    counts, handles = count_block_calls(ours)
    try:
        run_ours(ours, DeepCache(3, 1), latents, context, timesteps().timesteps)
    finally:
        for h in handles:
            h.remove()
    full = 3  # calls 0, 3, 6 of 7
    n = len(ours.output_blocks)
    assert counts["middle"] == full
    assert [counts[f"input_blocks.{i}"] for i in range(len(ours.input_blocks))] == [STEPS, STEPS] + [full] * (n - 2)
    assert [counts[f"output_blocks.{i}"] for i in range(n)] == [full] * (n - 2) + [STEPS, STEPS]


def test_interval_one_is_exact_and_the_cache_is_undone(unets):
    ours, _ = unets
    latents, context = inputs()
    ts = timesteps().timesteps
    with torch.no_grad():
        exact = [ours(x, t.float().expand(2), context) for x, t in zip(latents, ts, strict=True)]
    got, cache = run_ours(ours, DeepCache(1, 0), latents, context, ts)
    assert cache is None and all(torch.equal(a, b) for a, b in zip(got, exact, strict=True))
    run_ours(ours, DeepCache(3, 0), latents, context, ts)
    assert ours.feature_cache is None


def test_a_new_pass_or_shape_is_always_full(unets):
    ours, _ = unets
    latents, context = inputs()
    ts = timesteps().timesteps
    small = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(9))
    with torch.no_grad(), deep_cache(ours, DeepCache(4, 0)) as cache:
        ours(latents[0], ts[0].float().expand(2), context)
        ours(latents[1], ts[1].float().expand(2), context)  # cached
        first_again = ours(latents[2], ts[0].float().expand(2), context)  # timestep up: a new pass, full
        ours(small, ts[1].float().expand(2), context)  # another size: full
    assert (cache.full_calls, cache.cached_calls) == (3, 1)
    with torch.no_grad():
        assert torch.equal(first_again, ours(latents[2], ts[0].float().expand(2), context))


def test_bad_settings_are_refused(unets):
    with pytest.raises(ValueError, match="interval"), deep_cache(unets[0], DeepCache(0, 0)):
        pass
    with pytest.raises(ValueError, match="branch"), deep_cache(unets[0], DeepCache(2, 12)):
        pass

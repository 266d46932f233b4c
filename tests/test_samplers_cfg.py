"""CFG scale 1 runs only the conditional half of the batch, for every sampler, and gives the same latent."""

from __future__ import annotations

import pytest
import torch

from webui.models.noise_schedule import scaled_linear_alphas_cumprod
from webui.models.unet import UNetConfig, UNetModel
from webui.pipeline.conditioning import Conditioning
from webui.pipeline.generation import cfg_eps_fn
from webui.sampling import DiscreteEpsDenoiser, create_sampler_registry, sample

REGISTRY = create_sampler_registry()


@pytest.fixture(scope="module")
def unet_and_conditioning():
    config = UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, num_heads=2, context_dim=16)
    unet = UNetModel(config).eval()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in unet.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    cond, uncond = torch.randn(1, 77, 16, generator=g), torch.randn(1, 77, 16, generator=g)
    return unet, Conditioning.constant(cond, uncond)


def unshortened_cfg(unet, conditioning: Conditioning, cfg_scale: float):
    """The guided eps without the CFG-1 shortcut: one call on [uncond; cond], then the CFG formula."""

    def eps_fn(x_in, timestep, step):
        cond, uncond = conditioning.at(step)
        b = x_in.shape[0]
        t = torch.as_tensor(timestep).reshape(-1).expand(b)
        context = torch.cat([uncond.expand(b, -1, -1), cond.expand(b, -1, -1)])
        eps_uncond, eps_cond = unet(torch.cat([x_in, x_in]), torch.cat([t, t]), context).chunk(2)
        return eps_uncond + cfg_scale * (eps_cond - eps_uncond)

    return eps_fn


@pytest.mark.parametrize("name", REGISTRY.names)
def test_cfg_one_skips_the_unconditional_half_and_changes_nothing(unet_and_conditioning, name):
    unet, conditioning = unet_and_conditioning
    ac = scaled_linear_alphas_cumprod()
    batches: list[int] = []
    hook = unet.register_forward_pre_hook(lambda _m, args: batches.append(args[0].shape[0]))
    results = []
    try:
        for eps_fn in (cfg_eps_fn(unet, conditioning, 1.0), unshortened_cfg(unet, conditioning, 1.0)):
            with torch.no_grad():
                results.append(
                    sample(
                        REGISTRY.get(name),
                        DiscreteEpsDenoiser(eps_fn, ac),
                        torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3)),
                        steps=4,
                        alphas_cumprod=ac,
                        generator=torch.Generator().manual_seed(4),
                    )
                )
    finally:
        hook.remove()
    half = len(batches) // 2
    assert batches[:half] == [1] * half and batches[half:] == [2] * half  # the shortcut: half the UNet rows
    # float rounding of uncond + 1 * (cond - uncond) and of batch-1 vs batch-2 kernels only: far below 1/255
    torch.testing.assert_close(results[0], results[1], rtol=1e-4, atol=1e-4)

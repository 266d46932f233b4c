"""Tiled VAE decode/encode: equal to diffusers' enable_tiling, close to untiled, used when asked or needed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from webui.models.loading import load_model
from webui.models.vae_tiling import AUTO_TILE_PIXELS, TileSize, should_tile, tiled_decode, tiled_encode

diffusers = pytest.importorskip("diffusers")
ROOT_DEMO = "models/demo"


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """dB, for images in [-1, 1] (peak-to-peak 2)."""
    mse = float(((a.float() - b.float()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)


@pytest.fixture(scope="module")
def vae_pair(tiny_components):
    """Our tiny VAE and diffusers' AutoencoderKL with the same weights (diffusers' own key converter)."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    from webui.models.checkpoint import single_file_state_dict

    c = tiny_components
    theirs = diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        sample_size=64,  # diffusers' tile: 64 px, 8 latent px
    )
    state = single_file_state_dict(c.unet, c.vae, c.text_model)
    theirs.load_state_dict(convert_ldm_vae_checkpoint(state, dict(theirs.config)))
    theirs.enable_tiling()
    return c.vae, theirs.eval()


def test_tiled_decode_and_encode_equal_diffusers_enable_tiling(vae_pair):
    ours, theirs = vae_pair
    tile = TileSize(sample=64, downscale=8)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 4, 20, 28, generator=g)  # 160x224 px: 3x4 overlapping tiles
    x = torch.rand(1, 3, 200, 136, generator=g) * 2 - 1
    with torch.no_grad():
        decoded, reference = tiled_decode(ours, z, tile, whole_image=False), theirs.decode(z).sample
        mean, logvar = tiled_encode(ours, x, tile, whole_image=False)
        dist = theirs.encode(x).latent_dist
    assert decoded.shape == reference.shape == (1, 3, 160, 224)
    assert torch.allclose(decoded, reference, atol=1e-5, rtol=0)
    assert torch.allclose(mean, dist.mean, atol=1e-5, rtol=0)
    assert torch.allclose(logvar, dist.logvar, atol=1e-5, rtol=0)
    untiled = ours.decode(z)
    assert not torch.allclose(decoded, untiled, atol=1e-3)  # it really did tile


def test_tiles_use_the_whole_images_groupnorm_statistics_and_one_attention_over_the_whole_latent(vae_pair):
    """The default tiled decode: the mid block's attention runs once, on the whole latent; every GroupNorm of
    the tiled part normalises with the whole image's statistics (here exactly the untiled decode's: an input
    no larger than OVERVIEW_TILES tiles is its own overview), so the image is far closer to the untiled one."""
    from torch import nn

    from webui.models.vae_tiling import OVERVIEW_TILES, _SharedStatsGroupNorm, _whole_image_norms

    vae, _ = vae_pair
    tile = TileSize(sample=64, downscale=8)
    side = int(OVERVIEW_TILES * tile.latent)
    z = torch.randn(1, 4, side, side, generator=torch.Generator().manual_seed(3))  # 2x2 tiles
    untiled_stats: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

    def record(module, args):
        groups = args[0].reshape(1, module.num_groups, -1)
        untiled_stats[module] = (groups.mean(-1), groups.var(-1, unbiased=False))

    attention_inputs: list[tuple[int, ...]] = []
    with torch.no_grad():
        features = vae.decoder.latent_part(vae.post_quant_conv(z))
        hooks = [m.register_forward_pre_hook(record) for m in vae.decoder.modules() if isinstance(m, nn.GroupNorm)]
        untiled = vae.decoder.image_part(features)
        for hook in hooks:
            hook.remove()
        with _whole_image_norms(vae.decoder, features, tile.latent, vae.decoder.image_part):
            wrappers = [w for w in vae.decoder.modules() if isinstance(w, _SharedStatsGroupNorm)]
            recorded = {w.norm: w.stats for w in wrappers if w.stats is not None}  # the mid block's never ran
        assert set(recorded) == set(untiled_stats) and len(recorded) > 5
        for norm, stats in recorded.items():
            assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(stats, untiled_stats[norm], strict=True)), norm
        assert not any(isinstance(m, _SharedStatsGroupNorm) for m in vae.decoder.modules())  # restored
        hook = vae.decoder.mid.attn_1.register_forward_pre_hook(lambda m, a: attention_inputs.append(a[0].shape))
        try:
            tiled = tiled_decode(vae, z, tile)
        finally:
            hook.remove()
        per_tile = tiled_decode(vae, z, tile, whole_image=False)
    assert attention_inputs == [(1, vae.decoder.mid.attn_1.q.in_channels, side, side)]
    assert torch.allclose(untiled, vae.decode(z))
    # 64 px tiles on this tiny VAE: their borders cost most of what is left (23.3 against 15.8 dB here).
    assert psnr(tiled, untiled) > psnr(per_tile, untiled) + 5, (psnr(tiled, untiled), psnr(per_tile, untiled))


def shapes_image(size: int) -> torch.Tensor:
    """A picture of the demo model's world (coloured shapes on a background), in [-1, 1]."""
    image = Image.new("RGB", (size, size), (20, 30, 120))
    draw = ImageDraw.Draw(image)
    rng = np.random.default_rng(0)
    for _ in range(12):
        x, y, r = rng.integers(0, size, 2).tolist() + [int(rng.integers(size // 16, size // 6))]
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    array = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0)
    return array.permute(2, 0, 1)[None]


def test_tiled_decode_stays_within_35_db_of_untiled_on_a_trained_vae():
    """With the whole image's GroupNorm statistics; per-tile statistics (diffusers') lose 20 dB here."""
    model = load_model(ROOT_DEMO, compute_hash=False)
    tile = TileSize(sample=128, downscale=model.downscale)  # 384 px image: 4x4 tiles of 128 px
    with torch.no_grad():
        mean, _ = model.vae.encode(shapes_image(384))
        untiled = model.vae.decode(mean)
        tiled = tiled_decode(model.vae, mean, tile)
        per_tile = tiled_decode(model.vae, mean, tile, whole_image=False)
        tiled_mean, _ = tiled_encode(model.vae, shapes_image(384), tile)
        roundtrip = model.vae.decode(tiled_mean)
    print(f"tiled vs untiled: {psnr(tiled, untiled):.1f} dB (per-tile norms: {psnr(per_tile, untiled):.1f} dB)")
    assert psnr(tiled, untiled) >= 35.0 > psnr(per_tile, untiled)
    assert psnr(roundtrip, untiled) >= 30.0
    assert not any("SharedStats" in type(m).__name__ for m in model.vae.modules())  # the norms are restored


def test_should_tile_by_mode_size_and_free_memory(tiny_components):
    vae, cpu = tiny_components.vae, torch.device("cpu")
    assert should_tile("on", vae, 64, 64, torch.float32, cpu)
    assert not should_tile("off", vae, 4096, 4096, torch.float32, cpu)
    assert not should_tile("auto", vae, 512, 512, torch.float32, cpu)
    side = math.isqrt(AUTO_TILE_PIXELS) + 8
    assert should_tile("auto", vae, side, side, torch.float32, cpu)
    with pytest.raises(ValueError, match="unknown VAE tiling mode 'maybe'"):
        should_tile("maybe", vae, 64, 64, torch.float32, cpu)


def test_model_decode_and_encode_follow_vae_tiling(tiny_checkpoint):
    model = load_model(tiny_checkpoint.path, compute_hash=False)
    z = torch.randn(1, 4, 80, 80, generator=torch.Generator().manual_seed(1))  # 640 px: under the auto threshold
    model.vae_tiling = "auto"
    untiled = model.decode(z)
    model.vae_tiling = "on"
    tiled = model.decode(z)
    expected = tiled_decode(model.vae, z / model.scale_factor).clamp(-1, 1)
    assert torch.equal(tiled, expected) and not torch.equal(tiled, untiled)
    pixels = untiled[:, :, :, :]
    model.vae_tiling = "on"
    assert torch.equal(model.encode(pixels), tiled_encode(model.vae, pixels)[0] * model.scale_factor)

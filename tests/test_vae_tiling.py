"""Tiled VAE decode/encode: equal to diffusers' enable_tiling, close to untiled, used when asked or needed."""

from __future__ import annotations

import math
from pathlib import Path

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


def test_band_decode_and_encode_equal_the_untiled_passes(vae_pair):
    """The default: the attention once on the whole latent, the image-resolution layers one at a time in bands
    (here a few rows each, of odd sizes, batch 2) with their inputs spilled to files; the untiled image results."""
    vae, _ = vae_pair
    tile = TileSize(sample=64, downscale=8)
    g = torch.Generator().manual_seed(3)
    z = torch.randn(2, 4, 13, 22, generator=g)  # 104x176 px
    x = torch.rand(2, 3, 72, 136, generator=g) * 2 - 1
    attention_inputs: list[tuple[int, ...]] = []
    out_bands: list[int] = []
    hooks = [
        vae.decoder.mid.attn_1.register_forward_pre_hook(lambda m, a: attention_inputs.append(tuple(a[0].shape))),
        vae.decoder.conv_out.register_forward_pre_hook(lambda m, a: out_bands.append(a[0].shape[2])),
    ]
    try:
        with torch.no_grad():
            banded = tiled_decode(vae, z, tile, band_bytes=40_000)
    finally:
        for hook in hooks:
            hook.remove()
    with torch.no_grad():
        untiled = vae.decode(z)
        mean, logvar = tiled_encode(vae, x, tile, band_bytes=40_000)
        untiled_mean, untiled_logvar = vae.encode(x)
    assert attention_inputs == [(2, vae.decoder.mid.attn_1.q.in_channels, 13, 22)]
    assert len(out_bands) > 5 and max(out_bands) < 104  # the last layer ran in bands of a few rows each
    assert banded.shape == untiled.shape == (2, 3, 104, 176)
    assert torch.allclose(banded, untiled, atol=2e-5, rtol=0), float((banded - untiled).abs().max())
    assert torch.allclose(mean, untiled_mean, atol=2e-5, rtol=0)
    assert torch.allclose(logvar, untiled_logvar, atol=2e-5, rtol=0)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open files in /proc")
def test_band_decode_closes_its_spill_files_when_done_and_when_a_layer_fails(vae_pair):
    vae, _ = vae_pair
    z = torch.randn(1, 4, 9, 12, generator=torch.Generator().manual_seed(4))
    tile = TileSize(sample=64, downscale=8)
    open_files = len(list(Path("/proc/self/fd").iterdir()))
    with torch.no_grad():
        tiled_decode(vae, z, tile, band_bytes=40_000)
        assert len(list(Path("/proc/self/fd").iterdir())) == open_files

        def fail(module, args):
            raise RuntimeError("simulated failure in the last layer")

        hook = vae.decoder.conv_out.register_forward_pre_hook(fail)
        try:
            with pytest.raises(RuntimeError, match="simulated failure") as caught:
                tiled_decode(vae, z, tile, band_bytes=40_000)
        finally:
            hook.remove()
    # closed by the code, not by the garbage collector: the traceback still holds every frame's variables
    assert caught.tb is not None and len(list(Path("/proc/self/fd").iterdir())) == open_files


def _conv_work_in_order(vae, run) -> list[tuple[torch.nn.Module, float]]:
    """The 3x3 convolutions that ``run`` calls, in order, each with its multiply-adds per image."""
    work: list[tuple[torch.nn.Module, float]] = []

    def record(module, args, out):
        work.append((module, out.shape[2] * out.shape[3] * module.in_channels * module.out_channels * 9))

    convs = [m for m in vae.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    _run_hooked(run, [m.register_forward_hook(record) for m in convs])
    return work


def _run_hooked(run, hooks) -> None:
    """``run()`` without gradients, then remove ``hooks`` (on a failure too)."""
    try:
        with torch.no_grad():
            run()
    finally:
        for hook in hooks:
            hook.remove()


@pytest.mark.parametrize("direction", ["decode", "encode"])
def test_band_passes_report_progress_in_proportion_to_their_convolution_work(vae_pair, direction):
    """A 2048 px decode takes minutes on a CPU: after every band, the fraction of the image-resolution layers'
    multiply-adds done, so that the bar moves evenly. Measured here against the work of the untiled pass."""
    vae, _ = vae_pair
    tile = TileSize(sample=64, downscale=8)
    g = torch.Generator().manual_seed(5)
    if direction == "decode":
        x = torch.randn(1, 4, 13, 22, generator=g)
        untiled, image_part = (lambda: vae.decode(x)), [*vae.decoder.up.modules(), vae.decoder.conv_out]
    else:
        x = torch.rand(1, 3, 72, 136, generator=g) * 2 - 1
        untiled, image_part = (lambda: vae.encode(x)), [vae.encoder.conv_in, *vae.encoder.down.modules()]
    work = [(m, w) for m, w in _conv_work_in_order(vae, untiled) if any(m is p for p in image_part)]
    total = sum(w for _, w in work)
    expected_at_start, done = {}, 0.0
    for module, w in work:
        expected_at_start.setdefault(module, done / total)
        done += w

    fractions: list[float] = []
    at_start: dict[torch.nn.Module, float] = {}

    def banded():
        report = fractions.append
        if direction == "decode":
            tiled_decode(vae, x, tile, band_bytes=40_000, report=report)
        else:
            tiled_encode(vae, x, tile, band_bytes=40_000, report=report)

    def starting(module, args):
        at_start.setdefault(module, fractions[-1] if fractions else 0.0)

    _run_hooked(banded, [m.register_forward_pre_hook(starting) for m in expected_at_start])
    assert len(fractions) > 2 * len(expected_at_start)  # after every band, not only every layer
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0, abs=1e-12)
    assert at_start.keys() == expected_at_start.keys()
    for module, expected in expected_at_start.items():
        assert at_start[module] == pytest.approx(expected, abs=1e-9), module


def test_overlapping_tiles_report_the_fraction_of_tiles_done(vae_pair):
    vae, _ = vae_pair
    z = torch.randn(1, 4, 13, 22, generator=torch.Generator().manual_seed(6))
    fractions: list[float] = []
    with torch.no_grad():
        tiled_decode(vae, z, TileSize(sample=64, downscale=8), whole_image=False, report=fractions.append)
    # 8-pixel latent tiles every 6: rows at 0, 6, 12 and columns at 0, 6, 12, 18 (diffusers' layout)
    assert fractions == [pytest.approx(k / 12) for k in range(1, 13)]


def test_a_full_disk_while_spilling_says_where_and_what_to_do(monkeypatch, tmp_path):
    import errno
    import tempfile

    from webui.models import vae_bands

    real_temporary_file = tempfile.TemporaryFile

    class FullDisk:
        """A temporary file on a disk with no space left: writes fail as the OS fails them (ENOSPC)."""

        def __init__(self, *args, **kwargs):
            self.file = real_temporary_file(dir=tmp_path)

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.file, name)

    monkeypatch.setattr(vae_bands.tempfile, "TemporaryFile", FullDisk)
    with pytest.raises(OSError, match="No space left on device") as caught:
        vae_bands.SpilledActivation.of(torch.zeros(1, 64, 512, 512))
    message = str(caught.value)
    assert caught.value.errno == errno.ENOSPC
    assert "(0.1 GB)" in message and tempfile.gettempdir() in message
    assert "TMPDIR" in message and "--vae-tiling off" in message


def test_spilled_activation_gives_back_its_rows_and_the_whole_tensors_group_statistics():
    from webui.models.vae_bands import SpilledActivation

    x = torch.randn(2, 8, 11, 5, generator=torch.Generator().manual_seed(0)) * 3 + 1
    with SpilledActivation((2, 8, 11, 5), torch.float32, x.device) as spilled:
        for start, stop in ((0, 4), (4, 5), (5, 11)):  # bands of uneven heights
            spilled.write(start, x[:, :, start:stop])
        assert torch.equal(spilled.read(3, 9), x[:, :, 3:9])
        mean, var = spilled.group_statistics(4)
    groups = x.double().reshape(2, 4, -1)
    assert torch.allclose(mean, groups.mean(-1)) and torch.allclose(var, groups.var(-1, unbiased=False))
    half = x.to(torch.bfloat16)
    with SpilledActivation.of(half) as spilled:  # any float type round-trips bit for bit
        assert torch.equal(spilled.read_all(), half)


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
    """Band by band it is the untiled image; per-tile GroupNorm statistics (diffusers') lose 20 dB here."""
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


def test_should_tile_by_mode_size_and_free_memory(tiny_components):
    vae, cpu = tiny_components.vae, torch.device("cpu")
    assert should_tile("on", vae, 64, 64, torch.float32, cpu)
    assert not should_tile("off", vae, 4096, 4096, torch.float32, cpu)
    assert not should_tile("auto", vae, 512, 512, torch.float32, cpu)
    side = math.isqrt(AUTO_TILE_PIXELS) + 8
    assert should_tile("auto", vae, side, side, torch.float32, cpu)
    with pytest.raises(ValueError, match="unknown VAE tiling mode 'maybe'"):
        should_tile("maybe", vae, 64, 64, torch.float32, cpu)


def test_model_decode_and_encode_follow_vae_tiling(tiny_checkpoint, monkeypatch):
    from webui.models import vae_tiling

    banded: list[str] = []
    for name in ("decoder_image_part", "encoder_image_part"):
        real = getattr(vae_tiling, name)
        monkeypatch.setattr(
            vae_tiling, name, lambda *a, _real=real, _name=name, **k: banded.append(_name) or _real(*a, **k)
        )
    model = load_model(tiny_checkpoint.path, compute_hash=False)
    z = torch.randn(1, 4, 80, 80, generator=torch.Generator().manual_seed(1))  # 640 px: under the auto threshold
    model.vae_tiling = "auto"
    untiled = model.decode(z)
    assert banded == []
    model.vae_tiling = "on"
    tiled = model.decode(z)
    assert banded == ["decoder_image_part"]
    assert torch.allclose(tiled, untiled, atol=2e-5, rtol=0)
    assert torch.equal(model.encode(untiled), tiled_encode(model.vae, untiled)[0] * model.scale_factor)
    assert banded == ["decoder_image_part", "encoder_image_part", "encoder_image_part"]

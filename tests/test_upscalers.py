"""Built-in upscalers, the exact-size rule, the size limits, the upscaler folder listing, and tiling (pure torch)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

from webui.upscalers import (
    MAX_UPSCALE_PIXELS,
    UpscalerRegistry,
    UpscalerUnavailable,
    check_target_size,
    upscale_to,
)
from webui.upscalers.tiling import UpscaleCancelled, tiled_apply

HAS_SPANDREL = importlib.util.find_spec("spandrel") is not None


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def test_lanczos_and_nearest_equal_pil():
    image = noise_image(48, 40)
    registry = UpscalerRegistry()
    for name, resample in (("Lanczos", Image.Resampling.LANCZOS), ("Nearest", Image.Resampling.NEAREST)):
        ours = upscale_to(registry.get(name), image, 96, 80)
        assert np.array_equal(np.asarray(ours), np.asarray(image.resize((96, 80), resample)))


def test_none_still_gives_the_exact_size_with_lanczos():
    image = noise_image(30, 20)
    out = upscale_to(UpscalerRegistry().get("None"), image, 60, 40)
    assert np.array_equal(np.asarray(out), np.asarray(image.resize((60, 40), Image.Resampling.LANCZOS)))


def test_names_are_found_in_any_case_and_unknown_ones_list_the_choices():
    registry = UpscalerRegistry()
    assert registry.names == ["None", "Lanczos", "Nearest"]
    assert registry.get("lanczos").name == "Lanczos"
    with pytest.raises(KeyError, match="available: None, Lanczos, Nearest"):
        registry.get("ESRGAN_4x")


@pytest.mark.parametrize(
    ("size", "ok"),
    [((4096, 4096), True), ((4097, 16), False), ((4096, 4097), False), ((0, 10), False)],
)
def test_target_limits(size, ok):
    assert 4096 * 4096 == MAX_UPSCALE_PIXELS
    assert (check_target_size(*size) is None) == ok
    if not ok:
        with pytest.raises(ValueError):
            upscale_to(UpscalerRegistry().get("Nearest"), noise_image(8, 8), *size)


def test_the_folder_is_scanned_with_sub_folders_and_duplicate_stems_get_their_path(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("4x-UltraSharp.pth", "RealESRGAN_x2plus.safetensors", "sub/4x-UltraSharp.pt", "notes.txt"):
        (tmp_path / name).write_bytes(b"not a model")
    registry = UpscalerRegistry(tmp_path)
    names = registry.names[3:]
    assert sorted(names) == ["4x-UltraSharp", "RealESRGAN_x2plus", "sub/4x-UltraSharp"]
    assert registry.get("RealESRGAN_x2plus").scale == 2  # from the name until it is loaded
    assert registry.get("4x-UltraSharp").scale == 4
    assert UpscalerRegistry(tmp_path / "missing").names == ["None", "Lanczos", "Nearest"]


@pytest.mark.skipif(HAS_SPANDREL, reason="checks the message shown when spandrel is not installed")
def test_without_spandrel_model_upscalers_are_listed_but_say_how_to_install_it(tmp_path):
    (tmp_path / "4x_model.pth").write_bytes(b"x")
    registry = UpscalerRegistry(tmp_path)
    upscaler = registry.get("4x_model")
    reason = registry.unavailable_reason(upscaler)
    assert reason is not None and "pip install 'sd-webui[upscalers]'" in reason
    with pytest.raises(UpscalerUnavailable, match="spandrel"):
        upscale_to(upscaler, noise_image(8, 8), 32, 32)


def conv_model(seed: int = 0) -> torch.nn.Module:
    """A x2 model with a receptive field of 3 input pixels each side."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.LeakyReLU(0.2),
        torch.nn.Conv2d(8, 8, 3, padding=1),
        torch.nn.Upsample(scale_factor=2, mode="nearest"),
        torch.nn.Conv2d(8, 3, 3, padding=1),
    ).eval()


def test_tiles_with_enough_overlap_equal_the_whole_image():
    model = conv_model()
    x = torch.rand(1, 3, 50, 70)
    with torch.no_grad():
        whole = model(x)
        tiled = tiled_apply(model, x, tile=16, overlap=4)
        no_context = tiled_apply(model, x, tile=16, overlap=0)
    assert tiled.shape == whole.shape == (1, 3, 100, 140)
    assert torch.allclose(tiled, whole, atol=1e-5)
    assert (no_context - whole).abs().max() > 1e-3  # without context the seams show: the overlap matters


def test_tiling_stops_between_tiles_when_cancelled():
    calls = []

    def model(t: torch.Tensor) -> torch.Tensor:
        calls.append(t.shape)
        return t

    with pytest.raises(UpscaleCancelled):
        tiled_apply(model, torch.rand(1, 3, 64, 64), tile=16, overlap=2, cancel=lambda: len(calls) >= 3)
    assert len(calls) == 3


@pytest.mark.skipif(HAS_SPANDREL, reason="checks the message shown when spandrel is not installed")
def test_hires_with_a_model_upscaler_without_spandrel_is_refused_with_the_install_hint(tmp_path):
    from webui.pipeline import GenerationRequest, InvalidRequest, resolve_request
    from webui.pipeline.hires import HiresRequest
    from webui.sampling import create_sampler_registry

    (tmp_path / "4x_model.pth").write_bytes(b"x")
    request = GenerationRequest(width=64, height=64, hires=HiresRequest(hr_upscaler="4x_model"))
    with pytest.raises(InvalidRequest) as err:
        resolve_request(request, create_sampler_registry(), (64, 64), UpscalerRegistry(tmp_path))
    assert err.value.field == "hr_upscaler" and "pip install" in err.value.message


@pytest.mark.parametrize(
    ("size", "fields", "upscaled", "crop"),
    [
        ((48, 40), {"upscaling_resize": 2}, (96, 80), None),
        ((20, 20), {"upscaling_resize": 3}, (56, 56), None),  # 60 -> 56: A1111 floors each side to a multiple of 8
        ((100, 75), {"upscaling_resize": 2}, (200, 144), None),  # 150 -> 144, the aspect ratio is not kept
        ((100, 75), {"upscaling_resize": 2.5}, (248, 184), None),  # int(250 // 8 * 8), int(187.5 // 8 * 8)
        # Scale to: the scale that covers the target (max of the two ratios), then the same floor; crop if asked
        ((40, 20), {"resize_mode": 1, "upscaling_resize_w": 64, "upscaling_resize_h": 48}, (96, 48), (64, 48)),
        (
            (100, 75),
            {"resize_mode": 1, "upscaling_resize_w": 300, "upscaling_resize_h": 300, "upscaling_crop": False},
            (400, 296),  # x4: 400 x 300 -> 400 x 296
            None,
        ),
    ],
)
def test_extras_target_size_is_a1111s(size, fields, upscaled, crop):
    from webui.upscalers.postprocess import ExtrasRequest, postprocess, target_size

    request = ExtrasRequest(upscaler_1="Lanczos", **fields)
    assert target_size(size, request) == (upscaled, crop)
    result, params = postprocess(noise_image(*size), request, UpscalerRegistry(None))
    assert result.size == (crop or upscaled)
    assert params["Postprocess upscaler"] == "Lanczos"

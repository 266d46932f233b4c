"""The Inpaint editor without a browser: the mask brush's size rule and colour, and how the real editor
component of the page turns what it receives (background and paint layers, as the browser uploads them) into
the image and mask of the request. The same behaviours in a real Chromium: test_browser.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageColor

gr = pytest.importorskip("gradio")

from gradio.components.image_editor import EditorData  # noqa: E402
from gradio.data_classes import FileData  # noqa: E402

from webui.ui import build_ui  # noqa: E402
from webui.ui.img2img import (  # noqa: E402
    MASK_COLORS,
    background_only,
    brush_radius,
    editor_update,
    fitted_brush,
    inpaint_inputs,
    mask_brush,
)


@pytest.fixture(scope="module")
def mask_editor() -> gr.ImageMask:
    """The Inpaint tab's editor component exactly as the page builds it."""
    from tests.support.fakes import FakeService

    demo = build_ui(FakeService())
    editors = [block for block in demo.blocks.values() if getattr(block, "elem_id", None) == "img2img_inpaint"]
    assert len(editors) == 1
    return editors[0]


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_brush_radius_is_a_twentieth_of_the_shorter_side_within_the_slider():
    assert brush_radius(64, 64) == 3  # a few pixels on the demo model's images
    assert brush_radius(512, 512) == 26 and brush_radius(768, 512) == 26 and brush_radius(512, 768) == 26
    assert brush_radius(1024, 1024) == 51
    assert brush_radius(8, 8) == 1 and brush_radius(1, 1) == 1  # never zero
    assert brush_radius(4096, 4096) == 100  # the editor's slider ends at 100
    sides = range(8, 4096, 8)
    radii = [brush_radius(side, side) for side in sides]
    assert radii == sorted(radii)
    # A dab (the diameter) stays about a tenth of the image across wherever the slider allows it.
    assert all(abs(2 * r / side - 0.1) < 0.02 for side, r in zip(sides, radii, strict=True) if 80 <= side <= 2000)


def test_mask_brush_is_sized_to_the_image_and_paints_see_through_colours():
    assert mask_brush((64, 64)).default_size == 3
    assert mask_brush((512, 384)).default_size == 19
    assert mask_brush(None).default_size == "auto"
    brush = mask_brush((64, 64))
    assert brush.color_mode == "fixed" and brush.default_color == MASK_COLORS[0]
    for colour in brush.colors:
        assert isinstance(colour, tuple) and 0 < colour[1] < 1, f"{colour}: the image must show through the mask"


def test_sending_an_image_makes_it_the_background_with_no_paint_and_a_fitted_brush(tmp_path: Path):
    image = _noise(512, 384)
    assert background_only(image) == {"background": image, "layers": [], "composite": None}
    assert background_only(None) is None
    assert editor_update(image).brush.default_size == 19
    image.save(tmp_path / "sent.png")  # PNG Info sends a file path
    assert editor_update(str(tmp_path / "sent.png")).brush.default_size == 19
    # An upload sizes the brush to the uploaded image.
    assert fitted_brush({"background": _noise(64, 64), "layers": [], "composite": None}).brush.default_size == 3
    assert fitted_brush(None).brush.default_size == "auto"


def test_editor_sends_the_image_to_the_browser_losslessly(mask_editor):
    image = _noise(64, 64, seed=1)
    sent = mask_editor.postprocess({"background": image, "layers": [], "composite": None})
    with Image.open(sent.background.path) as shown:
        assert np.array_equal(np.asarray(shown.convert("RGB")), np.asarray(image))
    assert sent.layers == []


def test_semi_transparent_strokes_become_mask_by_their_alpha_not_their_colour(mask_editor, tmp_path: Path):
    brush = mask_editor.brush.default_color  # the page's brush: "colour" (opaque) or (colour, opacity)
    colour, opacity = brush if isinstance(brush, tuple) else (brush, 1.0)
    assert 0 < opacity < 1, "the mask brush is opaque: the image under it cannot be seen"
    stroke = (*ImageColor.getrgb(colour)[:3], round(opacity * 255))
    background = _noise(16, 8, seed=2)
    # A paint layer as the browser exports it: transparent except where the brush went. A stroke of the brush,
    # an antialiased edge pixel of it, paint of another colour (black), and colour under zero alpha (the
    # canvas leaves arbitrary colour there), which is not paint.
    layer = Image.new("RGBA", (16, 8), (0, 0, 0, 0))
    layer.paste(stroke, (2, 1, 6, 5))
    layer.putpixel((6, 1), (*stroke[:3], 3))
    layer.putpixel((10, 6), (0, 0, 0, 128))
    layer.putpixel((12, 2), (255, 255, 255, 0))
    background.save(tmp_path / "background.png")
    layer.save(tmp_path / "layer_0.png")
    value = mask_editor.preprocess(
        EditorData(
            background=FileData(path=str(tmp_path / "background.png")),
            layers=[FileData(path=str(tmp_path / "layer_0.png"))],
            composite=None,
        )
    )

    image, mask = inpaint_inputs(value, None, None)
    assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(background))
    expected = np.zeros((8, 16), np.uint8)
    expected[1:5, 2:6] = 255
    expected[1, 6] = expected[6, 10] = 255
    assert mask.mode == "L" and np.array_equal(np.asarray(mask), expected)

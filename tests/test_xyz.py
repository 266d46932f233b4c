"""The X/Y/Z plot's pieces: A1111's value syntax, axis table, run order and the labelled grid."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from webui.pipeline.errors import InvalidRequest
from webui.pipeline.requests import GenerationRequest, Img2ImgRequest
from webui.scripts.grid import annotate, cell_box, image_grid
from webui.scripts.xyz_plot import IMG2IMG_AXES, TXT2IMG_AXES, expand_values, plan_xyz, split_values


@pytest.mark.parametrize(
    ("label", "text", "expected"),
    [
        ("Steps", "10, 20,30", [10, 20, 30]),
        ("Steps", "1-5", [1, 2, 3, 4, 5]),
        ("Steps", "1-10 (+3)", [1, 4, 7, 10]),
        ("Steps", "10-1 (-4)", [10, 6]),  # A1111's range(start, end + 1, step): 2 is past 1 + 1
        ("Steps", "1-10 [4]", [1, 4, 7, 10]),
        ("Seed", "-1, 5", [-1, 5]),
        ("CFG Scale", "1-2 (+0.5)", [1.0, 1.5, 2.0]),
        ("CFG Scale", "3-9 [3]", [3.0, 6.0, 9.0]),
        ("CFG Scale", "7.5, 8", [7.5, 8.0]),
        ("Prompt S/R", 'cat, "big, dog", cow', ["cat", "big, dog", "cow"]),
    ],
)
def test_values_follow_a1111_syntax(label: str, text: str, expected: list) -> None:
    values = expand_values(label, split_values(text))
    assert values == (expected if label == "Prompt S/R" else pytest.approx(expected))


def test_axis_indices_are_a1111_1_10s() -> None:
    assert TXT2IMG_AXES[:12] == (
        "Nothing", "Seed", "Var. seed", "Var. strength", "Steps", "Hires steps", "CFG Scale", "Prompt S/R",
        "Prompt order", "Sampler", "Hires sampler", "Checkpoint name",
    )  # fmt: skip
    assert TXT2IMG_AXES.index("Schedule type") == 17 and TXT2IMG_AXES.index("Clip skip") == 24
    assert IMG2IMG_AXES[5:7] == ("CFG Scale", "Image CFG Scale") and IMG2IMG_AXES.index("Denoising") == 24
    assert TXT2IMG_AXES[-1] == IMG2IMG_AXES[-1] == "Size"


# Indices read from AUTOMATIC1111 v1.10.1's scripts/xyz_grid.py (commit 82a973c0): its axis_options list, less
# the img2img-only entries for txt2img and the txt2img-only ones for img2img (its ``is_img2img`` filter).
A1111_1_10_1_INDICES = {
    "Seed": (1, 1),
    "Steps": (4, 4),
    "CFG Scale": (6, 5),
    "Prompt S/R": (7, 7),
    "Sampler": (9, 9),
    "Checkpoint name": (11, 10),
    "Schedule type": (17, 16),
    "Eta": (23, 22),
    "Clip skip": (24, 23),
    "Denoising": (25, 24),
    "VAE": (29, 28),
    "Size": (41, 40),
}


@pytest.mark.parametrize("label", A1111_1_10_1_INDICES)
def test_axis_index_equals_a1111_1_10_1s(label: str) -> None:
    assert (TXT2IMG_AXES.index(label), IMG2IMG_AXES.index(label)) == A1111_1_10_1_INDICES[label]


def test_axis_lists_have_a1111_1_10_1s_length_and_no_later_entries() -> None:
    assert (len(TXT2IMG_AXES), len(IMG2IMG_AXES)) == (42, 41)
    assert "Skip Early CFG" not in TXT2IMG_AXES + IMG2IMG_AXES  # A1111 dev after 1.10.1: it shifts every index


def names(name: str) -> str:
    if name not in ("a", "b"):
        raise InvalidRequest("script_args", f"unknown checkpoint {name!r}")
    return name


def test_plan_orders_cells_with_the_checkpoint_outermost() -> None:
    base = GenerationRequest(prompt="p", seed=-1, batch_size=3)
    args = [TXT2IMG_AXES.index("Seed"), "1,2,3", [], TXT2IMG_AXES.index("Checkpoint name"), "", ["b", "a"]]
    plan = plan_xyz(base, args, None, names)
    assert [c.request.seed for c in plan.cells] == [1, 2, 3] * 2 and [c.model_name for c in plan.cells][::3] == [
        "b",
        "a",
    ]
    assert all(c.request.batch_size == 1 for c in plan.cells)
    assert plan.order == (0, 1, 2, 3, 4, 5)  # y (checkpoint) outermost already
    swapped = plan_xyz(base, [TXT2IMG_AXES.index("Checkpoint name"), "", ["b", "a"], 1, "1,2,3", []], None, names)
    assert [swapped.cells[i].model_name for i in swapped.order] == ["b"] * 3 + ["a"] * 3
    assert swapped.grid is not None and swapped.grid.x_labels == ("b", "a")
    assert swapped.grid.y_labels == ("Seed: 1", "Seed: 2", "Seed: 3")


def test_fixed_seeds_and_vary_seeds() -> None:
    base = GenerationRequest(seed=-1)
    plan = plan_xyz(base, [TXT2IMG_AXES.index("Steps"), "1,2"], None, names)
    assert plan.cells[0].request.seed == plan.cells[1].request.seed >= 0  # -1 drawn once for the whole grid
    kept = plan_xyz(base, [4, "1,2", [], 0, "", [], 0, "", [], True, False, False, True], None, names)
    assert kept.cells[0].request.seed == -1
    varied = plan_xyz(GenerationRequest(seed=10), [4, "1,2", [], 6, "3,4", [], 0, "", [], True, False, False,
                                                   False, True, True], None, names)  # fmt: skip
    assert [c.request.seed for c in varied.cells] == [10, 11, 12, 13]


def test_denoising_axis_needs_img2img_and_size_axis() -> None:
    with pytest.raises(InvalidRequest, match="img2img"):
        plan_xyz(GenerationRequest(), [TXT2IMG_AXES.index("Denoising"), "0.5"], None, names)
    image = Image.new("RGB", (64, 64))
    plan = plan_xyz(
        Img2ImgRequest(init_images=[image]), [IMG2IMG_AXES.index("Denoising"), "0.25-0.75 [3]"], None, names
    )
    assert [c.request.denoising_strength for c in plan.cells] == [0.25, 0.5, 0.75]
    sizes = plan_xyz(GenerationRequest(), [TXT2IMG_AXES.index("Size"), "64x96, 128x64"], None, names)
    assert [(c.request.width, c.request.height) for c in sizes.cells] == [(64, 96), (128, 64)]


def test_annotated_grid_puts_cells_under_their_labels() -> None:
    cells = [Image.new("RGB", (64, 48), (40 * i, 255 - 40 * i, 7)) for i in range(6)]
    grid = annotate(image_grid(cells, rows=2), 64, 48, ["a", "b", "c"], ["row 1", "row 2"], margin=4)
    pad_left = 64 * 3 // 4
    pad_top = grid.height - 2 * 48 - 4
    assert grid.width == pad_left + 3 * 64 + 2 * 4 and pad_top > 12
    for i, cell in enumerate(cells):
        box = cell_box(i, 3, 64, 48, pad_left, pad_top, margin=4)
        assert np.array_equal(np.asarray(grid.crop(box)), np.asarray(cell))
    # each column label is drawn (dark pixels) above its own column
    for col in range(3):
        left = pad_left + col * (64 + 4)
        assert (np.asarray(grid.crop((left, 0, left + 64, pad_top)).convert("L")) < 100).any()

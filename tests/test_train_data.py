"""Procedural shapes data, captions and the read-back measure (tiny and fast)."""

from __future__ import annotations

import numpy as np
import pytest

from webui.train import data, measure


def test_same_seed_gives_the_same_scenes_images_and_captions():
    a_rng, b_rng = np.random.default_rng(5), np.random.default_rng(5)
    a_images, a_scenes = data.sample_batch(a_rng, 4, 64)
    b_images, b_scenes = data.sample_batch(b_rng, 4, 64)
    assert a_scenes == b_scenes
    np.testing.assert_array_equal(a_images, b_images)
    assert [data.caption(s, a_rng) for s in a_scenes] == [data.caption(s, b_rng) for s in b_scenes]


def test_images_are_antialiased_rgb_in_minus_one_to_one():
    scene = data.single_shape_scene("circle", "red", "blue", size="large")
    array = data.image_to_array(data.render(scene, 128))
    assert array.shape == (3, 128, 128) and array.dtype == np.float32
    assert -1.0 <= array.min() and array.max() <= 1.0
    red = np.asarray(data.render(scene, 128))[..., 0]
    # Edge pixels take values between the two colours: the shape was drawn large and downsampled.
    assert len(np.unique(red)) > 4


def test_captions_name_the_shapes_colours_and_background():
    rng = np.random.default_rng(0)
    for _ in range(200):
        scene = data.random_scene(rng)
        text = data.caption(scene, rng)
        assert scene.background in text
        for shape in scene.shapes:
            assert shape.colour in text
            assert any(word in text for word in data.SHAPE_WORDS[shape.kind])
            assert shape.colour != scene.background
        assert " a orange" not in text and not text.startswith("a orange")


def test_the_data_covers_every_colour_shape_and_two_shape_scenes():
    rng = np.random.default_rng(1)
    scenes = [data.random_scene(rng) for _ in range(600)]
    assert {s.kind for sc in scenes for s in sc.shapes} == set(data.SHAPES)
    assert {s.colour for sc in scenes for s in sc.shapes} == set(data.COLOURS)
    assert {sc.background for sc in scenes} == set(data.COLOURS)
    assert 0.1 < sum(len(sc.shapes) == 2 for sc in scenes) / len(scenes) < 0.3
    assert len(data.COLOURS) >= 8


@pytest.mark.parametrize("kind", data.SHAPES)
def test_measure_reads_clean_renders_of_every_shape(kind):
    rng = np.random.default_rng(2)
    names = list(data.COLOURS)
    for i in range(12):
        colour, background = names[i % 8], names[(i + 1 + i // 8) % 8]
        size = ("small", "medium", "large")[i % 3]
        position = "center" if size == "large" else list(data.POSITIONS)[rng.integers(9)]
        scene = data.Scene(background, (data._jittered_shape(rng, kind, colour, size, position),))
        reading = measure.read_image(data.render(scene))
        assert (reading.background, reading.colour, reading.shape) == (background, colour, kind), reading


def test_measure_sees_no_shape_on_a_plain_background():
    reading = measure.read_image(data.render(data.Scene("green", ())))
    assert reading.background == "green" and reading.shape is None and reading.colour is None


def test_convex_hull_area_of_a_square_and_a_triangle():
    square = np.array([[0, 0], [4, 0], [4, 4], [0, 4], [2, 2], [1, 3]])
    assert measure.convex_hull_area(square) == pytest.approx(16.0)
    assert measure.convex_hull_area(np.array([[0, 0], [4, 0], [0, 3]])) == pytest.approx(6.0)

"""Procedural captioned images: coloured geometric shapes on a coloured background.

Every image is generated from a :class:`Scene` (background colour and one or two shapes with
colour, size and position) that is drawn from a seeded ``numpy`` generator, so the data set is
infinite, needs no download, and is the same for the same seed. Captions are plain English
written from the scene with synonyms and varied word order, so that a text encoder trained on
them learns the words rather than one template.

Shapes are drawn with PIL at ``SUPERSAMPLE`` times the output size and box-downsampled, which
antialiases their edges.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SUPERSAMPLE = 4

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "green": (30, 165, 55),
    "blue": (35, 75, 225),
    "yellow": (245, 220, 35),
    "orange": (245, 135, 20),
    "purple": (135, 45, 175),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart")

# Words that may stand for a shape in a caption (the first is the canonical name).
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc", "round dot"),
    "square": ("square", "box"),
    "triangle": ("triangle",),
    "star": ("star", "five pointed star"),
    "heart": ("heart",),
}

# Half-extent of the shape's bounding box as a fraction of the image side. At the demo's 64 px a
# medium shape is 28 px (7 latent pixels) across: large enough that the corners and notches which
# tell the classes apart cover several latent pixels.
SIZES: dict[str, float] = {"small": 0.13, "medium": 0.22, "large": 0.30}
SIZE_WORDS: dict[str, tuple[str, ...]] = {
    "small": ("small", "little", "tiny"),
    "medium": ("", "medium", "medium sized"),
    "large": ("large", "big", "huge"),
}

# Centre of the shape as (x, y) fractions of the image side.
POSITIONS: dict[str, tuple[float, float]] = {
    "center": (0.5, 0.5),
    "top left": (0.27, 0.27),
    "top right": (0.73, 0.27),
    "bottom left": (0.27, 0.73),
    "bottom right": (0.73, 0.73),
    "top": (0.5, 0.27),
    "bottom": (0.5, 0.73),
    "left": (0.27, 0.5),
    "right": (0.73, 0.5),
}
POSITION_WORDS: dict[str, tuple[str, ...]] = {
    "center": ("in the center", "in the middle", "in the centre"),
    "top left": ("in the top left corner", "at the top left", "in the upper left corner"),
    "top right": ("in the top right corner", "at the top right", "in the upper right corner"),
    "bottom left": ("in the bottom left corner", "at the bottom left", "in the lower left corner"),
    "bottom right": ("in the bottom right corner", "at the bottom right", "in the lower right corner"),
    "top": ("at the top", "near the top"),
    "bottom": ("at the bottom", "near the bottom"),
    "left": ("on the left", "on the left side"),
    "right": ("on the right", "on the right side"),
}
# Pairs of positions used for two-shape scenes (first shape, second shape).
PAIRS: tuple[tuple[str, str], ...] = (
    ("left", "right"),
    ("right", "left"),
    ("top", "bottom"),
    ("bottom", "top"),
    ("top left", "bottom right"),
    ("bottom right", "top left"),
    ("top right", "bottom left"),
    ("bottom left", "top right"),
)

BACKGROUND_TEMPLATES: tuple[str, ...] = (
    "{thing} on a {bg} background",
    "{thing} on a {bg} background",
    "{thing} on {bg}",
    "{thing} against a {bg} background",
    "{thing} with a {bg} background",
    "{thing} on a plain {bg} backdrop",
    "a {bg} background with {thing}",
    "{bg} background, {thing}",
    "{thing}, {bg} background",
    "a picture of {thing} on a {bg} background",
    "an image of {thing} on {bg}",
)


@dataclass(frozen=True)
class Shape:
    """One shape: canonical ``kind`` and ``colour`` names, size and position names and exact geometry."""

    kind: str
    colour: str
    size: str
    position: str
    cx: float
    cy: float
    half: float


@dataclass(frozen=True)
class Scene:
    background: str
    shapes: tuple[Shape, ...]


def _jittered_shape(rng: np.random.Generator, kind: str, colour: str, size: str, position: str) -> Shape:
    x, y = POSITIONS[position]
    return Shape(
        kind=kind,
        colour=colour,
        size=size,
        position=position,
        cx=x + float(rng.uniform(-0.03, 0.03)),
        cy=y + float(rng.uniform(-0.03, 0.03)),
        half=SIZES[size] * float(rng.uniform(0.9, 1.1)),
    )


def random_scene(rng: np.random.Generator, two_shape_probability: float = 0.1) -> Scene:
    """Draw a background colour and one or two shapes (never the background's colour).

    Two-shape scenes are kept rare: each one binds two colours to two places, which a small model
    learns late, and with a larger share (0.2) the demo learnt the colours of plain one-shape
    prompts less reliably within its training budget.
    """
    names = list(COLOURS)
    background = names[rng.integers(len(names))]
    others = [c for c in names if c != background]
    if rng.random() < two_shape_probability:
        first, second = PAIRS[rng.integers(len(PAIRS))]
        shapes = tuple(
            _jittered_shape(
                rng,
                SHAPES[rng.integers(len(SHAPES))],
                others[rng.integers(len(others))],
                ("small", "medium")[rng.integers(2)],
                position,
            )
            for position in (first, second)
        )
    else:
        size = list(SIZES)[rng.integers(len(SIZES))]
        position = "center" if size == "large" else list(POSITIONS)[rng.integers(len(POSITIONS))]
        shapes = (
            _jittered_shape(rng, SHAPES[rng.integers(len(SHAPES))], others[rng.integers(len(others))], size, position),
        )
    return Scene(background, shapes)


def single_shape_scene(
    kind: str, colour: str, background: str, size: str = "medium", position: str = "center"
) -> Scene:
    """A scene without jitter, e.g. to write a test prompt for it."""
    x, y = POSITIONS[position]
    return Scene(background, (Shape(kind, colour, size, position, x, y, SIZES[size]),))


def _choice(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[rng.integers(len(options))]


def _noun_phrase(rng: np.random.Generator, shape: Shape, with_size: bool) -> str:
    size = _choice(rng, SIZE_WORDS[shape.size]) if with_size else ""
    noun = _choice(rng, SHAPE_WORDS[shape.kind])
    if rng.random() < 0.1:
        words = " ".join(w for w in (size, noun) if w)
        phrase = f"{words} that is {shape.colour}"
    else:
        phrase = " ".join(w for w in (size, shape.colour, noun) if w)
    article = "an" if phrase[0] in "aeiou" else "a"
    return f"{article} {phrase}" if rng.random() < 0.9 else phrase


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """A plain-English caption of ``scene``; synonyms and word order drawn from ``rng``."""
    # People say what is out of the ordinary: a size other than medium and a place other than the
    # centre are usually named, the ordinary ones seldom. A plain prompt ("a red circle on a blue
    # background") therefore means a medium shape in the middle, as a reader would draw it.
    centred = len(scene.shapes) == 1 and scene.shapes[0].position == "center"
    with_position = len(scene.shapes) > 1 or rng.random() < (0.3 if centred else 0.9)
    things = []
    for shape in scene.shapes:
        with_size = rng.random() < (0.3 if shape.size == "medium" else 0.9)
        phrase = _noun_phrase(rng, shape, with_size)
        if with_position:
            phrase = f"{phrase} {_choice(rng, POSITION_WORDS[shape.position])}"
        things.append(phrase)
    thing = " and ".join(things)
    text = _choice(rng, BACKGROUND_TEMPLATES).format(thing=thing, bg=scene.background)
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


def simple_caption(kind: str, colour: str, background: str) -> str:
    """The plainest prompt for a one-shape scene: ``"a red circle on a blue background"``."""
    return re.sub(r"\ba (?=[aeiou])", "an ", f"a {colour} {kind} on a {background} background")


def shape_polygon(kind: str, cx: float, cy: float, half: float, steps: int = 96) -> list[tuple[float, float]]:
    """Outline of a shape as (x, y) points in the same units as ``cx, cy, half`` (y grows downwards)."""
    if kind == "circle":
        angles = np.linspace(0.0, 2.0 * math.pi, steps, endpoint=False)
        return [(cx + half * math.cos(a), cy + half * math.sin(a)) for a in angles]
    if kind == "square":
        h = half * 0.88  # a little smaller so that its area is close to the circle's
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if kind == "triangle":
        return [(cx, cy - half), (cx + half, cy + half * 0.85), (cx - half, cy + half * 0.85)]
    if kind == "star":
        points = []
        for i in range(10):
            radius = half if i % 2 == 0 else half * 0.42
            angle = -math.pi / 2 + i * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle) + half * 0.1))
        return points
    if kind == "heart":
        # x = 16 sin^3 t, y = 13 cos t - 5 cos 2t - 2 cos 3t - cos 4t (spans x in [-16, 16], y in [-17, 12]).
        t = np.linspace(0.0, 2.0 * math.pi, steps, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
        scale = half / 16.0
        return [(cx + float(a) * scale, cy - (float(b) + 2.5) * scale) for a, b in zip(x, y, strict=True)]
    raise ValueError(f"unknown shape {kind!r}; expected one of {', '.join(SHAPES)}")


def render(scene: Scene, size: int = 128) -> Image.Image:
    """Draw ``scene`` as an RGB image of ``size`` x ``size`` pixels."""
    big = size * SUPERSAMPLE
    image = Image.new("RGB", (big, big), COLOURS[scene.background])
    draw = ImageDraw.Draw(image)
    for shape in scene.shapes:
        points = shape_polygon(shape.kind, shape.cx * big, shape.cy * big, shape.half * big)
        if shape.kind == "circle":
            r = shape.half * big
            draw.ellipse(
                (shape.cx * big - r, shape.cy * big - r, shape.cx * big + r, shape.cy * big + r),
                fill=COLOURS[shape.colour],
            )
        else:
            draw.polygon(points, fill=COLOURS[shape.colour])
    return image.reduce(SUPERSAMPLE)


def image_to_array(image: Image.Image) -> np.ndarray:
    """PIL RGB -> float32 (3, H, W) in [-1, 1]."""
    return np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0


def sample_batch(rng: np.random.Generator, batch_size: int, size: int = 128) -> tuple[np.ndarray, list[Scene]]:
    """``batch_size`` random scenes and their images as float32 (B, 3, size, size) in [-1, 1]."""
    scenes = [random_scene(rng) for _ in range(batch_size)]
    return np.stack([image_to_array(render(s, size)) for s in scenes]), scenes


def caption_corpus(seed: int = 0, count: int = 20000) -> list[str]:
    """Many captions, enough to contain every word and phrase that :func:`caption` can write."""
    rng = np.random.default_rng(seed)
    captions = [caption(random_scene(rng), rng) for _ in range(count)]
    for colour in COLOURS:
        for background in COLOURS:
            for kind in SHAPES:
                captions.append(simple_caption(kind, colour, background))
    for words in (*SHAPE_WORDS.values(), *SIZE_WORDS.values(), *POSITION_WORDS.values(), BACKGROUND_TEMPLATES):
        captions.extend(words)
    return captions

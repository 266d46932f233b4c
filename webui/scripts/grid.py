"""Image grids with axis labels, laid out as AUTOMATIC1111's ``modules/images.py`` does.

``image_grid`` pastes cells row by row; ``annotate`` adds column labels above and row labels to the left
(left padding 3/4 of a cell, labels centred, long ones wrapped to the cell's width and shrunk until they fit),
with ``margin`` pixels between cells. The font is Pillow's own default font (FreeType, scalable: no system
font needed) at A1111's size ``(cell width + height) // 25``, but never under :data:`MIN_FONT_SIZE` pixels, so
that small images still get readable labels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from PIL import Image, ImageDraw, ImageFont

MIN_FONT_SIZE = 12


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=max(1, size))


def image_grid(images: Sequence[Image.Image], rows: int) -> Image.Image:
    """``images`` in ``rows`` rows, left to right then top to bottom, on black (A1111's ``image_grid``)."""
    cols = math.ceil(len(images) / rows)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h), "black")
    for i, image in enumerate(images):
        grid.paste(image.convert("RGB"), (i % cols * w, i // cols * h))
    return grid


def _wrap(
    draw: ImageDraw.ImageDraw, text: str, fnt: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int
) -> list[str]:
    lines = [""]
    for word in text.split():
        candidate = f"{lines[-1]} {word}".strip()
        if draw.textlength(candidate, font=fnt) <= width or not lines[-1]:
            lines[-1] = candidate
        else:
            lines.append(word)
    return [line for line in lines if line] or [""]


def annotate(
    grid: Image.Image,
    width: int,
    height: int,
    column_labels: Sequence[str],
    row_labels: Sequence[str],
    margin: int = 0,
) -> Image.Image:
    """``grid`` (cells of ``width`` x ``height``) with its labels and ``margin`` pixels between cells."""
    cols, rows = grid.width // width, grid.height // height
    if len(column_labels) != cols or len(row_labels) != rows:
        raise ValueError(f"{cols}x{rows} cells need {cols} column and {rows} row labels")
    size = max((width + height) // 25, MIN_FONT_SIZE)
    spacing = size // 2
    fnt = font(size)
    pad_left = 0 if not any(row_labels) else width * 3 // 4
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def layout(text: str, allowed: int) -> list[tuple[str, ImageFont.ImageFont | ImageFont.FreeTypeFont, int]]:
        """Wrapped lines, each with the largest font size that fits ``allowed`` and its height."""
        out = []
        for line in _wrap(measure, text, fnt, allowed):
            line_size, line_font = size, fnt
            while measure.textlength(line, font=line_font) > allowed and line_size > 1:
                line_size -= 1
                line_font = font(line_size)
            box = measure.textbbox((0, 0), line, font=fnt)
            out.append((line, line_font, int(box[3] - box[1])))
        return out

    columns = [layout(text, width) if text else [] for text in column_labels]
    row_lines = [layout(text, pad_left) if text else [] for text in row_labels]

    def block_height(lines: Sequence[tuple[str, Any, int]]) -> int:
        return sum(h + spacing for _, _, h in lines) - spacing if lines else 0

    pad_top = 0 if not any(columns) else max(block_height(c) for c in columns) + spacing * 2
    result = Image.new(
        "RGB", (grid.width + pad_left + margin * (cols - 1), grid.height + pad_top + margin * (rows - 1)), "white"
    )
    for row in range(rows):
        for col in range(cols):
            cell = grid.crop((width * col, height * row, width * (col + 1), height * (row + 1)))
            result.paste(cell, (pad_left + (width + margin) * col, pad_top + (height + margin) * row))
    draw = ImageDraw.Draw(result)

    def write(x: float, y: float, lines: list[tuple[str, ImageFont.ImageFont | ImageFont.FreeTypeFont, int]]) -> None:
        for text, line_font, h in lines:
            draw.text((x, y + h / 2), text, font=line_font, fill=(0, 0, 0), anchor="mm")
            y += h + spacing

    for col, lines in enumerate(columns):
        write(pad_left + (width + margin) * col + width / 2, pad_top / 2 - block_height(lines) / 2, lines)
    for row, lines in enumerate(row_lines):
        write(pad_left / 2, pad_top + (height + margin) * row + height / 2 - block_height(lines) / 2, lines)
    return result


def cell_box(
    index: int, cols: int, width: int, height: int, pad_left: int, pad_top: int, margin: int = 0
) -> tuple[int, int, int, int]:
    """Where cell ``index`` (row-major) lies in an annotated grid: ``(left, top, right, bottom)``."""
    col, row = index % cols, index // cols
    left, top = pad_left + (width + margin) * col, pad_top + (height + margin) * row
    return left, top, left + width, top + height

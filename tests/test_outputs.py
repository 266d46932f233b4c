"""Atomic PNG saving: folder layout, counter, never overwriting, infotext chunk."""

from __future__ import annotations

import datetime as dt
import io
import struct
import threading
import zlib

from PIL import Image

from webui.pipeline.outputs import next_counter, read_infotext, read_text_chunks, save_image

NOW = dt.datetime(2026, 11, 26, 17, 30)


def test_layout_counter_and_parameters_chunk(tmp_path):
    image = Image.new("RGB", (16, 8), (10, 20, 30))
    first = save_image(image, tmp_path, "txt2img", 42, "a cat\nSteps: 1, Sampler: Euler, Seed: 42", now=NOW)
    second = save_image(image, tmp_path, "txt2img", 43, "x", now=NOW)
    other = save_image(image, tmp_path, "img2img", 7, None, now=NOW)
    assert first == tmp_path / "txt2img" / "2026-11-26" / "00000-42.png"
    assert second == tmp_path / "txt2img" / "2026-11-26" / "00001-43.png"
    assert other == tmp_path / "img2img" / "2026-11-26" / "00000-7.png"
    with Image.open(first) as reopened:
        reopened.load()
        assert reopened.size == (16, 8) and reopened.getpixel((0, 0)) == (10, 20, 30)
        assert reopened.info["parameters"] == "a cat\nSteps: 1, Sampler: Euler, Seed: 42"
    assert read_infotext(other) is None
    # no temporary files left behind
    assert sorted(p.name for p in first.parent.iterdir()) == ["00000-42.png", "00001-43.png"]


def test_counter_continues_after_existing_files_and_never_overwrites(tmp_path):
    folder = tmp_path / "txt2img" / "2026-11-26"
    folder.mkdir(parents=True)
    (folder / "00041-5.png").write_bytes(b"keep me")
    (folder / "notes.txt").write_text("x")
    assert next_counter(folder) == 42
    path = save_image(Image.new("RGB", (8, 8)), tmp_path, "txt2img", 5, None, now=NOW)
    assert path.name == "00042-5.png"
    assert (folder / "00041-5.png").read_bytes() == b"keep me"


def test_concurrent_saves_get_distinct_complete_files(tmp_path):
    paths = []
    lock = threading.Lock()

    def save(i: int) -> None:
        p = save_image(Image.new("RGB", (8, 8), (i, i, i)), tmp_path, "txt2img", 1, f"n{i}", now=NOW)
        with lock:
            paths.append(p)

    threads = [threading.Thread(target=save, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(paths)) == 8
    for p in paths:
        with Image.open(p) as image:
            image.load()
            assert image.info["parameters"].startswith("n")


def _png_with_chunks_after_the_pixels(path, chunks: dict[str, str]) -> None:
    """A PNG whose tEXt chunks follow the image data (allowed by the PNG spec; some tools write them there)."""
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (1, 2, 3)).save(buffer, format="PNG", icc_profile=b"\0binary profile")
    data = buffer.getvalue()
    iend = data.rindex(b"IEND") - 4  # the chunk starts with its 4-byte length
    extra = b""
    for key, value in chunks.items():
        body = b"tEXt" + key.encode("latin-1") + b"\0" + value.encode("latin-1")
        extra += struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
    path.write_bytes(data[:iend] + extra + data[iend:])


def test_text_chunks_after_the_pixel_data_are_read_and_binary_entries_left_out(tmp_path):
    path = tmp_path / "late.png"
    _png_with_chunks_after_the_pixels(path, {"parameters": "a cat\nSteps: 3, Sampler: Euler, Seed: 1", "x": "y"})
    assert read_infotext(path) == "a cat\nSteps: 3, Sampler: Euler, Seed: 1"
    assert read_text_chunks(path) == {"parameters": "a cat\nSteps: 3, Sampler: Euler, Seed: 1", "x": "y"}
    with Image.open(path) as image:
        assert "icc_profile" in image.info  # there is a binary entry to leave out
        assert read_infotext(image) == "a cat\nSteps: 3, Sampler: Euler, Seed: 1"


def test_without_a_seed_the_name_is_the_counter_alone_as_a1111s_extras(tmp_path):
    now = dt.datetime(2026, 1, 2, 3, 4, 5)
    first = save_image(Image.new("RGB", (8, 8)), tmp_path, "extras", None, "Postprocess upscaler: Lanczos", now=now)
    second = save_image(Image.new("RGB", (8, 8)), tmp_path, "extras", None, None, now=now)
    seeded = save_image(Image.new("RGB", (8, 8)), tmp_path, "extras", 7, None, now=now)
    assert [p.name for p in (first, second, seeded)] == ["00000.png", "00001.png", "00002-7.png"]
    assert first.parent == tmp_path / "extras" / "2026-01-02"
    assert next_counter(first.parent) == 3
    assert read_infotext(first) == "Postprocess upscaler: Lanczos"

"""Textual-inversion embeddings: every file format, refusal of unsafe or damaged files, and how the words sit in
the token stream (75-token chunks, emphasis, token counter)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from webui.extra_networks.embeddings import (
    Embedding,
    EmbeddingError,
    EmbeddingVocabulary,
    read_embedding,
    scan_embeddings,
)
from webui.pipeline.conditioning import count_tokens, encode_conditioning
from webui.pipeline.prompts import EMBEDDING_PLACEHOLDER_ID, TokenIds, chunk_prompt

WIDTH = 16


def vectors(n: int, width: int = WIDTH, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, width, generator=torch.Generator().manual_seed(seed))


# --- formats ------------------------------------------------------------------------------


def test_reads_an_a1111_pt_with_its_metadata(tmp_path: Path) -> None:
    vec = vectors(3)
    path = tmp_path / "style.pt"
    torch.save(
        {
            "string_to_token": {"*": 265},
            "string_to_param": {"*": torch.nn.Parameter(vec)},
            "name": "something-else",
            "step": 1500,
            "sd_checkpoint": "abcdef0123",
            "sd_checkpoint_name": "v1-5-pruned",
        },
        path,
    )
    embedding = read_embedding(path)
    assert embedding.name == "style"  # the file stem is the word, not the stored name
    assert (embedding.vectors, embedding.shape, embedding.step) == (3, WIDTH, 1500)
    assert (embedding.sd_checkpoint, embedding.sd_checkpoint_name) == ("abcdef0123", "v1-5-pruned")
    torch.testing.assert_close(embedding.vec, vec)
    import hashlib

    assert embedding.shorthash == hashlib.sha256(path.read_bytes()).hexdigest()[:12]


@pytest.mark.parametrize(
    ("filename", "data", "expected_vectors"),
    [
        ("concept.bin", {"<concept>": vectors(1)[0]}, 1),  # diffusers: one (D,) vector
        ("multi.bin", {"<multi>": vectors(4)}, 4),  # diffusers multi-vector
        ("civitai.safetensors", {"emb_params": vectors(2)}, 2),
        ("diffusers.safetensors", {"<tok>": vectors(5)}, 5),
    ],
)
def test_reads_diffusers_and_safetensors_layouts(tmp_path: Path, filename: str, data, expected_vectors: int) -> None:
    path = tmp_path / filename
    if filename.endswith(".safetensors"):
        save_file(data, str(path))
    else:
        torch.save(data, path)
    embedding = read_embedding(path)
    assert embedding.name == path.stem
    assert (embedding.vectors, embedding.shape) == (expected_vectors, WIDTH)
    torch.testing.assert_close(embedding.vec, next(iter(data.values())).reshape(expected_vectors, WIDTH))


def test_a_pickle_with_code_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"string_to_param": {"*": vectors(1)}, "x": Payload()}, path)
    with pytest.raises(EmbeddingError, match=r"evil\.pt: refused: .*code"):
        read_embedding(path)
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pt", ".bin", ".safetensors"])
def test_truncated_and_random_files_give_one_clear_message(tmp_path: Path, suffix: str) -> None:
    good = tmp_path / f"good{suffix}"
    if suffix == ".safetensors":
        save_file({"emb_params": vectors(2)}, str(good))
    else:
        torch.save({"string_to_param": {"*": vectors(2)}}, good)
    truncated = tmp_path / f"truncated{suffix}"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    noise = tmp_path / f"noise{suffix}"
    noise.write_bytes(os.urandom(4096))
    for path in (truncated, noise):
        with pytest.raises(EmbeddingError, match=rf"{path.stem}\{suffix}: not a readable .*(truncated or damaged)"):
            read_embedding(path)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"string_to_param": {"*": vectors(1), "x": vectors(1)}}, "exactly one term"),
        ({"a": vectors(1), "b": vectors(1)}, "found 2"),
        ({"name": "no tensor"}, "found 0"),
        ({"emb": torch.full((2, WIDTH), float("nan"))}, "NaN"),
        ([1, 2, 3], "dictionary of tensors"),
        ({"emb_params": vectors(76)}, "76 vectors do not fit"),
    ],
)
def test_files_that_are_not_embeddings_say_why(tmp_path: Path, data, message: str) -> None:
    path = tmp_path / "odd.pt"
    torch.save(data, path)
    with pytest.raises(EmbeddingError, match=message):
        read_embedding(path)


def test_scan_sorts_files_into_loaded_skipped_and_errors(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    torch.save({"string_to_param": {"*": vectors(2)}}, tmp_path / "ok.pt")
    save_file({"emb_params": vectors(2, width=WIDTH * 2)}, str(tmp_path / "sub" / "wide.safetensors"))
    save_file({"clip_g": vectors(2, width=32), "clip_l": vectors(2)}, str(tmp_path / "sdxl.safetensors"))
    (tmp_path / "broken.pt").write_bytes(b"not a pickle at all")
    (tmp_path / "empty.bin").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("ignored")

    found = scan_embeddings(tmp_path, WIDTH)

    assert list(found.loaded) == ["ok"]
    assert sorted(found.skipped) == ["sdxl", "wide"]
    assert found.skipped["sdxl"].shape == 32 + WIDTH and found.skipped["wide"].shape == WIDTH * 2
    assert sorted(found.errors) == ["broken", "empty"]
    assert "broken.pt: not a readable PyTorch file" in found.errors["broken"]
    assert scan_embeddings(tmp_path / "missing", WIDTH).loaded == {}


# --- the token stream -----------------------------------------------------------------------

IDS = TokenIds(bos=1000, eos=1001, pad=1002, comma=7)
WORDS = {"easynegative": [50, 51], "easy": [50], ",": [7]}


def word_tokenize(text: str) -> list[int]:
    """Words -> ids: known words by the table, any other word one id from its length (20 + len)."""
    out: list[int] = []
    for word in text.replace(",", " , ").split():
        out.extend(WORDS.get(word, [20 + len(word)]))
    return out


def vocabulary(**sizes: int) -> EmbeddingVocabulary:
    return EmbeddingVocabulary(
        [Embedding(name, vectors(n, seed=i)) for i, (name, n) in enumerate(sizes.items())], word_tokenize
    )


def test_an_embedding_takes_its_vectors_places_with_the_run_weight() -> None:
    chunks, count = chunk_prompt("a (easynegative:1.2) easy", word_tokenize, IDS, embeddings=vocabulary(easynegative=3))
    (chunk,) = chunks
    assert count == 1 + 3 + 1
    assert chunk.tokens[:7] == [1000, 21, *[EMBEDDING_PLACEHOLDER_ID] * 3, 50, 1001]
    assert chunk.multipliers[:6] == pytest.approx([1.0, 1.0, 1.2, 1.2, 1.2, 1.0])
    assert chunk.fixes == [(2, "easynegative")]  # position after the start token


def test_the_longest_word_wins_and_an_unknown_one_stays_text() -> None:
    chunks, _ = chunk_prompt("easynegative easy", word_tokenize, IDS, embeddings=vocabulary(easy=1, easynegative=2))
    assert chunks[0].fixes == [(1, "easynegative"), (3, "easy")]
    chunks, count = chunk_prompt("easynegative", word_tokenize, IDS, embeddings=None)
    assert (chunks[0].tokens[1:3], chunks[0].fixes, count) == ([50, 51], [], 2)


def test_an_embedding_that_does_not_fit_starts_the_next_chunk() -> None:
    prompt = " ".join(["w"] * 73) + " easynegative"
    chunks, count = chunk_prompt(prompt, word_tokenize, IDS, embeddings=vocabulary(easynegative=4))
    assert len(chunks) == 2 and count == 73 + 4
    assert chunks[0].fixes == [] and chunks[0].tokens[74] == 1001  # 73 words then end and padding
    assert chunks[1].fixes == [(1, "easynegative")]
    assert all(len(chunk.tokens) == 77 for chunk in chunks)


def test_comma_backtracking_carries_the_embedding_into_the_next_chunk() -> None:
    prompt = " ".join(["w"] * 65) + ", easynegative " + " ".join(["w"] * 10)
    chunks, _ = chunk_prompt(prompt, word_tokenize, IDS, embeddings=vocabulary(easynegative=2))
    assert chunks[0].fixes == [] and chunks[0].tokens[66] == 7  # the chunk ends after the comma
    assert chunks[1].fixes == [(1, "easynegative")]
    assert chunks[1].tokens[1:3] == [EMBEDDING_PLACEHOLDER_ID] * 2


class WordEncoder:
    """A stand-in CLIP: the context is the (embedded) input vectors themselves, so placement is visible."""

    chunk_length = 75
    bos_id, eos_id, pad_id = 1000, 1001, 1002

    def __init__(self) -> None:
        self.table = torch.nn.Embedding(1003, WIDTH)
        torch.nn.init.normal_(self.table.weight, generator=torch.Generator().manual_seed(3))

    def tokenize(self, text: str) -> list[int]:
        return word_tokenize(text)

    def encode_ids(self, ids, clip_skip=1, vectors=None):
        with torch.no_grad():
            out = self.table(ids).clone()
        for row, replacements in enumerate(vectors or []):
            for position, vec in replacements:
                out[row, position : position + len(vec)] = vec
        return out


def test_the_context_holds_the_embedding_vectors_in_prompt_and_negative_prompt() -> None:
    encoder, words = WordEncoder(), vocabulary(easynegative=2, easy=1)
    conditioning = encode_conditioning(encoder, "a easy", "easynegative", embeddings=words)
    torch.testing.assert_close(conditioning.cond[0, 2], words.vectors("easy")[0])
    torch.testing.assert_close(conditioning.uncond[0, 1:3], words.vectors("easynegative"))
    assert conditioning.embeddings_used == ("easy", "easynegative")


def test_the_token_counter_counts_vectors() -> None:
    encoder = WordEncoder()
    assert count_tokens(encoder, "a easynegative", embeddings=vocabulary(easynegative=8)) == (9, 75)
    assert count_tokens(encoder, "a easynegative") == (3, 75)
    long = " ".join(["w"] * 70) + " easynegative"
    assert count_tokens(encoder, long, embeddings=vocabulary(easynegative=8)) == (78, 150)


def test_infotext_hashes_name_each_used_word(tmp_path: Path) -> None:
    torch.save({"string_to_param": {"*": vectors(1)}}, tmp_path / "easy.pt")
    found = scan_embeddings(tmp_path, WIDTH)
    words = EmbeddingVocabulary(found.loaded.values(), word_tokenize)
    assert words.infotext_hashes(["easy", "unknown"]) == f"easy: {found.loaded['easy'].shorthash}"

"""The demo model's CLIP tokenizer built from caption words."""

from __future__ import annotations

import json

import pytest

from webui.train import data
from webui.train.tokenizer import BOS, EOS, bytes_to_unicode, load_tokenizer, write_tokenizer


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer", data.caption_corpus(0, 2000))


def test_folder_has_clip_files_with_every_byte_symbol(folder):
    names = {p.name for p in folder.iterdir()}
    assert {"vocab.json", "merges.txt", "tokenizer_config.json"} <= names
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    for symbol in bytes_to_unicode().values():
        assert symbol in vocab and symbol + "</w>" in vocab
    assert vocab[BOS] == len(vocab) - 2 and vocab[EOS] == len(vocab) - 1
    assert (folder / "merges.txt").read_text(encoding="utf-8").startswith("#version: 0.2\n")


def test_caption_words_are_single_tokens_wrapped_in_start_and_end(folder):
    tokenizer = load_tokenizer(folder)
    ids = tokenizer("a red circle on a blue background").input_ids
    assert tokenizer.convert_ids_to_tokens(ids) == [
        BOS,
        "a</w>",
        "red</w>",
        "circle</w>",
        "on</w>",
        "a</w>",
        "blue</w>",
        "background</w>",
        EOS,
    ]
    for word in [*data.COLOURS, *data.SHAPES, "small", "corner", "left", "background"]:
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word


@pytest.mark.parametrize("text", ["", "A Big RED Star!!", "日本語 émoji 🙂", "zzzz qqq 12345", "\t\n  "])
def test_any_string_tokenizes_and_pads_to_77(folder, text):
    tokenizer = load_tokenizer(folder)
    assert tokenizer.model_max_length == 77
    ids = tokenizer(text, padding="max_length", max_length=77, truncation=True).input_ids
    assert len(ids) == 77 and ids[0] == tokenizer.bos_token_id
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    # Every byte has a symbol: nothing maps to the unknown/end token.
    assert tokenizer.eos_token_id not in tokenizer(text, add_special_tokens=False).input_ids


def test_the_apps_text_encoder_loader_accepts_the_folder(folder):
    from webui.models.text_encoder import load_tokenizer as app_load_tokenizer

    tokenizer = app_load_tokenizer([folder], None, model_name="demo", hint_folder=None)
    assert tokenizer("a green heart").input_ids == load_tokenizer(folder)("a green heart").input_ids

"""A1111 prompt syntax: attention weights, escapes, BREAK, 75-token chunks, weighting of the embedding."""

from __future__ import annotations

import pytest
import torch

from webui.pipeline.conditioning import encode_chunks, encode_conditioning, encode_prompt, token_ids
from webui.pipeline.prompts import TokenIds, chunk_prompt, parse_prompt_attention

# The examples in the docstring of AUTOMATIC1111's prompt_parser.parse_prompt_attention.
A1111_EXAMPLES = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ("a ", 1.0),
            ("house", 1.1 * 1.1 * 1.3),
            (" ", 1.1),
            ("on", 1.0),
            (" a ", 1.1),
            ("hill", 0.55),
            (", sun, ", 1.1),
            ("sky", 1.1**4),
            (".", 1.1),
        ],
    ),
]


@pytest.mark.parametrize(("prompt", "expected"), A1111_EXAMPLES)
def test_parse_prompt_attention_matches_a1111_documented_examples(prompt, expected):
    parsed = parse_prompt_attention(prompt)
    assert [text for text, _ in parsed] == [text for text, _ in expected]
    assert [w for _, w in parsed] == pytest.approx([w for _, w in expected])


def test_square_brackets_divide_and_explicit_weight_multiplies():
    assert parse_prompt_attention("[word]") == [("word", pytest.approx(1 / 1.1))]
    assert parse_prompt_attention("(word:1.3)") == [("word", pytest.approx(1.3))]
    assert parse_prompt_attention("((word))") == [("word", pytest.approx(1.21))]


def test_break_is_a_marker_and_unparsable_prompts_are_literal():
    assert parse_prompt_attention("a cat BREAK a dog") == [("a cat", 1.0), ("BREAK", -1.0), ("a dog", 1.0)]
    # "(x:.)" has no number after the colon: used literally (the open bracket still weights it), never raises.
    for weird in ["(x:.)", "\\", ")))", "]]][[", ":", "(a:1.2", "", "((((((("]:
        parsed = parse_prompt_attention(weird)
        assert isinstance(parsed, list) and parsed
    assert parse_prompt_attention("(x:.)") == [("x:.)", pytest.approx(1.1))]


IDS = TokenIds(bos=1000, eos=1001, pad=1002, comma=7)


def word_tokenize(text: str) -> list[int]:
    """One token per word, ',' -> 7: enough to test chunking without a vocabulary."""
    return [7 if word == "," else 10 + len(word) for word in text.replace(",", " , ").split()]


def test_200_token_prompt_gives_3_chunks_each_wrapped_in_start_and_end_tokens():
    chunks, count = chunk_prompt(" ".join(["cat"] * 200), word_tokenize, IDS)
    assert count == 200
    assert len(chunks) == 3
    for chunk in chunks:
        assert len(chunk.tokens) == 77 and len(chunk.multipliers) == 77
        assert chunk.tokens[0] == IDS.bos
    assert chunks[0].tokens[-1] == IDS.eos and chunks[1].tokens[-1] == IDS.eos
    # the last chunk: 50 tokens, end token, then padding
    assert chunks[2].tokens[1:52] == [13] * 50 + [IDS.eos]
    assert chunks[2].tokens[52:] == [IDS.pad] * 25


def test_break_starts_a_new_chunk_and_weights_follow_tokens():
    chunks, _ = chunk_prompt("(a:1.5) BREAK bb", word_tokenize, IDS)
    assert len(chunks) == 2
    assert chunks[0].tokens[:3] == [IDS.bos, 11, IDS.eos]
    assert chunks[0].multipliers[:3] == [1.0, 1.5, 1.0]
    assert chunks[1].tokens[:3] == [IDS.bos, 12, IDS.eos]


def test_chunk_cut_moves_words_after_a_recent_comma_to_the_next_chunk():
    prompt = " ".join(["cat"] * 70) + " , " + " ".join(["dog"] * 10)
    chunks, _ = chunk_prompt(prompt, word_tokenize, IDS)
    assert len(chunks) == 2
    # the comma is token 71; the 10 dogs after it go together into chunk 2
    assert chunks[0].tokens[1:73] == [13] * 70 + [7, IDS.eos]
    assert chunks[1].tokens[1:12] == [13] * 10 + [IDS.eos]


def test_empty_prompt_is_one_chunk():
    chunks, count = chunk_prompt("", word_tokenize, IDS)
    assert count == 0 and len(chunks) == 1
    assert chunks[0].tokens == [IDS.bos, IDS.eos] + [IDS.pad] * 75


@pytest.fixture(scope="module")
def encoder(tiny_components):
    from webui.models.text_encoder import TextEncoder

    return TextEncoder(tiny_components.tokenizer, tiny_components.text_model)


def test_plain_prompt_encodes_like_a_single_padded_clip_call(encoder):
    z = encode_prompt(encoder, "the cat")
    assert z.shape == (1, 77, 128)
    torch.testing.assert_close(z, encoder.encode_text("the cat"), rtol=0, atol=0)


def test_long_prompt_concatenates_chunks_along_the_sequence_axis(encoder):
    prompt = " ".join(["cat"] * 100)  # 100 tokens ("cat</w>" is one token in the tiny vocabulary)
    assert len(encoder.tokenize(prompt)) == 100
    z = encode_prompt(encoder, prompt)
    assert z.shape == (1, 2 * 77, 128)
    torch.testing.assert_close(z[:, :77], encoder.encode_text(" ".join(["cat"] * 75)), rtol=0, atol=1e-6)


def test_negative_prompt_is_padded_to_the_same_chunk_count_with_the_empty_prompt(encoder):
    c = encode_conditioning(encoder, " ".join(["cat"] * 160), "dog")
    assert c.chunks == 3
    assert c.cond.shape == c.uncond.shape == (1, 3 * 77, 128)
    empty = encoder.encode_text("")
    torch.testing.assert_close(c.uncond[:, :77], encoder.encode_text("dog"), rtol=0, atol=1e-6)
    torch.testing.assert_close(c.uncond[:, 77:154], empty, rtol=0, atol=1e-6)
    torch.testing.assert_close(c.uncond[:, 154:], empty, rtol=0, atol=1e-6)


def test_weighting_multiplies_token_embeddings_then_restores_the_mean(encoder):
    ids = token_ids(encoder)
    plain_chunks, _ = chunk_prompt("the cat dog", encoder.tokenize, ids)
    weighted_chunks, _ = chunk_prompt("the (cat:1.5) dog", encoder.tokenize, ids)
    assert plain_chunks[0].tokens == weighted_chunks[0].tokens
    z = encode_chunks(encoder, plain_chunks)[0]
    zw = encode_chunks(encoder, weighted_chunks)[0]
    weights = torch.tensor(weighted_chunks[0].multipliers)
    cat = weighted_chunks[0].multipliers.index(1.5)
    expected = z * weights[:, None]
    expected = expected * (z.mean() / expected.mean())
    torch.testing.assert_close(zw, expected)
    torch.testing.assert_close(zw.mean(), z.mean())
    # the weighted token moved (relative to the others) by the factor 1.5
    ratio = (zw[cat] / z[cat]) / (zw[0] / z[0])
    torch.testing.assert_close(ratio, torch.full_like(ratio, 1.5), rtol=1e-4, atol=1e-4)


# Examples from the docstring of AUTOMATIC1111's get_learned_conditioning_prompt_schedules (10 steps).
SCHEDULE_EXAMPLES = [
    ("test", [(10, "test")]),
    ("a [b:3]", [(3, "a "), (10, "a b")]),
    ("a [b: 3]", [(3, "a "), (10, "a b")]),
    ("a [[[b]]:2]", [(2, "a "), (10, "a [[b]]")]),
    ("[(a:2):3]", [(3, ""), (10, "(a:2)")]),
    ("a[b:[c:d:2]:1]e", [(1, "abe"), (2, "ace"), (10, "ade")]),
    ("a [unbalanced", [(10, "a [unbalanced")]),
    ("a [b:.5] c", [(5, "a  c"), (10, "a b c")]),
    ("((a][:b:c [d:3]", [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
    ("[a|(b:1.1)]", [(i, "a" if i % 2 else "(b:1.1)") for i in range(1, 11)]),
    ("[fe|]male", [(i, "female" if i % 2 else "male") for i in range(1, 11)]),
    ("a [fantasy:cyberpunk:16] landscape", [(10, "a fantasy landscape")]),  # 16 > 10 steps: never switches
    ("[word] (x:1.2) [y:z]", [(10, "[word] (x:1.2) [y:z]")]),  # attention brackets are not prompt editing
]


@pytest.mark.parametrize(("prompt", "expected"), SCHEDULE_EXAMPLES)
def test_prompt_editing_schedules_match_a1111(prompt, expected):
    from webui.pipeline.prompt_schedule import prompt_schedule

    assert prompt_schedule(prompt, 10) == expected


def test_prompt_editing_switches_the_context_after_the_given_step(encoder):
    c = encode_conditioning(encoder, "[the cat:dog:2]", "", steps=4)
    assert [end for end, _ in c.conds] == [2, 4]
    cat, dog = encoder.encode_text("the cat"), encoder.encode_text("dog")
    for step in (0, 1, 2):  # A1111: the first text while the 0-based step <= 2
        torch.testing.assert_close(c.at(step)[0], cat, rtol=0, atol=1e-6)
    torch.testing.assert_close(c.at(3)[0], dog, rtol=0, atol=1e-6)
    torch.testing.assert_close(c.at(3)[1], encoder.encode_text(""), rtol=0, atol=1e-6)


def test_token_counter_reports_tokens_and_chunk_capacity(encoder):
    from webui.pipeline.conditioning import count_tokens

    assert count_tokens(encoder, "the cat") == (2, 75)
    assert count_tokens(encoder, " ".join(["cat"] * 80)) == (80, 150)
    assert count_tokens(encoder, "a BREAK b") == (2, 150)

"""TextEncoder: raw token ids for the prompt parser, and clip skip as AUTOMATIC1111 defines it."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPTextModel

from webui.models.text_encoder import TextEncoder


@pytest.fixture(scope="module")
def encoder(tiny_components) -> TextEncoder:
    return TextEncoder(tiny_components.tokenizer, tiny_components.text_model)


def padded(encoder: TextEncoder, text: str) -> torch.Tensor:
    ids = [encoder.bos_id, *encoder.tokenize(text), encoder.eos_id]
    return torch.tensor([ids + [encoder.pad_id] * (77 - len(ids))])


def test_special_token_ids(encoder):
    assert (encoder.bos_id, encoder.eos_id, encoder.pad_id) == (518, 519, 519)
    assert encoder.chunk_length == 75


def test_tokenize_has_no_special_tokens_and_no_truncation(encoder):
    assert encoder.tokenize("the cat") == [513, 515]
    assert encoder.tokenize("the " * 100) == [513] * 100
    assert encoder.tokenize("") == []


@pytest.mark.parametrize("text", ["\x00\x01 zero bytes", "🙂 émoji ünïcode", "(((a:1.5))) [b] BREAK", "x" * 10000])
def test_tokenize_never_raises_and_covers_every_byte(encoder, text):
    ids = encoder.tokenize(text)
    assert ids and all(0 <= i < 518 for i in ids)


def test_clip_skip_1_is_the_last_hidden_state(encoder, tiny_components):
    ids = torch.cat([padded(encoder, "a cat"), padded(encoder, "the dog")])
    context = encoder.encode_ids(ids)
    assert context.shape == (2, 77, 128)
    with torch.no_grad():
        torch.testing.assert_close(context, tiny_components.text_model(ids).last_hidden_state, rtol=0, atol=0)


def test_clip_skip_2_is_the_normed_output_of_the_layer_before_last(encoder, tiny_components):
    """Independent check: a copy of the model with its last layer removed gives clip skip 2."""
    config = tiny_components.text_model.config
    shallow = CLIPTextModel(type(config)(**{**config.to_dict(), "num_hidden_layers": 1})).eval()
    state = {k: v for k, v in tiny_components.text_model.state_dict().items() if "layers.1." not in k}
    shallow.load_state_dict(state, strict=True)
    ids = padded(encoder, "the cat")
    with torch.no_grad():
        expected = shallow(ids).last_hidden_state
    torch.testing.assert_close(encoder.encode_ids(ids, clip_skip=2), expected)
    assert not torch.allclose(encoder.encode_ids(ids, clip_skip=1), expected)


def test_clip_skip_beyond_depth_is_clamped_and_below_one_refused(encoder):
    ids = padded(encoder, "a dog")
    torch.testing.assert_close(encoder.encode_ids(ids, clip_skip=12), encoder.encode_ids(ids, clip_skip=3))
    with pytest.raises(ValueError, match="clip_skip"):
        encoder.encode_ids(ids, clip_skip=0)


def test_encode_text_pads_with_end_token(encoder):
    context = encoder.encode_text("a cat")
    torch.testing.assert_close(context, encoder.encode_ids(padded(encoder, "a cat")))
    assert not context.requires_grad

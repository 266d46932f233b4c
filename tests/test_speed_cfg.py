"""Classifier-free guidance costs one UNet call per step, and a batch's prompt is encoded once (issue 19)."""

from __future__ import annotations

import pytest

from webui.models.loading import load_model
from webui.pipeline import GenerationRequest, generate, resolve_request
from webui.sampling import create_sampler_registry


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return load_model(tiny_checkpoint.path, compute_hash=False)


def count_calls(module, shapes: list) -> object:
    """Record the shape of the first tensor of every call (positional or keyword, as CLIP gets them)."""

    def hook(m, args, kwargs, out) -> None:
        first = args[0] if args else next(iter(kwargs.values()))
        shapes.append(tuple(first.shape))

    return module.register_forward_hook(hook, with_kwargs=True)


@pytest.mark.parametrize(("negative", "encodes"), [("blurry", 2), ("a cat", 1)])
def test_cond_and_uncond_share_one_unet_call_and_each_text_is_encoded_once(model, negative, encodes):
    unet_calls: list = []
    text_calls: list = []
    hooks = [count_calls(model.unet, unet_calls), count_calls(model.text_encoder.model, text_calls)]
    try:
        request = GenerationRequest(
            prompt="a cat", negative_prompt=negative, steps=3, batch_size=3, cfg_scale=7, sampler_name="DDIM"
        )
        result = generate(model, resolve_request(request, create_sampler_registry(), (64, 64)))
    finally:
        for hook in hooks:
            hook.remove()
    assert len(result.images) == 3
    assert unet_calls == [(6, 4, 8, 8)] * 3  # one call per step: [uncond x3; cond x3]
    assert len(text_calls) == encodes  # the three images share one encoding of each distinct text

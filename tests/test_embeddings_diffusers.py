"""Textual-inversion embeddings give diffusers' image: A1111 ``.pt`` files in the prompt and the negative prompt,
loaded by us from the embeddings folder and by diffusers with ``load_textual_inversion`` (CPU, fp32, tiny model)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from tests import test_pipeline_diffusers as reference
from webui.extra_networks.embeddings import EmbeddingVocabulary, scan_embeddings
from webui.pipeline.conditioning import encode_conditioning
from webui.pipeline.requests import GenerationRequest

diffusers = pytest.importorskip("diffusers")

# The reference test's fixtures (the diffusers parts built from our tiny model's weights, our loaded model).
diffusers_parts, tiny_model, samplers = reference.diffusers_parts, reference.tiny_model, reference.samplers
max_pixel_difference, pipeline, resolve_and_generate = (
    reference.max_pixel_difference,
    reference.pipeline,
    reference.resolve_and_generate,
)

SEED, STEPS = 4321, 8
PROMPT, NEGATIVE = "the cat, goodstyle", "badthing dog"


def write_a1111_embedding(path: Path, vectors: torch.Tensor, step: int = 500) -> Path:
    """An embedding as A1111's ``Embedding.save`` writes it."""
    torch.save(
        {
            "string_to_token": {"*": 265},
            "string_to_param": {"*": vectors},
            "name": path.stem,
            "step": step,
            "sd_checkpoint": "0123456789",
            "sd_checkpoint_name": "tiny",
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def embeddings_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("embeddings")
    generator = torch.Generator().manual_seed(7)
    write_a1111_embedding(folder / "goodstyle.pt", torch.randn(2, 128, generator=generator))
    (folder / "negative").mkdir()
    write_a1111_embedding(folder / "negative" / "badthing.pt", torch.randn(3, 128, generator=generator))
    return folder


@pytest.fixture(scope="module")
def vocabulary(embeddings_dir: Path, tiny_model) -> EmbeddingVocabulary:
    found = scan_embeddings(embeddings_dir, tiny_model.text_encoder.hidden_size)
    assert sorted(found.loaded) == ["badthing", "goodstyle"] and not found.errors
    return EmbeddingVocabulary(found.loaded.values(), tiny_model.text_encoder.tokenize)


@pytest.fixture(scope="module")
def diffusers_pipe_with_embeddings(diffusers_parts, embeddings_dir: Path):
    from transformers import CLIPTokenizer

    parts = dict(diffusers_parts)
    # load_textual_inversion grows the tokenizer and the text encoder: give it copies of the shared ones.
    parts["text_encoder"] = copy.deepcopy(parts["text_encoder"])
    parts["tokenizer"] = CLIPTokenizer.from_pretrained(parts["tokenizer"].name_or_path, model_max_length=77)
    pipe = pipeline(diffusers.StableDiffusionPipeline, parts, "Euler")
    pipe.load_textual_inversion(str(embeddings_dir / "goodstyle.pt"), token="goodstyle")
    pipe.load_textual_inversion(str(embeddings_dir / "negative" / "badthing.pt"), token="badthing")
    return pipe


def test_contexts_equal_diffusers_prompt_embeds(diffusers_pipe_with_embeddings, tiny_model, vocabulary):
    pipe = diffusers_pipe_with_embeddings
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(PROMPT, "cpu", 1, True, negative_prompt=NEGATIVE)
    ours = encode_conditioning(tiny_model.text_encoder, PROMPT, NEGATIVE, embeddings=vocabulary)
    torch.testing.assert_close(ours.cond, cond, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.uncond, uncond, atol=1e-5, rtol=1e-5)
    assert ours.embeddings_used == ("goodstyle", "badthing")
    # and the words did something: without the embeddings the same text encodes differently
    plain = encode_conditioning(tiny_model.text_encoder, PROMPT, NEGATIVE)
    assert (plain.cond - ours.cond).abs().max() > 0.1


def test_txt2img_with_embeddings_equals_diffusers_within_one_level(
    diffusers_pipe_with_embeddings, tiny_model, samplers, vocabulary
):
    from webui.pipeline import generate, native_size, resolve_request

    with torch.no_grad():
        expected = diffusers_pipe_with_embeddings(
            PROMPT,
            negative_prompt=NEGATIVE,
            num_inference_steps=STEPS,
            guidance_scale=7.0,
            height=64,
            width=64,
            generator=torch.Generator("cpu").manual_seed(SEED),
        ).images[0]
    request = GenerationRequest(
        prompt=PROMPT, negative_prompt=NEGATIVE, sampler_name="Euler", steps=STEPS, cfg_scale=7.0, seed=SEED
    )
    resolved = resolve_request(request, samplers, native_size(tiny_model))
    ours = generate(tiny_model, resolved, embeddings=vocabulary)
    assert max_pixel_difference(ours.images[0], expected) <= 1
    without = resolve_and_generate(tiny_model, samplers, request)
    assert max_pixel_difference(without.images[0], expected) > 5
    goodstyle, badthing = vocabulary.embeddings["goodstyle"], vocabulary.embeddings["badthing"]
    assert f'TI hashes: "goodstyle: {goodstyle.shorthash}, badthing: {badthing.shorthash}"' in ours.infotexts[0]
    assert len(goodstyle.shorthash or "") == 12


@pytest.mark.slow
def test_embeddings_on_a_diffusers_folder_model_equal_diffusers(tmp_path, tiny_components, embeddings_dir, samplers):
    """The same two A1111 embeddings on a model loaded from a diffusers folder (its own text-encoder path)."""
    from transformers import CLIPTokenizer

    from tests.test_checkpoint_diffusers import TINY_UNET, TINY_VAE, perturbed, write_diffusers_folder
    from webui.models.loading import load_model
    from webui.pipeline import generate, native_size, resolve_request

    unet = perturbed(diffusers.UNet2DConditionModel(**TINY_UNET), 1)
    vae = perturbed(diffusers.AutoencoderKL(**TINY_VAE), 2)
    folder = write_diffusers_folder(
        tmp_path / "tiny-diffusers", unet, vae, tiny_components.text_model, tiny_components.tokenizer_dir
    )
    model = load_model(folder, native_size=(64, 64))
    found = scan_embeddings(embeddings_dir, model.text_encoder.hidden_size)
    vocabulary = EmbeddingVocabulary(found.loaded.values(), model.text_encoder.tokenize)
    parts = {
        "unet": unet,
        "vae": vae,
        "text_encoder": copy.deepcopy(tiny_components.text_model),
        "tokenizer": CLIPTokenizer.from_pretrained(str(tiny_components.tokenizer_dir), model_max_length=77),
    }
    pipe = pipeline(diffusers.StableDiffusionPipeline, parts, "Euler")
    pipe.load_textual_inversion(str(embeddings_dir / "goodstyle.pt"), token="goodstyle")
    pipe.load_textual_inversion(str(embeddings_dir / "negative" / "badthing.pt"), token="badthing")
    with torch.no_grad():
        expected = pipe(
            PROMPT,
            negative_prompt=NEGATIVE,
            num_inference_steps=STEPS,
            guidance_scale=7.0,
            height=64,
            width=64,
            generator=torch.Generator("cpu").manual_seed(SEED),
        ).images[0]
    request = GenerationRequest(
        prompt=PROMPT, negative_prompt=NEGATIVE, sampler_name="Euler", steps=STEPS, cfg_scale=7.0, seed=SEED
    )
    ours = generate(model, resolve_request(request, samplers, native_size(model)), embeddings=vocabulary)
    assert max_pixel_difference(ours.images[0], expected) <= 1
    without = generate(model, resolve_request(request, samplers, native_size(model)))
    assert max_pixel_difference(without.images[0], expected) > 5

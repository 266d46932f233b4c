"""``<lora:...>`` tags: parsing, names and aliases, the request's LoRAs, ``Lora hashes``, and jobs that use them."""

from __future__ import annotations

import hashlib

import pytest
import torch

from tests.support.lora_files import kohya_specs_from_model, write_kohya_lora
from webui.extra_networks.lora_library import LoraLibrary, addnet_hash, lora_hashes_text
from webui.extra_networks.prompt_tags import parse_tags, strip_tags
from webui.pipeline import InvalidRequest, generate, native_size, resolve_request
from webui.pipeline.infotext import format_infotext, parse_infotext
from webui.pipeline.requests import GenerationRequest


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    from webui.models.loading import load_model

    return load_model(tiny_checkpoint.path, native_size=(64, 64))


@pytest.fixture(scope="module")
def samplers():
    from webui.sampling import create_sampler_registry

    return create_sampler_registry()


@pytest.fixture(scope="module")
def folder(tmp_path_factory, model):
    root = tmp_path_factory.mktemp("Lora")
    specs = kohya_specs_from_model(model)
    write_kohya_lora(root / "styles" / "paper_cut.safetensors", specs, seed=1, metadata={"ss_output_name": "papercut"})
    write_kohya_lora(root / "detail.safetensors", specs, seed=2)
    return root


def test_tags_are_parsed_and_removed_as_a1111_does():
    text, tags = parse_tags("a cat <lora:paper_cut:0.6>, (red:1.2) <lora:x:0.5:0.25> <hypernet:h:1> <lora:y:unet=0.3>")
    assert text == "a cat , (red:1.2)   "
    assert [(t.kind, t.items) for t in tags] == [
        ("lora", ("paper_cut", "0.6")),
        ("lora", ("x", "0.5", "0.25")),
        ("hypernet", ("h", "1")),
        ("lora", ("y", "unet=0.3")),
    ]
    assert tags[3].positional == ("y",) and tags[3].named == {"unet": "0.3"}
    assert strip_tags("<lora:a:1>dog") == "dog"
    assert strip_tags("a < b > c") == "a < b > c"  # not a tag: no name:args


def test_names_aliases_weights_and_hashes(folder):
    library = LoraLibrary(folder)
    uses = library.resolve(
        "a <lora:paper_cut:0.6> b <lora:detail> <lora:papercut:0.5:0.25>", "<lora:detail:te=0.1:unet=2>"
    )
    assert [(u.name, u.path.name, u.te_weight, u.unet_weight) for u in uses] == [
        ("paper_cut", "paper_cut.safetensors", 0.6, 0.6),
        ("detail", "detail.safetensors", 1.0, 1.0),
        ("papercut", "paper_cut.safetensors", 0.5, 0.25),  # the ss_output_name alias
        ("detail", "detail.safetensors", 0.1, 2.0),
    ]
    path = folder / "detail.safetensors"
    data = path.read_bytes()
    header_length = int.from_bytes(data[:8], "little")
    assert addnet_hash(path) == hashlib.sha256(data[8 + header_length :]).hexdigest()  # the tensors only
    assert uses[1].short_hash == addnet_hash(path)[:12]
    assert (
        lora_hashes_text(uses)
        == f"paper_cut: {uses[0].short_hash}, detail: {uses[1].short_hash}, papercut: {uses[0].short_hash}"
    )


def test_unknown_name_names_the_closest_ones_and_a_new_file_is_found_without_refresh(folder, model, samplers):
    library = LoraLibrary(folder)
    request = GenerationRequest(prompt="<lora:paper_cutt:1> cat")
    with pytest.raises(InvalidRequest, match=r"prompt: unknown LoRA 'paper_cutt'.*closest: paper_cut") as err:
        resolve_request(request, samplers, (64, 64), loras=library)
    assert err.value.field == "prompt"
    write_kohya_lora(folder / "new_one.safetensors", kohya_specs_from_model(model, text_encoder=False), seed=3)
    resolved = resolve_request(GenerationRequest(prompt="<lora:new_one:1>"), samplers, (64, 64), loras=library)
    assert [u.name for u in resolved.loras] == ["new_one"]
    (folder / "new_one.safetensors").unlink()


@pytest.mark.parametrize("tag", ["<lora:detail:lots>", "<lora:detail:1:1:8>"])
def test_bad_tag_arguments_are_a_bad_prompt(folder, samplers, tag):
    with pytest.raises(InvalidRequest, match="prompt: <lora:detail"):
        resolve_request(GenerationRequest(prompt=tag), samplers, (64, 64), loras=LoraLibrary(folder))


def test_without_a_lora_folder_a_tag_is_an_error(samplers):
    with pytest.raises(InvalidRequest, match="unknown LoRA 'x': this app has no LoRA folder"):
        resolve_request(GenerationRequest(prompt="<lora:x:1>"), samplers, (64, 64))


def test_a_job_with_loras_writes_lora_hashes_and_leaves_every_weight_as_it_was(folder, model, samplers):
    library = LoraLibrary(folder)
    before = {
        k: v.clone() for k, v in [*model.unet.state_dict().items(), *model.text_encoder.model.state_dict().items()]
    }
    request = GenerationRequest(
        prompt="the cat <lora:detail:0.7>", negative_prompt="<lora:paper_cut:0.2>", steps=3, seed=5
    )
    resolved = resolve_request(request, samplers, native_size(model), loras=library)
    result = generate(model, resolved)
    params = parse_infotext(result.infotexts[0])
    assert params["Prompt"] == "the cat <lora:detail:0.7>"  # the tags stay in the infotext's prompt, as in A1111
    assert params["Lora hashes"] == f"detail: {resolved.loras[0].short_hash}, paper_cut: {resolved.loras[1].short_hash}"
    after = [*model.unet.state_dict().items(), *model.text_encoder.model.state_dict().items()]
    assert all(torch.equal(v, before[k]) for k, v in after)
    plain = generate(model, resolve_request(GenerationRequest(prompt="the cat", steps=3, seed=5), samplers, (64, 64)))
    assert plain.images[0].tobytes() != result.images[0].tobytes()
    assert "Lora hashes" not in format_infotext(plain.request, seed=5)


def test_tags_are_not_encoded_as_text(folder, model, samplers):
    """A LoRA at weight 0 changes nothing, so the image equals the prompt without the tag."""
    library = LoraLibrary(folder)
    with_tag = GenerationRequest(prompt="the cat <lora:detail:0>", steps=2, seed=9)
    without = GenerationRequest(prompt="the cat", steps=2, seed=9)
    a = generate(model, resolve_request(with_tag, samplers, (64, 64), loras=library)).images[0]
    b = generate(model, resolve_request(without, samplers, (64, 64), loras=library)).images[0]
    assert a.tobytes() == b.tobytes()

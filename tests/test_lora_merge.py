"""LoRA loading, key mapping, merging and the exact undo (kohya-ss LoRA and LoCon, LoHa, LoKr)."""

from __future__ import annotations

import pytest
import torch

from tests.support.lora_files import kohya_specs_from_model, write_kohya_lora
from webui.extra_networks.lora_file import LoraModule, LoraNetwork, module_key, read_lora
from webui.extra_networks.lora_keys import TEXT_ENCODER, UNET, model_key_map, target_parameter, unet_diffusers_names
from webui.extra_networks.lora_merge import LoraPatcher, LoraUse, lora_deltas, loras_merged, model_patcher


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    from webui.models.loading import load_model

    return load_model(tiny_checkpoint.path, native_size=(64, 64))


def all_tensors(model) -> dict[str, torch.Tensor]:
    return {
        **{f"unet.{k}": v for k, v in model.unet.state_dict().items()},
        **{f"te.{k}": v for k, v in model.text_encoder.model.state_dict().items()},
    }


def use(path, weight=0.8, te=None) -> LoraUse:
    return LoraUse(path.stem, path, weight if te is None else te, weight)


def test_our_unet_names_agree_with_the_diffusers_checkpoint_converter(model):
    """Our CompVis->diffusers module names are what diffusers' own key layout gives (its converter's inverse)."""
    diffusers = pytest.importorskip("diffusers")
    from tests.test_checkpoint_diffusers import TINY_UNET
    from webui.models.diffusers_folder import unet_key_map

    diffusers_keys = diffusers.UNet2DConditionModel(**TINY_UNET).state_dict().keys()
    reference = unet_key_map(diffusers_keys)  # CompVis key -> diffusers key, checked against diffusers elsewhere
    ours = unet_diffusers_names(model.unet, model.unet.config.num_res_blocks)
    layers = [n for n, m in model.unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    assert set(ours) == set(layers)  # every Linear/Conv2d of the UNet can take a LoRA
    assert {f"{k}.weight": f"{v}.weight" for k, v in ours.items()} == {
        f"{k}.weight": reference[f"{k}.weight"] for k in ours
    }


def test_key_map_spells_modules_as_kohya_does(model):
    keys = model_key_map(model)
    assert keys["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"].module == (
        "input_blocks.1.1.transformer_blocks.0.attn1.to_q"
    )
    assert keys["lora_unet_mid_block_resnets_0_conv1"].module == "middle_block.0.in_layers.2"
    assert keys["lora_unet_up_blocks_1_upsamplers_0_conv"].module == "output_blocks.3.2.conv"
    assert keys["lora_unet_input_blocks_1_1_proj_in"].module == "input_blocks.1.1.proj_in"  # early CompVis spelling
    te = keys["lora_te_text_model_encoder_layers_1_mlp_fc1"]
    assert (te.component, te.shape) == (TEXT_ENCODER, (256, 128))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "lora_unet_mid_block_attentions_0_proj_in.lora_down.weight",
            ("lora_unet_mid_block_attentions_0_proj_in", "lora_down.weight"),
        ),
        (
            "unet.mid_block.attentions.0.proj_in.lora_B.weight",
            ("lora_unet_mid_block_attentions_0_proj_in", "lora_up.weight"),
        ),
        (
            "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight",
            ("lora_te_text_model_encoder_layers_0_self_attn_q_proj", "lora_down.weight"),
        ),
        (
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.up.weight",
            ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0", "lora_up.weight"),
        ),
        ("unet.mid_block.attentions.0.proj_in.alpha", ("lora_unet_mid_block_attentions_0_proj_in", "alpha")),
        ("model.diffusion_model.out.2.weight", None),
    ],
)
def test_every_layout_becomes_the_kohya_module_key(name, expected):
    assert module_key(name) == expected


def test_delta_is_weight_times_alpha_over_rank_times_up_down_for_linear_and_locon(model, tmp_path):
    keys = model_key_map(model)
    specs = [
        (
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k",
            keys["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"].shape,
        ),
        ("lora_unet_down_blocks_1_resnets_0_conv1", keys["lora_unet_down_blocks_1_resnets_0_conv1"].shape),  # 3x3 LoCon
    ]
    path = write_kohya_lora(tmp_path / "two.safetensors", specs, rank=4, alpha=2.0)
    network = read_lora(path)
    deltas = lora_deltas(network, keys, te_weight=0.3, unet_weight=0.8)
    for key, shape in specs:
        down = network.modules[key].parts["lora_down.weight"]
        up = network.modules[key].parts["lora_up.weight"]
        expected = 0.8 * (2.0 / 4) * (up.flatten(1) @ down.flatten(1)).reshape(shape)
        assert torch.allclose(deltas[keys[key]], expected, rtol=1e-6, atol=1e-7)
    conv = deltas[keys["lora_unet_down_blocks_1_resnets_0_conv1"]]
    assert conv.shape == (64, 32, 3, 3)


def test_no_alpha_means_scale_one_and_te_weight_applies_to_the_text_encoder(model, tmp_path):
    keys = model_key_map(model)
    key = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    path = write_kohya_lora(tmp_path / "te.safetensors", [(key, keys[key].shape)], rank=2, alpha=None)
    module = read_lora(path).modules[key]
    delta = lora_deltas(read_lora(path), keys, te_weight=0.5, unet_weight=9.0)[keys[key]]
    expected = 0.5 * module.parts["lora_up.weight"] @ module.parts["lora_down.weight"]
    assert torch.allclose(delta, expected, rtol=1e-6, atol=1e-7)


def test_loha_and_lokr_deltas(model):
    keys = model_key_map(model)
    key = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q"  # (64, 64)
    g = torch.Generator().manual_seed(3)
    loha = {
        n: torch.randn(s, generator=g)
        for n, s in [("hada_w1_a", (64, 4)), ("hada_w1_b", (4, 64)), ("hada_w2_a", (64, 4)), ("hada_w2_b", (4, 64))]
    }
    loha["alpha"] = torch.tensor(2.0)
    lokr = {
        "lokr_w1": torch.randn(8, 8, generator=g),
        "lokr_w2_a": torch.randn(8, 2, generator=g),
        "lokr_w2_b": torch.randn(2, 8, generator=g),
        "alpha": torch.tensor(1.0),
    }
    for parts, expected in [
        (loha, (loha["hada_w1_a"] @ loha["hada_w1_b"]) * (loha["hada_w2_a"] @ loha["hada_w2_b"]) * 0.5),
        (lokr, torch.kron(lokr["lokr_w1"], lokr["lokr_w2_a"] @ lokr["lokr_w2_b"]) * 0.5),
    ]:
        network = LoraNetwork(path=__import__("pathlib").Path("x.safetensors"), modules={key: LoraModule(key, parts)})
        delta = lora_deltas(network, keys, 1.0, 1.0)[keys[key]]
        assert torch.allclose(delta, expected, rtol=1e-5, atol=1e-6)


def test_merge_changes_the_weights_and_restore_gives_every_tensor_back_bit_for_bit(model, tmp_path):
    path = write_kohya_lora(tmp_path / "all.safetensors", kohya_specs_from_model(model), rank=4, seed=1)
    before = {k: v.clone() for k, v in all_tensors(model).items()}
    pointers = {k: v.data_ptr() for k, v in all_tensors(model).items()}
    keys = model_key_map(model)
    q = keys["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"]
    with loras_merged(model, [use(path)]) as reused:
        assert not reused
        merged_q = target_parameter(model, q).detach().clone()
        changed = [k for k, v in all_tensors(model).items() if not torch.equal(v, before[k])]
        # every Linear/Conv2d weight of the UNet and the text encoder: all that the file touches
        assert len(changed) == len({(t.component, t.module) for t in keys.values()})
    network = read_lora(path)
    delta = lora_deltas(network, keys, 0.8, 0.8)[q]
    assert torch.allclose(merged_q, before[f"unet.{q.parameter}"] + delta, atol=1e-6)
    after = all_tensors(model)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert {k: v.data_ptr() for k, v in after.items()} == pointers  # the original tensors themselves


def test_the_same_lora_set_reuses_the_merged_weights(model, tmp_path):
    path = write_kohya_lora(tmp_path / "again.safetensors", kohya_specs_from_model(model, text_encoder=False), seed=2)
    patcher = model_patcher(model)
    assert model_patcher(model) is patcher  # one per model
    with loras_merged(model, [use(path)]) as first:
        assert not first
    with loras_merged(model, [use(path)]) as second:
        assert second
    with loras_merged(model, [use(path, weight=0.5)]) as other_weight:
        assert not other_weight
    assert not patcher.applied


def test_a_failing_lora_leaves_the_model_as_it_was(model, tmp_path):
    good = write_kohya_lora(tmp_path / "good.safetensors", kohya_specs_from_model(model), seed=4)
    bad = write_kohya_lora(tmp_path / "bad.safetensors", [("lora_unet_no_such_layer", (8, 8))], seed=5)
    before = {k: v.clone() for k, v in all_tensors(model).items()}
    with pytest.raises(
        ValueError, match=r"bad.safetensors: 1 of its 1 modules match no layer .*lora_unet_no_such_layer"
    ):
        with loras_merged(model, [use(good), use(bad)]):
            pass
    assert all(torch.equal(v, before[k]) for k, v in all_tensors(model).items())


def test_patcher_merges_in_float32_and_casts_back_for_half_weights(tiny_components, tmp_path):
    """A half-precision model gets ``(w.float() + delta).half()``, not a sum rounded at every step."""
    import copy

    from webui.models.model import StableDiffusionModel

    unet = copy.deepcopy(tiny_components.unet).half()
    model = StableDiffusionModel(
        unet=unet, vae=None, text_encoder=type("TE", (), {"model": copy.deepcopy(tiny_components.text_model)})(),
        alphas_cumprod=torch.zeros(1000), name="half", short_hash=None, device=torch.device("cpu"), dtype=torch.float16,
    )  # fmt: skip
    keys = model_key_map(model)
    key = "lora_unet_mid_block_attentions_0_proj_out"
    path = write_kohya_lora(tmp_path / "h.safetensors", [(key, keys[key].shape)], seed=6)
    original = target_parameter(model, keys[key]).detach().clone()
    patcher = LoraPatcher(model)
    patcher.apply([use(path, 1.0)])
    delta = lora_deltas(read_lora(path), keys, 1.0, 1.0)[keys[key]]
    merged = target_parameter(model, keys[key])
    assert merged.dtype == torch.float16
    assert torch.equal(merged, (original.float() + delta).half())
    patcher.restore()
    assert torch.equal(target_parameter(model, keys[key]), original)
    assert keys[key].component == UNET

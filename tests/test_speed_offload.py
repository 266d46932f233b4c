"""--medvram / --lowvram (issue 19): what the CPU can check honestly.

There is no second device here, so storage and execution are both the CPU: these tests check that the
hooks leave the images unchanged and that the bookkeeping moves exactly the expected group before each
network or block runs (and evicts the previous one). Whether the weights really sit in VRAM, and the
peak VRAM, can only be seen on a GPU: ``python -m bench.bench_speed --device cuda`` prints them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from webui.models.loading import load_model
from webui.models.offload import setup_offload
from webui.models.speed_options import SpeedOptions
from webui.pipeline import GenerationRequest, generate, resolve_request
from webui.sampling import create_sampler_registry

CPU = torch.device("cpu")


def run(model) -> np.ndarray:
    request = GenerationRequest(prompt="a cat", seed=7, steps=2, width=64, height=64, sampler_name="Euler")
    return np.asarray(generate(model, resolve_request(request, create_sampler_registry(), (64, 64))).images[0])


@pytest.fixture
def reference(tiny_checkpoint) -> np.ndarray:
    return run(load_model(tiny_checkpoint.path, compute_hash=False))


@pytest.mark.parametrize("mode", ["medvram", "lowvram"])
def test_images_are_identical_to_the_normal_path(tiny_checkpoint, reference, mode):
    model = SpeedOptions(vram=mode).apply(load_model(tiny_checkpoint.path, compute_hash=False), CPU)
    assert model.extra["offload"] is not None
    assert np.array_equal(run(model), reference)


def watch(modules: dict[str, torch.nn.Module], offload, seen: list[tuple[str, str | None]]) -> None:
    """After the offload hook of each module (hooks run in registration order), note what is active."""
    for name, module in modules.items():
        module.register_forward_pre_hook(
            lambda m, a, name=name: seen.append((name, offload.active[0] if offload.active else None))
        )


def test_medvram_moves_each_network_before_it_runs_and_only_it(tiny_checkpoint):
    model = load_model(tiny_checkpoint.path, compute_hash=False)
    offload = setup_offload(model, "medvram", execution=CPU, storage=CPU)
    seen: list[tuple[str, str | None]] = []
    watch({"text encoder": model.text_encoder.model, "unet": model.unet, "vae": model.vae.decoder}, offload, seen)
    run(model)
    assert seen and all(name == active for name, active in seen)
    names = [name for name, _ in seen]
    first_unet = names.index("unet")
    assert set(names[:first_unet]) == {"text encoder"}  # prompts first ...
    assert names[first_unet:] == ["unet", "unet", "vae"]  # ... then one UNet call per step, then the decode
    # each move to execution is preceded by the eviction of the group that was there
    moves = offload.log
    assert moves[0] == ("text encoder", CPU)
    for previous, (name, _) in zip(moves[1::2], moves[2::2], strict=False):
        assert previous[0] != name
    assert [name for name, _ in moves[::2]] == ["text encoder", "unet", "vae"]


def test_medvram_brings_the_vae_before_a_tiled_encode_calls_its_first_layer(tiny_checkpoint):
    model = load_model(tiny_checkpoint.path, compute_hash=False)
    offload = setup_offload(model, "medvram", execution=CPU, storage=CPU)
    offload.bring("unet", [model.unet])
    seen: list[tuple[str, str | None]] = []
    watch({"vae": model.vae.encoder.conv_in}, offload, seen)
    model.vae_tiling = "on"
    model.encode(torch.zeros(1, 3, 64, 520))  # wider than a tile: encoded layer by layer
    assert seen and all(active == "vae" for _, active in seen)


def test_lowvram_moves_the_unet_blocks_one_at_a_time(tiny_checkpoint):
    model = load_model(tiny_checkpoint.path, compute_hash=False)
    offload = setup_offload(model, "lowvram", execution=CPU, storage=CPU)
    unet = model.unet
    blocks = {f"unet.input_blocks.{i}": b for i, b in enumerate(unet.input_blocks)}
    blocks["unet.middle_block"] = unet.middle_block
    blocks |= {f"unet.output_blocks.{i}": b for i, b in enumerate(unet.output_blocks)}
    seen: list[tuple[str, str | None]] = []
    watch(blocks, offload, seen)
    run(model)
    assert seen and all(name == active for name, active in seen)  # the running block is the one on execution
    one_call = list(blocks)
    assert [name for name, _ in seen] == one_call * 2  # two steps, each block once per step, in order
    # Between two blocks exactly one move out and one move in: never two blocks on execution at once.
    unet_moves = [(name, device) for name, device in offload.log if name.startswith("unet.")]
    for i in range(1, len(unet_moves) - 1, 2):
        assert unet_moves[i][0] == unet_moves[i - 1][0]  # the block that ran goes back to storage ...
        assert unet_moves[i + 1][0] != unet_moves[i][0]  # ... before the next one comes in


def test_compile_and_offload_are_refused_together():
    with pytest.raises(ValueError, match="--compile cannot be combined with --lowvram"):
        SpeedOptions(compile=True, vram="lowvram")
    with pytest.raises(ValueError, match="unknown VRAM mode"):
        SpeedOptions(vram="tinyvram")

"""fp16 checkpoints loaded for float32 use never hold both copies (issue 19).

Peak resident memory during a load is at most the loaded weights plus one source tensor: tensors are read
one at a time into memory of their own and converted, never through a memory map whose read pages would
stay resident until the file is closed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.support.tiny_model import TinyCheckpoint
from webui.models.errors import CorruptCheckpointError
from webui.models.sources import SafetensorsSource

ROOT = Path(__file__).resolve().parents[1]


def test_tensors_read_one_at_a_time_equal_safetensors_own(tmp_path):
    tensors = {
        "f16": torch.randn(3, 5).half(),
        "bf16": torch.randn(7).bfloat16(),
        "f32": torch.randn(2, 3, 4),
        "f64": torch.randn(2).double(),
        "i64": torch.arange(6).reshape(2, 3),
        "u8": torch.arange(10, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(1.5),
        "empty": torch.empty(0, 4),
    }
    path = tmp_path / "t.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    reference = load_file(str(path))
    source = SafetensorsSource(path)
    assert source.shapes() == {k: tuple(v.shape) for k, v in tensors.items()}
    for key, expected in reference.items():
        got = source.get(key)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert torch.equal(got, expected), key
        converted = source.get_as(key, torch.float32, torch.device("cpu"))  # through the reused scratch buffer
        want = expected.float() if expected.is_floating_point() else expected
        assert converted.dtype == want.dtype and torch.equal(converted, want), key
    source.close()
    with pytest.raises(CorruptCheckpointError, match="closed"):
        source.get("f16")


def test_a_truncated_file_is_refused(tmp_path):
    path = tmp_path / "t.safetensors"
    save_file({"w": torch.randn(64, 64)}, str(path))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CorruptCheckpointError, match="not a valid .safetensors"):
        SafetensorsSource(path)


CHILD = textwrap.dedent(
    """
    import gc, json, re, sys
    import torch
    from webui.models.loading import load_model

    def rss(field):
        status = open("/proc/self/status").read()
        return int(re.search(field + r":\\s+(\\d+) kB", status).group(1)) * 1024

    small, big = sys.argv[1], sys.argv[2]
    load_model(small, dtype=torch.float32, compute_hash=False)  # imports and first-call allocations
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident size
    before = rss("VmRSS")
    model = load_model(big, dtype=torch.float32, compute_hash=False)
    peak = rss("VmHWM")
    tensors = [t for m in (model.unet, model.vae, model.text_encoder.model) for t in m.state_dict().values()]
    print(json.dumps({
        "growth": peak - before,
        "final": sum(t.numel() * t.element_size() for t in tensors),
        "largest": max(t.numel() * t.element_size() for t in tensors),
        "dtypes": sorted({str(t.dtype) for t in tensors if t.is_floating_point()}),
    }))
    """
)


def write_fp16_sd_file(path: Path, tiny: TinyCheckpoint, model_channels: int) -> int:
    """An SD 1.x-layout fp16 single file with a UNet ``model_channels`` wide (320 is SD 1.5); returns its size."""
    from webui.models.checkpoint import UNET_PREFIX
    from webui.models.unet import UNetConfig, UNetModel

    config = UNetConfig(
        model_channels=model_channels,
        channel_mult=(1, 2, 4, 4),
        num_res_blocks=2,
        attention_resolutions=(4, 2, 1),
        num_heads=8,
        context_dim=tiny.components.unet_config.context_dim,
    )
    with torch.device("meta"):
        unet = UNetModel(config)
    state = {k: v for k, v in load_file(str(tiny.path)).items() if not k.startswith(UNET_PREFIX)}
    for i, (key, meta) in enumerate(unet.state_dict().items()):
        # Values do not matter for memory; distinct constants are fast to make and cheap to check.
        state[UNET_PREFIX + key] = torch.full(meta.shape, 0.001 * (i % 50), dtype=torch.float16)
    state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    save_file(state, str(path), metadata={"format": "pt"})
    return path.stat().st_size


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to reset VmHWM")
def test_loading_fp16_for_fp32_peaks_below_final_size_plus_one_tensor(tmp_path, tiny_checkpoint):
    """A ~260 MB fp16 file loaded as float32 (~520 MB): holding both copies would peak near 780 MB."""
    big = tiny_checkpoint.path.parent / "fp16-big.safetensors"  # next to the tiny model's tokenizer
    try:
        file_size = write_fp16_sd_file(big, tiny_checkpoint, model_channels=128)
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(tiny_checkpoint.path), str(big)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        )
    finally:
        big.unlink(missing_ok=True)
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["dtypes"] == ["torch.float32"]
    assert figures["final"] > 1.9 * file_size  # the float32 weights are twice the fp16 file
    bound = figures["final"] + figures["largest"]
    both_copies = figures["final"] + file_size
    assert bound < both_copies - 200 * 2**20  # the bound really excludes holding both
    assert figures["growth"] <= bound, figures

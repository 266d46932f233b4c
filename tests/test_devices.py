"""Device and precision choice."""

from __future__ import annotations

import pytest
import torch

from webui.devices import describe, pick_device, pick_dtype


def test_auto_device_is_an_available_one():
    device = pick_device("auto")
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert device.type == expected
    assert pick_device("CPU") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_or_unknown_device_is_refused():
    with pytest.raises(ValueError, match="no CUDA GPU"):
        pick_device("cuda")
    with pytest.raises(ValueError, match="auto, cuda, mps, cpu"):
        pick_device("tpu9")


def test_precision_rules():
    assert pick_dtype("cpu") == torch.float32
    assert pick_dtype("cuda") == torch.float16
    assert pick_dtype("mps", "auto") == torch.float16
    assert pick_dtype("cpu", "bf16") == torch.bfloat16
    assert pick_dtype("cuda", "fp32") == torch.float32
    with pytest.raises(ValueError, match="bf16"):
        pick_dtype("cpu", "fp16")
    with pytest.raises(ValueError, match="auto, fp16, bf16, fp32"):
        pick_dtype("cpu", "int4")


def test_describe():
    assert describe(torch.device("cpu"), torch.bfloat16) == "cpu, bfloat16"

"""Device and precision choice."""

from __future__ import annotations

import pytest
import torch

from webui.devices import describe, parse_device, pick_device, pick_dtype


def test_auto_device_is_an_available_one():
    device = pick_device("auto")
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert device.type == expected
    assert pick_device("CPU") == torch.device("cpu")


def test_device_names_are_normalised_and_cuda_takes_an_index():
    assert parse_device(" CUDA:1 ") == "cuda:1"
    assert parse_device("cuda:01") == "cuda:1"
    assert parse_device("cuda") == "cuda"
    assert parse_device("") == "auto"
    for bad in ("tpu9", "cuda:", "cuda:-1", "cuda:x", "cuda:0,cuda:1", "cpu:0", "mps:1", "gpu"):
        with pytest.raises(ValueError, match="auto, cuda, cuda:N, mps, cpu"):
            parse_device(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_or_unknown_device_is_refused():
    with pytest.raises(ValueError, match="no CUDA GPU"):
        pick_device("cuda")
    with pytest.raises(ValueError, match="'cuda:1' was requested but no CUDA GPU"):
        pick_device("cuda:1")
    with pytest.raises(ValueError, match="auto, cuda, cuda:N, mps, cpu"):
        pick_device("tpu9")


@pytest.fixture
def two_gpus(monkeypatch):
    """CUDA as a machine with two GPUs reports it (torch.device itself needs no GPU)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_cuda_index_is_checked_against_the_gpu_count(two_gpus):
    assert pick_device("cuda:1") == torch.device("cuda", 1)
    assert pick_device("cuda:0") == torch.device("cuda", 0)
    assert pick_device("cuda") == torch.device("cuda")
    assert pick_device("auto") == torch.device("cuda")
    message = r"'cuda:2' does not exist: this machine has 2 CUDA GPU\(s\), cuda:0 to cuda:1$"
    with pytest.raises(ValueError, match=message):
        pick_device("cuda:2")
    # torch.device alone would wrap this index around to cuda:-128 instead of refusing it
    with pytest.raises(ValueError, match="'cuda:128' does not exist"):
        pick_device("cuda:128")


def test_precision_rules():
    assert pick_dtype("cpu") == torch.float32
    assert pick_dtype("cuda") == torch.float16
    assert pick_dtype("cuda:1") == torch.float16
    assert pick_dtype("mps", "auto") == torch.float16
    assert pick_dtype("cpu", "bf16") == torch.bfloat16
    assert pick_dtype("cuda", "fp32") == torch.float32
    with pytest.raises(ValueError, match="bf16"):
        pick_dtype("cpu", "fp16")
    with pytest.raises(ValueError, match="auto, fp16, bf16, fp32"):
        pick_dtype("cpu", "int4")


def test_describe():
    assert describe(torch.device("cpu"), torch.bfloat16) == "cpu, bfloat16"

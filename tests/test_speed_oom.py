"""Out of memory at any stage: what it took is freed, the message names the flags, the next job runs (issue 19)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from webui.models.loading import load_model
from webui.models.vae_tiling import tiled_decode
from webui.pipeline import GenerationRequest
from webui.pipeline.errors import OutOfMemory
from webui.service import WebUIService


def simulated_oom(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")


def test_a_vae_decode_that_runs_out_of_memory_is_redone_tile_by_tile(tiny_checkpoint, monkeypatch):
    model = load_model(tiny_checkpoint.path, compute_hash=False)
    z = torch.randn(1, 4, 80, 80, generator=torch.Generator().manual_seed(2))
    calls = []
    real_decode = type(model.vae).decode

    def decode_once_then_oom(vae, latent):
        calls.append(tuple(latent.shape))
        if len(calls) == 1:  # the untiled call
            simulated_oom()
        return real_decode(vae, latent)

    monkeypatch.setattr(type(model.vae), "decode", decode_once_then_oom)
    images = model.decode(z)
    monkeypatch.undo()
    assert calls[0] == (1, 4, 80, 80)  # tried in one piece first
    assert torch.equal(images, tiled_decode(model.vae, z / model.scale_factor).clamp(-1, 1))
    model.vae_tiling = "off"  # tiling refused: the error goes up
    monkeypatch.setattr(type(model.vae), "decode", decode_once_then_oom)
    calls.clear()
    with pytest.raises(torch.OutOfMemoryError):
        model.decode(z)


def test_a_job_that_runs_out_of_memory_fails_with_the_flags_and_the_next_one_runs(tmp_path, tiny_checkpoint):
    registry = tmp_path / "models.yaml"
    registry.write_text(f"models:\n  - {{name: tiny, path: {tiny_checkpoint.path}, default: true}}\n")
    service = WebUIService(registry)
    try:
        model = service.models.get()
        request = GenerationRequest(prompt="a cat", steps=2, width=64, height=64, seed=1)
        model.unet.forward = simulated_oom  # type: ignore[method-assign]
        job = service.submit(request, save=False)
        with pytest.raises(OutOfMemory) as info:
            job.result(timeout=60)  # never hangs
        message = str(info.value)
        assert "out of memory" in message and "--vae-tiling on" in message and "lower the" in message
        assert job.done
        del model.unet.forward  # the instance attribute goes: the class's forward again
        image = service.run(request, save=False, timeout=60).images[0]
        assert np.asarray(image).std() > 0
    finally:
        service.close()

"""--compile: the UNet through torch.compile, no recompile for a second job at the same size (issue 19).

The recompile tests use dynamo's own compile counter with the "eager" backend: the tracing, guards and
recompile decisions are dynamo's real ones (they do not depend on the backend), and they take a second
instead of the minutes that inductor's C++ compile takes on 2 cores. The inductor test checks the numbers.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from webui.models.compile import compile_unet, is_compiled, uncompile
from webui.models.loading import load_model
from webui.models.manager import ModelManager
from webui.models.registry import load_registry
from webui.models.speed_options import SpeedOptions
from webui.pipeline import GenerationRequest, generate, resolve_request
from webui.sampling import create_sampler_registry


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def run(model, size: int, seed: int = 3, batch_size: int = 1) -> list[np.ndarray]:
    request = GenerationRequest(
        prompt="a cat", seed=seed, steps=2, width=size, height=size, sampler_name="Euler", batch_size=batch_size
    )
    result = generate(model, resolve_request(request, create_sampler_registry(), (size, size)))
    return [np.asarray(image) for image in result.images]


@pytest.mark.slow  # dynamo traces the UNet at two sizes: over a minute on a busy 2-core machine
def test_a_second_job_at_the_same_size_does_not_recompile(tiny_checkpoint):
    eager = load_model(tiny_checkpoint.path, compute_hash=False)
    expected = run(eager, 64)
    counter = CompileCounterWithBackend("eager")
    model = SpeedOptions(compile=True, compile_backend=counter).apply(
        load_model(tiny_checkpoint.path, compute_hash=False)
    )
    assert is_compiled(model.unet) and not is_compiled(eager.unet)
    first = run(model, 64)
    assert counter.frame_count == 1  # one graph for the whole UNet: no graph break
    assert all(np.array_equal(a, b) for a, b in zip(first, expected, strict=True))
    run(model, 64, seed=4)
    run(model, 64, seed=5)
    assert counter.frame_count == 1  # new jobs, same shapes: no recompile
    run(model, 96)
    assert counter.frame_count == 2  # a new size: one graph of its own (dynamic=False)
    run(model, 64)
    run(model, 96, seed=9)
    assert counter.frame_count == 2  # both sizes keep their graphs
    assert list(model.unet.state_dict()) == list(eager.unet.state_dict())  # compiled in place: same keys


@pytest.mark.slow
def test_the_model_manager_compiles_what_it_loads(tmp_path, tiny_checkpoint):
    registry = tmp_path / "models.yaml"
    registry.write_text(f"models:\n  - {{name: a, path: {tiny_checkpoint.path}}}\n")
    counter = CompileCounterWithBackend("eager")
    manager = ModelManager(load_registry(registry), speed=SpeedOptions(compile=True, compile_backend=counter))
    model = manager.get("a")
    assert is_compiled(model.unet)
    run(model, 64)
    assert counter.frame_count == 1
    assert not is_compiled(ModelManager(load_registry(registry)).get("a").unet)  # off by default


def test_uncompile_goes_back_to_eager(tiny_checkpoint):
    model = load_model(tiny_checkpoint.path, compute_hash=False)
    counter = CompileCounterWithBackend("eager")
    compile_unet(model.unet, backend=counter)
    uncompile(model.unet)
    run(model, 64)
    assert counter.frame_count == 0 and not is_compiled(model.unet)


@pytest.mark.slow
def test_inductor_output_matches_eager_closely(tiny_components):
    """The real backend: TorchInductor's C++ kernels (gcc) against eager float32, one UNet call."""
    import copy

    unet = copy.deepcopy(tiny_components.unet)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500, 500])
    context = torch.randn(2, 77, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = unet(x, t, context)
        compile_unet(unet)
        got = unet(x, t, context)
        again = unet(x, t, context)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4), (got - expected).abs().max()
    assert torch.equal(got, again)

"""--precision: bf16 chosen on the CPU only where it is native; fp32 keeps today's exact path (issue 19)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from webui.models.loading import load_model
from webui.models.manager import ModelManager
from webui.models.precision import PrecisionPlan, native_bf16_flags, plan_precision
from webui.models.registry import load_registry
from webui.pipeline import GenerationRequest
from webui.service import WebUIService

ZEN3 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma f16c\n"
SAPPHIRE_RAPIDS = (
    "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
    "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
)
COOPER_LAKE = "model name\t: Intel(R) Xeon(R) Gold 5320H\nflags\t\t: avx2 avx512f avx512_bf16\n"
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes sha2 crc32 atomics fphp asimdhp bf16 i8mm\n"
# A CPU whose name suggests bf16 but whose flags say otherwise: the flags decide.
MISLEADING_NAME = "model name\t: Intel(R) Xeon(R) bf16 avx512_bf16 edition\nflags\t\t: avx2 avx512f\n"


@pytest.mark.parametrize(
    ("cpuinfo", "native"),
    [
        (ZEN3, []),
        (SAPPHIRE_RAPIDS, ["avx512_bf16", "amx_bf16"]),
        (COOPER_LAKE, ["avx512_bf16"]),
        (GRAVITON3, ["bf16"]),
        (MISLEADING_NAME, []),
        ("", []),
    ],
)
def test_native_bf16_is_read_from_the_cpu_flags(cpuinfo, native):
    assert native_bf16_flags(cpuinfo) == native


def test_auto_on_a_cpu_with_native_bf16_runs_unet_and_vae_in_bf16():
    plan = plan_precision("cpu", "auto", cpuinfo=SAPPHIRE_RAPIDS)
    assert (plan.unet, plan.vae, plan.text_encoder) == (torch.bfloat16, torch.bfloat16, torch.float32)
    assert plan.describe().startswith("UNet bf16, VAE bf16, text encoder fp32 (auto: the CPU computes bf16 natively")


def test_auto_without_native_bf16_keeps_fp32():
    for cpuinfo in (ZEN3, MISLEADING_NAME):
        plan = plan_precision("cpu", "auto", cpuinfo=cpuinfo)
        assert plan == PrecisionPlan.uniform(torch.float32, plan.reason) and "no native bf16" in plan.reason


def test_explicit_choices_and_gpus():
    assert plan_precision("cpu", "fp32", cpuinfo=SAPPHIRE_RAPIDS) == PrecisionPlan.uniform(
        torch.float32, "--precision fp32"
    )
    assert plan_precision("cpu", "bf16", cpuinfo=ZEN3).unet == torch.bfloat16
    assert plan_precision("cuda", "auto") == PrecisionPlan.uniform(torch.float16, "auto: half precision on cuda")
    with pytest.raises(ValueError, match="fp16 is not supported on the CPU"):
        plan_precision("cpu", "fp16")
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        plan_precision("cpu", "fp8")


def test_the_plan_reaches_each_network(tmp_path, tiny_checkpoint):
    registry = tmp_path / "models.yaml"
    registry.write_text(f"models:\n  - {{name: tiny, path: {tiny_checkpoint.path}, default: true}}\n")
    plan = plan_precision("cpu", "auto", cpuinfo=SAPPHIRE_RAPIDS)
    model = ModelManager(load_registry(registry), precision=plan).get()
    assert {p.dtype for p in model.unet.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.vae.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.text_encoder.model.parameters()} == {torch.float32}
    service = WebUIService(manager=ModelManager(load_registry(registry), precision=plan))
    try:
        assert service.precision_text() == plan.describe()
    finally:
        service.close()


def test_fp32_plan_is_bit_identical_to_the_library_default(tmp_path, tiny_checkpoint):
    """``--precision fp32`` (all three networks float32 through the plan) = the float32 path of before."""
    registry = tmp_path / "models.yaml"
    registry.write_text(f"models:\n  - {{name: tiny, path: {tiny_checkpoint.path}, default: true}}\n")
    request = GenerationRequest(prompt="a cat", seed=3, steps=3, width=64, height=64, sampler_name="Euler a")
    images = []
    for precision in (None, plan_precision("cpu", "fp32")):
        manager = ModelManager(load_registry(registry), precision=precision)
        service = WebUIService(manager=manager)
        try:
            images.append(np.asarray(service.run(request, save=False).images[0]))
        finally:
            service.close()
    assert images[0].std() > 0 and np.array_equal(images[0], images[1])
    default = load_model(tiny_checkpoint.path)
    assert default.dtype == torch.float32 and default.text_encoder.dtype == torch.float32

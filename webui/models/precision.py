"""Which precision each network runs in: ``--precision auto|fp32|bf16|fp16``.

``auto`` picks, per network, the fastest precision that keeps the image close to float32's:

- CUDA and MPS: float16 for all three (the VAE falls back to float32 by itself if it overflows,
  :meth:`StableDiffusionModel._run_vae`).
- CPU: bfloat16 for the UNet and the VAE, but only where the CPU computes bf16 natively
  (x86 ``avx512_bf16`` or ``amx_bf16``, Arm ``bf16``: read from ``/proc/cpuinfo``'s flags, never guessed
  from the CPU's name). Elsewhere bf16 is emulated through float32 conversions and is slower than
  float32 itself, so float32 is kept. The text encoder stays float32 on the CPU: it runs once per
  prompt (under 1% of the time) and its output steers every step.

An explicit ``fp32``/``bf16``/``fp16`` puts all three networks in that precision, as before; ``fp32``
is exactly the float32 path. The choice is logged at start and shown in the Models tab.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")
CPUINFO = Path("/proc/cpuinfo")
# /proc/cpuinfo flags that mean bf16 arithmetic in hardware: AVX512-BF16 (Cooper Lake, Zen 4 and later),
# AMX-BF16 (Sapphire Rapids and later) on x86; the "bf16" feature (Armv8.6, Graviton 3) on Arm.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
_SHORT = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass(frozen=True)
class PrecisionPlan:
    """The dtype of each network, and why."""

    unet: torch.dtype
    vae: torch.dtype
    text_encoder: torch.dtype
    reason: str

    @classmethod
    def uniform(cls, dtype: torch.dtype, reason: str) -> PrecisionPlan:
        return cls(dtype, dtype, dtype, reason)

    def describe(self) -> str:
        """``"UNet bf16, VAE bf16, text encoder fp32 (auto: the CPU computes bf16 natively: avx512_bf16)"``."""
        parts = [("UNet", self.unet), ("VAE", self.vae), ("text encoder", self.text_encoder)]
        return ", ".join(f"{name} {_SHORT.get(dtype, str(dtype))}" for name, dtype in parts) + f" ({self.reason})"


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (x86 ``flags``, Arm ``Features``); empty if unreadable."""
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return set()
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return flags


def native_bf16_flags(cpuinfo: str | None = None) -> list[str]:
    """The flags by which this CPU computes bfloat16 natively (empty: bf16 would be emulated)."""
    flags = cpu_flags(cpuinfo)
    return [flag for flag in NATIVE_BF16_FLAGS if flag in flags]


def plan_precision(device: torch.device | str, choice: str = "auto", *, cpuinfo: str | None = None) -> PrecisionPlan:
    """The :class:`PrecisionPlan` for ``--precision choice`` on ``device``.

    Args:
        cpuinfo: ``/proc/cpuinfo``'s text (tests); read from the system when None.

    Raises:
        ValueError: an unknown choice, or fp16 on the CPU (slow and partly unsupported there).
    """
    device = torch.device(device)
    choice = (choice or "auto").strip().lower()
    if choice not in PRECISION_CHOICES:
        raise ValueError(f"unknown precision {choice!r}; choose one of {', '.join(PRECISION_CHOICES)}")
    if choice != "auto":
        from webui.devices import pick_dtype

        return PrecisionPlan.uniform(pick_dtype(device, choice), f"--precision {choice}")
    if device.type in ("cuda", "mps"):
        return PrecisionPlan.uniform(torch.float16, f"auto: half precision on {device.type}")
    native = native_bf16_flags(cpuinfo)
    if native:
        return PrecisionPlan(
            torch.bfloat16,
            torch.bfloat16,
            torch.float32,
            f"auto: the CPU computes bf16 natively ({', '.join(native)})",
        )
    return PrecisionPlan.uniform(torch.float32, "auto: this CPU has no native bf16 (no avx512_bf16/amx_bf16 flag)")

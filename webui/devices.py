"""Which device and precision to run on. Called from ``launch.py`` (never at import time).

``auto`` picks CUDA, then Apple's MPS, then the CPU; half precision (fp16) on GPUs, float32 on the CPU
(bf16 is available on request: recent CPUs run it fast, and it cannot overflow like fp16).
"""

from __future__ import annotations

import torch

DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")
PRECISION_CHOICES = ("auto", "fp16", "bf16", "fp32")
_PRECISION_ALIASES = {
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp32": torch.float32, "float32": torch.float32, "full": torch.float32,
}


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def pick_device(preference: str = "auto") -> torch.device:
    """``auto`` -> cuda, mps or cpu, whichever is available first; ``cuda:1`` etc. are accepted.

    Raises ``ValueError`` for an unknown name or a device this machine does not have.
    """
    choice = (preference or "auto").strip().lower()
    if choice == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_available() else torch.device("cpu")
    try:
        device = torch.device(choice)
    except RuntimeError:
        raise ValueError(f"unknown device {preference!r}; choose one of {', '.join(DEVICE_CHOICES)}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' was requested but no CUDA GPU is available (this torch build: "
                             f"{torch.__version__}); use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {choice!r} does not exist: {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not mps_available():
        raise ValueError("device 'mps' was requested but Apple MPS is not available; use --device cpu or auto")
    elif device.type not in ("cuda", "mps", "cpu"):
        raise ValueError(f"unsupported device {preference!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    return device


def pick_dtype(device: torch.device | str, precision: str = "auto") -> torch.dtype:
    """``auto`` -> float16 on cuda/mps, float32 on cpu; or ``fp16``, ``bf16``, ``fp32`` explicitly.

    fp16 on the CPU is refused (slow and partly unsupported there); bf16 is the CPU's half precision.
    """
    device = torch.device(device)
    choice = (precision or "auto").strip().lower()
    if choice == "auto":
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    if choice not in _PRECISION_ALIASES:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISION_CHOICES)}")
    dtype = _PRECISION_ALIASES[choice]
    if dtype == torch.float16 and device.type == "cpu":
        raise ValueError("fp16 is not supported on the CPU; use bf16 (fast on recent CPUs) or fp32")
    return dtype


def empty_cache(device: torch.device) -> None:
    """Give cached GPU memory back after a model is unloaded."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and mps_available():
        torch.mps.empty_cache()


def describe(device: torch.device, dtype: torch.dtype) -> str:
    """A one-line human description, e.g. for the startup log: ``cuda (NVIDIA H100), float16``."""
    name = device.type
    if device.type == "cuda":
        name += f" ({torch.cuda.get_device_name(device)})"
    return f"{name}, {str(dtype).removeprefix('torch.')}"

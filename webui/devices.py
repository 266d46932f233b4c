"""Which device and precision to run on. Called from ``launch.py`` (never at import time).

``auto`` picks CUDA, then Apple's MPS, then the CPU; ``cuda:N`` picks CUDA GPU number N, from 0 (``cuda`` is
torch's current one, normally ``cuda:0``). Half precision (fp16) on GPUs, float32 on the CPU (bf16 is
available on request: recent CPUs run it fast, and it cannot overflow like fp16).
"""

from __future__ import annotations

import re

import torch

DEVICE_CHOICES = ("auto", "cuda", "cuda:N", "mps", "cpu")
_DEVICE_PATTERN = re.compile(r"(auto|cuda|mps|cpu)(?::(\d+))?")
PRECISION_CHOICES = ("auto", "fp16", "bf16", "fp32")
_PRECISION_ALIASES = {
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "full": torch.float32,
}


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def parse_device(text: str) -> str:
    """The device name ``text`` spells, normalised (``" CUDA:1 "`` -> ``"cuda:1"``); ``""`` means ``auto``.

    Checks the spelling only (``auto``, ``cuda``, ``cuda:N``, ``mps``, ``cpu``), not whether this machine
    has the device: :func:`pick_device` does that. Raises ``ValueError`` naming the accepted forms.
    """
    choice = (text or "auto").strip().lower()
    match = _DEVICE_PATTERN.fullmatch(choice)
    if match is None or (match[2] is not None and match[1] != "cuda"):
        raise ValueError(
            f"unknown device {text!r}; choose one of {', '.join(DEVICE_CHOICES)} (N = 0 for the first GPU)"
        )
    return f"cuda:{int(match[2])}" if match[2] is not None else match[1]


def pick_device(preference: str = "auto") -> torch.device:
    """``auto`` -> cuda, mps or cpu, whichever is available first; or ``cuda``, ``cuda:N``, ``mps``, ``cpu``.

    Raises ``ValueError`` for an unknown name or a device this machine does not have (``cuda:N`` with N
    not below ``torch.cuda.device_count()``).
    """
    choice = parse_device(preference)
    if choice == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_available() else torch.device("cpu")
    kind, _, index = choice.partition(":")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {choice!r} was requested but no CUDA GPU is available (this torch build: "
                f"{torch.__version__}); use --device cpu or auto"
            )
        count = torch.cuda.device_count()
        # Checked before torch.device() sees it: torch wraps indexes past 127 around instead of refusing them.
        if index and int(index) >= count:
            have = "cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
            raise ValueError(f"device {choice!r} does not exist: this machine has {count} CUDA GPU(s), {have}")
    elif kind == "mps" and not mps_available():
        raise ValueError("device 'mps' was requested but Apple MPS is not available; use --device cpu or auto")
    return torch.device(choice)


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
    """A one-line human description, e.g. for the startup log: ``cuda:1 (NVIDIA H100), float16``."""
    name = str(device)
    if device.type == "cuda":
        name += f" ({torch.cuda.get_device_name(device)})"
    return f"{name}, {str(dtype).removeprefix('torch.')}"

"""Device choice (CUDA when present, else CPU) and the precision of the networks' arithmetic on it."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

import torch

from .errors import ConfigError


def resolve_device(choice: str = "auto") -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but no CUDA device is visible; set it to 'auto' or 'cpu'")
    if choice not in ("cpu", "cuda"):
        raise ValueError(f"unknown device '{choice}'; use auto, cpu or cuda")
    return torch.device(choice)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def make_generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""CPU flags (/proc/cpuinfo) of instructions that compute in bf16; without them a CPU emulates it, slower than fp32."""


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (/proc/cpuinfo on Linux; empty elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively: a CUDA device that supports it, or a CPU with
    :data:`NATIVE_BF16_FLAGS` (AVX-512 BF16, AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and not cpu_flags().isdisjoint(NATIVE_BF16_FLAGS)


def autocast_dtype(choice: bool | str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a ``bf16`` setting (``auto``: where :func:`native_bf16`, or true, or false) on
    ``device`` (None: fp32)."""
    on = native_bf16(device) if choice == "auto" else bool(choice)
    return torch.bfloat16 if on else None


def precision_name(dtype: torch.dtype | None) -> str:
    """``bf16`` or ``fp32``: what a run records of :func:`autocast_dtype`."""
    return "bf16" if dtype == torch.bfloat16 else "fp32"


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()

"""Torch devices and dtypes from user-facing names (``auto``, ``cuda:1``, ``bfloat16``).

Lives in core so that every stage can pick a device without importing the model loader.
"""

from __future__ import annotations

import torch

from geomprobe.core.errors import GeomprobeError

DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto``/None: CUDA when available, else CPU; otherwise the named device, refused when absent."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise GeomprobeError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise GeomprobeError(f"device {device!r} asked for but CUDA is not available; use --device cpu")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None = "float32") -> torch.dtype:
    """A torch dtype from its name in :data:`DTYPES` (None: float32); torch dtypes pass through."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None:
        return torch.float32
    if dtype not in DTYPES:
        raise GeomprobeError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]

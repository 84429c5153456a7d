"""Device and precision choice, shared by the pipeline's loader and the AutoMasker's."""

from __future__ import annotations

import torch

from catvton.errors import InvalidInputError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def choose_device(device: str | torch.device | None = None) -> torch.device:
    """The given device, or the best present: CUDA, then Apple MPS, then the CPU.

    Raises InvalidInputError for a name torch does not know and for a CUDA or MPS device that this
    machine does not have (instead of torch's error deep inside loading).
    """
    if device is not None:
        try:
            device = torch.device(device)
        except RuntimeError as error:
            raise InvalidInputError(f"device {device!r} is not a torch device: {error}") from error
        _check_present(device)
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _check_present(device: torch.device) -> None:
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise InvalidInputError(
                f"device {str(device)!r} is not present: this machine has {count} CUDA device(s)"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise InvalidInputError("device 'mps' is not present on this machine")


def choose_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The given dtype (``"fp32"``, ``"fp16"``, ``"bf16"`` or a torch dtype), else fp16 on CUDA and
    fp32 elsewhere (half precision on the CPU is slow and poorly supported)."""
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise InvalidInputError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")

"""Device and dtype choice, one rule for every command: ``auto`` is CUDA when visible, else CPU."""

from __future__ import annotations

import torch

from neuromem.errors import InputError

#: ``--dtype`` names and their torch dtypes.
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """The torch device ``name`` means (``auto`` or None: the first GPU if any, else the CPU).

    Raises
    ------
    InputError
        For a name torch does not know, or a CUDA device when none is visible.
    """
    if isinstance(name, torch.device):
        return name
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name!r} asked for, but no CUDA GPU is visible; use --device cpu")
    return device


def resolve_dtype(name: str) -> torch.dtype:
    """The torch dtype of a ``--dtype`` name (:data:`DTYPES`)."""
    try:
        return DTYPES[name]
    except KeyError:
        raise InputError(f"unknown dtype {name!r}; expected one of {', '.join(DTYPES)}") from None

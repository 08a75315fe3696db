"""Device and determinism helpers shared by every training step."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when a GPU is visible, else CPU; ``cpu``/``cuda``/``cuda:N`` are taken as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} was requested but torch sees no CUDA device")
    return dev


def seed_everything(seed: int) -> torch.Generator:
    """Seeds python, numpy and torch; returns a CPU generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def configure_threads(num_threads: int | None = None) -> int:
    """Uses ``num_threads`` (or ``SEMID_NUM_THREADS``, or every core) for torch's intra-op pool."""
    n = num_threads or int(os.environ.get("SEMID_NUM_THREADS", "0")) or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def autocast_dtype(device: torch.device, mixed_precision: bool | str) -> torch.dtype | None:
    """The autocast dtype for a precision setting.

    ``True``/``"auto"``: bf16 on CUDA, float32 on CPU. ``"bf16"``: bf16 on any device (worth it on
    CPUs with AMX or AVX512-BF16, where it runs about 1.5x faster; older CPUs emulate it slowly).
    ``False``/``"off"``: float32 everywhere.
    """
    if mixed_precision is True or mixed_precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if mixed_precision == "bf16":
        return torch.bfloat16
    return None

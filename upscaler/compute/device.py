"""Which torch device an engine runs on, and how many CPU threads it uses there."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where a device is used: replicas that never run a model skip it
    import torch


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` is CUDA when a GPU is visible, else the CPU; ``cuda`` without one is an error."""
    import torch

    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but no CUDA GPU is visible")
    return torch.device(device)


def use_cpu_threads(device: torch.device, threads: int | None) -> None:
    """On the CPU, torch's thread count; Ray limits an actor to its num_cpus threads, while a
    CPU-only box wants every core for the one image a replica runs (``None``)."""
    if device.type == "cpu":
        import torch

        torch.set_num_threads(threads or os.cpu_count() or 1)

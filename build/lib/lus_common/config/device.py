"""Choosing the compute device; never hard-coded in a notebook."""

from __future__ import annotations

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """Turn a device parameter into a ``torch.device``.

    Args:
        name: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Returns:
        The device.

    Raises:
        RuntimeError: a CUDA device was asked for and none is available.
        ValueError: the name is not a device.
    """
    name = str(name).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device='{name}' was asked for, but no CUDA GPU is available on this machine. "
                "Use device='auto' or device='cpu' (the smoke and quick profiles run on CPU)."
            )
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise ValueError(f"Unknown device '{name}': use 'auto', 'cpu', 'cuda' or 'cuda:N'.")


def describe_device(device: torch.device) -> str:
    """A human-readable name of the device (GPU model or CPU thread count)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"

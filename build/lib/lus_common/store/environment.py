"""The software versions, host and date recorded with every run."""

from __future__ import annotations

import datetime as _dt
import platform

import numpy as np
import pandas as pd


def environment_info() -> dict:
    """Software versions, host and date, recorded with every run."""
    import torch

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    try:
        import segmentation_models_pytorch as smp

        info["segmentation_models_pytorch"] = smp.__version__
    except ImportError:
        pass
    return info


def environment_line(packages=("numpy", "pandas"), device: str | None = None) -> str:
    """One line for a chapter's Setup cell: ``lus_common 0.1.0 | python 3.11.2 | numpy 2.1.3 | ... |
    device: cpu``. Versions are read from the installed distributions, so nothing is imported."""
    from importlib import metadata

    import lus_common

    parts = [f"lus_common {lus_common.__version__}", f"python {platform.python_version()}"]
    for name in packages:
        try:
            parts.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{name} not installed")
    if device is not None:
        parts.append(f"device: {device}")
    return " | ".join(parts)

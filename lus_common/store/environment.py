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

"""Where things live: the project root, the data directory and the results directory.

The data directory comes from ``LUS_DATA_DIR`` and falls back to ``<project>/data``; results
from ``LUS_RESULTS_DIR``, falling back to ``<project>/results`` (chapter "How to rerun").
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def data_dir() -> Path:
    """The root folder that holds datasets and local weights.

    Returns:
        ``$LUS_DATA_DIR`` when set, else ``<project>/data``.
    """
    env = os.environ.get("LUS_DATA_DIR")
    return Path(env).expanduser().resolve() if env else PROJECT_ROOT / "data"


def results_dir() -> Path:
    """The root folder under which every run writes its own folder.

    Returns:
        ``$LUS_RESULTS_DIR`` when set, else ``<project>/results``.
    """
    env = os.environ.get("LUS_RESULTS_DIR")
    return Path(env).expanduser().resolve() if env else PROJECT_ROOT / "results"


def dataset_dir(name: str) -> Path:
    """The folder of one dataset inside the data directory, checked to exist.

    Args:
        name: dataset folder name, e.g. ``"hc18"``.

    Returns:
        The existing folder.

    Raises:
        FileNotFoundError: with what to do when the folder is missing.
    """
    root = data_dir()
    folder = root / name
    if not folder.is_dir():
        hint = "" if os.environ.get("LUS_DATA_DIR") else " (LUS_DATA_DIR is not set)"
        raise FileNotFoundError(
            f"Dataset '{name}' not found: {folder} does not exist{hint}. "
            f"Point LUS_DATA_DIR at the folder that contains '{name}/', run "
            f"`lus data fetch {name}` where the network allows, or use data_source='synthetic'."
        )
    return folder

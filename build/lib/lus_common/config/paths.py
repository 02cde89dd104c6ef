"""Where things live: the project root, the data directory and the results directory.

The data directory comes from ``LUS_DATA_DIR`` and falls back to ``<project>/data``; results
from ``LUS_RESULTS_DIR``, falling back to ``<project>/results`` (chapter "How to rerun").
Weight files are looked for in ``LUS_WEIGHTS_DIR`` alone when it is set; otherwise in
``<data dir>/weights``, then ``<project>/data/weights`` (where ``lus weights import`` writes), so
pointing ``LUS_DATA_DIR`` at a read-only dataset folder keeps the imported weights in reach.
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


def weights_dirs() -> list[Path]:
    """The folders searched for weight files, first match wins, without repeats.

    Returns:
        ``[$LUS_WEIGHTS_DIR]`` when it is set, else ``[<data dir>/weights,
        <project>/data/weights]``.
    """
    env = os.environ.get("LUS_WEIGHTS_DIR")
    if env:
        return [Path(env).expanduser().resolve()]
    candidates = [data_dir() / "weights", PROJECT_ROOT / "data" / "weights"]
    folders: list[Path] = []
    for folder in candidates:
        if folder.resolve() not in [f.resolve() for f in folders]:
            folders.append(folder)
    return folders


def weights_write_dir() -> Path:
    """Where converted weight files are written.

    Returns:
        ``$LUS_WEIGHTS_DIR`` when set, else ``<project>/data/weights`` (never the dataset folder,
        which may be shared or read-only).
    """
    env = os.environ.get("LUS_WEIGHTS_DIR")
    return Path(env).expanduser().resolve() if env else PROJECT_ROOT / "data" / "weights"


def weights_dirs_text() -> str:
    """The searched folders for a message: ``"A nor in B"``."""
    return " nor in ".join(str(f) for f in weights_dirs())


def find_weights_file(*names: str) -> Path | None:
    """The first of ``names`` found in :func:`weights_dirs` (folders in order, then names), or
    None."""
    for folder in weights_dirs():
        for name in names:
            if (folder / name).is_file():
                return folder / name
    return None


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

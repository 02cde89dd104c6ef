"""Shared fixtures: isolated results and data directories, the real data when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lus_common.config.paths import PROJECT_ROOT

FIXTURES = Path(__file__).parent / "fixtures"


def _data_root_with(marker: str) -> Path | None:
    """``$LUS_DATA_DIR``, else ``../shared/data`` beside the project: the first that has the
    folder ``marker`` (a path inside it)."""
    for candidate in (os.environ.get("LUS_DATA_DIR"), PROJECT_ROOT.parent / "shared" / "data"):
        if candidate and (Path(candidate) / marker).is_dir():
            return Path(candidate).resolve()
    return None


def real_data_root() -> Path | None:
    """``$LUS_DATA_DIR`` or ``../shared/data`` beside the project, if it holds HC18."""
    return _data_root_with("hc18/training_set")


@pytest.fixture
def real_data(monkeypatch):
    root = real_data_root()
    if root is None:
        pytest.skip("real data not present (set LUS_DATA_DIR or provide ../shared/data)")
    monkeypatch.setenv("LUS_DATA_DIR", str(root))
    return root


@pytest.fixture(autouse=True)
def isolated_results(tmp_path, monkeypatch):
    """Every test writes results into its own folder."""
    monkeypatch.setenv("LUS_RESULTS_DIR", str(tmp_path / "results"))
    return tmp_path / "results"


@pytest.fixture
def empty_data_dir(tmp_path, monkeypatch):
    folder = tmp_path / "data"
    folder.mkdir()
    monkeypatch.setenv("LUS_DATA_DIR", str(folder))
    monkeypatch.setenv("LUS_WEIGHTS_DIR", str(folder / "weights"))  # no imported weights either
    return folder


def pocus_data_root() -> Path | None:
    """``$LUS_DATA_DIR/pocus`` or ``../shared/data/pocus`` beside the project, if it has clips."""
    from lus_common.data import pocus

    root = _data_root_with(f"pocus/{pocus.VIDEO_DIR}")
    return None if root is None else root / "pocus"


@pytest.fixture
def real_pocus():
    """The real POCUS folder (skips the test without it)."""
    root = pocus_data_root()
    if root is None:
        pytest.skip("POCUS data not present (set LUS_DATA_DIR or provide ../shared/data/pocus)")
    return root


def pleura_rib_root() -> Path | None:
    """``$LUS_DATA_DIR/lus_pleura_rib`` or ``../shared/data/lus_pleura_rib``, if it has frames."""
    root = _data_root_with("lus_pleura_rib/image")
    return None if root is None else root / "lus_pleura_rib"


@pytest.fixture
def real_pleura_rib():
    """The real lus_pleura_rib folder (skips the test without it)."""
    root = pleura_rib_root()
    if root is None:
        pytest.skip("lus_pleura_rib not present (set LUS_DATA_DIR or provide ../shared/data)")
    return root

"""Shared fixtures: isolated results and data directories, the real data when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lus_common.config.paths import PROJECT_ROOT

FIXTURES = Path(__file__).parent / "fixtures"


def real_data_root() -> Path | None:
    """``$LUS_DATA_DIR`` or ``../shared/data`` beside the project, if it holds HC18."""
    for candidate in (os.environ.get("LUS_DATA_DIR"), PROJECT_ROOT.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "hc18" / "training_set").is_dir():
            return Path(candidate).resolve()
    return None


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

    for candidate in (os.environ.get("LUS_DATA_DIR"), PROJECT_ROOT.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "pocus" / pocus.VIDEO_DIR).is_dir():
            return Path(candidate).resolve() / "pocus"
    return None


@pytest.fixture
def real_pocus():
    """The real POCUS folder (skips the test without it)."""
    root = pocus_data_root()
    if root is None:
        pytest.skip("POCUS data not present (set LUS_DATA_DIR or provide ../shared/data/pocus)")
    return root


def pleura_rib_root() -> Path | None:
    """``$LUS_DATA_DIR/lus_pleura_rib`` or ``../shared/data/lus_pleura_rib``, if it has frames."""
    for candidate in (os.environ.get("LUS_DATA_DIR"), PROJECT_ROOT.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "lus_pleura_rib" / "image").is_dir():
            return Path(candidate).resolve() / "lus_pleura_rib"
    return None


@pytest.fixture
def real_pleura_rib():
    """The real lus_pleura_rib folder (skips the test without it)."""
    root = pleura_rib_root()
    if root is None:
        pytest.skip("lus_pleura_rib not present (set LUS_DATA_DIR or provide ../shared/data)")
    return root

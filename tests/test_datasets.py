import shutil

import pytest

from lus_common.data import downloads as datasets


def test_registry_has_hc18_on_zenodo():
    ds = datasets.get_dataset("hc18")
    assert all("zenodo.org/records/1327317" in f.url for f in ds.files.values())
    assert ds.content_sha256


def test_verify_real_hc18(real_data):
    assert "training_set/000_HC.png" in datasets.verify_dataset("hc18")


def test_verify_detects_a_changed_file(real_data, tmp_path):
    root = tmp_path / "hc18" / "training_set"
    root.mkdir(parents=True)
    for rel in datasets.get_dataset("hc18").content_sha256:
        shutil.copy(real_data / "hc18" / rel, tmp_path / "hc18" / rel)
    (root / "001_HC.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="001_HC.png has SHA-256"):
        datasets.verify_dataset("hc18", tmp_path / "hc18")


def test_verify_missing_file(tmp_path):
    with pytest.raises(ValueError, match="missing"):
        datasets.verify_dataset("hc18", tmp_path)

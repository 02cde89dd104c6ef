"""Shenzhen chest X-ray loader: both layouts on fixtures, the real files when present."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FIXTURES, real_data_root
from PIL import Image

from lus_common.data.shenzhen import load_shenzhen, percentile_normalize


def test_masks_and_labels_layout():
    d = load_shenzhen(FIXTURES / "shenzhen", image_size=40)
    assert d.ids == ["CHNCXR_0001_0", "CHNCXR_0002_1", "CHNCXR_0003_0"] and d.source == "shenzhen"
    assert (
        list(d.meta["abnormal"]) == [0, 1, 0] and not d.synthetic and d.label == "SHENZHEN (real)"
    )
    # two 20 x 13 lungs at 200 (kept), one soft edge row at 100 (below the threshold of 127)
    assert d.masks.sum(axis=(1, 2)).tolist() == [520, 520, 520]
    assert d.images.shape == (3, 40, 40) and 0 <= d.images.min() and d.images.max() <= 1


def test_nlm_layout_with_mask_suffix_skips_images_without_mask():
    d = load_shenzhen(FIXTURES / "shenzhen_nlm", image_size=20)
    assert d.ids == ["CHNCXR_0001_0", "CHNCXR_0002_1"] and d.info["skipped_without_mask"] == 1


def test_bad_inputs_say_what_to_do(tmp_path, empty_data_dir):
    with pytest.raises(FileNotFoundError, match="LUS_DATA_DIR"):
        load_shenzhen()
    with pytest.raises(FileNotFoundError, match="not a Shenzhen folder"):
        load_shenzhen(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "images" / "CHNCXR_0001_0.png")
    Image.fromarray(np.zeros((12, 10), np.uint8)).save(tmp_path / "masks" / "CHNCXR_0001_0.png")
    with pytest.raises(ValueError, match="mask"):
        load_shenzhen(tmp_path)


def test_percentile_normalize():
    x = np.linspace(0, 1, 101, dtype=np.float32).reshape(1, 1, 101).repeat(2, 0)
    y = percentile_normalize(x, 2, 98)
    assert y[0, 0, 2] == pytest.approx(0.0, abs=1e-6) and y[0, 0, 98] == pytest.approx(
        1.0, abs=1e-6
    )
    assert y[0, 0, 50] == pytest.approx(0.5, abs=1e-6) and y.min() == 0 and y.max() == 1


def test_real_shenzhen_when_present():
    root = real_data_root()
    if root is None or not (root / "shenzhen_cxr").is_dir():
        pytest.skip("Shenzhen data not present")
    d = load_shenzhen(root / "shenzhen_cxr", image_size=128)
    assert len(d) == 566 and d.info["skipped_without_mask"] == 0
    share = d.masks.reshape(len(d), -1).mean(1)
    assert (
        0.05 < share.min() and share.max() < 0.5 and 0.2 < share.mean() < 0.3
    )  # both lungs, a quarter of the film
    assert set(d.meta["abnormal"]) == {0, 1}


def test_unreadable_mask_is_named(tmp_path):
    import shutil

    shutil.copytree(FIXTURES / "shenzhen", tmp_path / "shenzhen")
    (tmp_path / "shenzhen" / "masks" / "CHNCXR_0002_1.png").write_bytes(b"not a PNG at all")
    with pytest.raises(OSError, match=r"Cannot read the image .*masks/CHNCXR_0002_1\.png"):
        load_shenzhen(tmp_path / "shenzhen", image_size=40)

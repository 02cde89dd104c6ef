"""Chest X-ray and salient-object phantoms, salient-object loaders, and the phantom benchmark."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import FIXTURES, real_data_root

from lus_common.app.cli import main
from lus_common.data.salient import load_weizmann_horse, load_xpie
from lus_common.phantoms import (
    chest_xray_phantom,
    fetal_head_phantom,
    salient_object_phantom,
)


def test_chest_xray_phantom_anatomy():
    d = chest_xray_phantom(6, 128, abnormal_fraction=0.5, seed=0)
    assert d.images.shape == (6, 128, 128) and d.synthetic and d.label == "SYNTHETIC phantom"
    lung_share = d.masks.reshape(6, -1).mean(1)
    assert (
        (lung_share > 0.15) & (lung_share < 0.45)
    ).all()  # two lung fields, about a third of the film
    left, right = d.masks[:, :, :64].sum((1, 2)), d.masks[:, :, 64:].sum((1, 2))
    assert (
        (left > 0).all() and (right > 0).all() and right.mean() < left.mean()
    )  # the heart takes room on the right
    assert not (d.masks & d.layers["heart"]).any()
    for k in range(6):  # lungs are dark (air), the heart and the abdomen below are bright
        assert d.images[k][d.masks[k] == 1].mean() < d.images[k][d.layers["heart"][k] == 1].mean()
        assert d.images[k][d.masks[k] == 1].mean() < d.images[k][-10:, 40:88].mean()
    assert (d.layers["opacity"].reshape(6, -1).any(1) == d.meta["abnormal"].astype(bool)).all()
    np.testing.assert_array_equal(
        chest_xray_phantom(2, 64, seed=3).images, chest_xray_phantom(2, 64, seed=3).images
    )


def test_salient_object_phantom():
    d = salient_object_phantom(16, 128, seed=0)
    share = d.masks.reshape(16, -1).mean(1)
    assert ((share > 0.02) & (share < 0.6)).all()
    contrast = [
        abs(d.images[k][d.masks[k] == 1].mean() - d.images[k][d.masks[k] == 0].mean())
        for k in range(16)
    ]
    assert np.median(contrast) > 0.1  # the object stands out
    assert np.abs(d.images - salient_object_phantom(16, 128, seed=1).images).mean() > 0.05


def test_fetal_head_phantom_lives_with_the_others():
    d = fetal_head_phantom(2, 64, seed=0)
    assert d.info["generator"] == "fetal_head_phantom" and d.info["version"] >= 2


def test_xpie_layout_loader(tmp_path):
    d = load_xpie(FIXTURES / "xpie", image_size=32)
    assert d.ids == ["xp_0", "xp_1", "xp_2"] and not d.synthetic and d.source == "xpie"
    assert d.images.shape == (3, 32, 32) and d.images.max() <= 1
    # 12 x 15 of 30 x 40 pixels is 15 % of the image; resizing keeps that share.
    assert d.masks[0].mean() == pytest.approx(12 * 15 / (30 * 40), abs=0.03)
    broken = tmp_path / "xpie"
    shutil.copytree(FIXTURES / "xpie", broken)
    (broken / "gt" / "xp_1.png").unlink()
    with pytest.raises(FileNotFoundError, match="No mask for xp_1.jpg"):
        load_xpie(broken)
    with pytest.raises(FileNotFoundError, match="No image folder"):
        load_xpie(broken / "gt")


def test_xpie_missing_dataset_says_what_to_do(empty_data_dir):
    with pytest.raises(FileNotFoundError, match="LUS_DATA_DIR"):
        load_xpie()


def test_weizmann_horse_real():
    root = real_data_root()
    if root is None or not (root / "weizmann_horse").is_dir():
        pytest.skip("Weizmann horse data not present")
    d = load_weizmann_horse(root / "weizmann_horse", image_size=64)
    assert len(d) == 328 and d.source == "weizmann_horse" and not d.synthetic
    share = d.masks.reshape(len(d), -1).mean(1)
    assert 0.15 < share.mean() < 0.4 and (share > 0).all()


def test_lus_bench_phantom_prints_one_json_line(capsys):
    assert main(["bench", "--phantom", "lus", "--size", "64", "--n", "64"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    result = json.loads(out[0])
    assert result["phantom"] == "lus" and result["n"] == 64 and result["images_per_s"] > 0
    assert main(["bench", "--phantom", "ct"]) == 2

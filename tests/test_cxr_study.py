"""The chest X-ray study's pieces: Dice loss, parameters, splits, and the recorded reference runs."""

from __future__ import annotations

import numpy as np
import pytest

from lus_common import cxr_study as cs

from conftest import FIXTURES


def test_dice_coefficient_of_a_known_overlap():
    ops = cs.keras().ops
    y = ops.convert_to_tensor(np.array([1, 1, 0, 0], np.float32))
    p = ops.convert_to_tensor(np.array([1, 0, 0, 0], np.float32))
    assert float(cs.dice_coefficient(y, p)) == pytest.approx((2 * 1 + 1) / (2 + 1 + 1))
    assert float(cs.dice_loss(y, y)) == pytest.approx(0.0)


def test_all_lung_dice():
    masks = np.zeros((2, 4, 4), np.uint8)
    masks[:, :2] = 1  # half of each image is lung
    assert cs.all_lung_dice(masks) == pytest.approx(2 * 8 / (8 + 16))


def test_parameters_are_checked():
    assert cs.study_params("paper")["n_train"] == 100 and cs.study_params("paper")["epochs"] == 30
    with pytest.raises(ValueError, match="data_source"):
        cs.study_params("smoke", data_source="nih")
    with pytest.raises(ValueError, match="multiple of 32"):
        cs.study_params("smoke", image_size=48)
    with pytest.raises(ValueError, match="Unknown model"):
        cs.study_params("smoke", models=["unet", "densenet_unet"])
    with pytest.raises(ValueError, match="Unknown parameter"):
        cs.study_params("smoke", n_epochs=3)


def test_splits_are_disjoint_and_sized():
    p = cs.study_params("smoke")
    splits = cs.load_splits(p)
    assert [len(splits[k]) for k in ("val", "test", "pool")] == [4, 4, 8]
    ids = [set(splits[k].ids) for k in splits]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    x, y = cs.to_keras(splits["pool"])
    assert x.shape == (8, 32, 32, 3) and y.shape == (8, 32, 32, 1) and np.array_equal(x[..., 0], x[..., 2])
    q = np.percentile(splits["pool"].images, (2, 98), axis=(1, 2))
    np.testing.assert_allclose(q, [[0] * 8, [1] * 8], atol=0.02)  # the authors' 2-98 percentile stretch


def test_too_few_real_images_is_explained(tmp_path, monkeypatch):
    (tmp_path / "shenzhen_cxr").symlink_to(FIXTURES / "shenzhen")
    monkeypatch.setenv("LUS_DATA_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="The split needs 16 images"):
        cs.load_splits(cs.study_params("smoke", data_source="shenzhen"))


def test_reference_runs_support_the_chapter_text():
    """The Discussion quotes these numbers; they must say what it says."""
    what, ref = cs.reference_table()
    assert "Shenzhen" in what and set(ref["BN momentum"]) == {0.99, 0.9}
    keras_default = ref[ref["BN momentum"] == 0.99].iloc[0]
    retrained = ref[ref["BN momentum"] == 0.9].iloc[0]
    assert keras_default["test Dice, training mode"] - keras_default["test Dice, inference mode"] > 0.3
    assert abs(keras_default["test Dice, BN recomputed"] - keras_default["test Dice, training mode"]) < 0.01
    assert abs(retrained["test Dice, inference mode"] - retrained["test Dice, training mode"]) < 0.01
    assert round(keras_default["test Dice, inference mode"], 2) == 0.56 and round(retrained["test Dice, inference mode"], 2) == 0.95

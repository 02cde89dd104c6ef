import numpy as np
import pytest
from skimage.draw import ellipse

from lus_common.evaluation.biometry import head_circumference_mm
from lus_common.evaluation.metrics import segmentation_scores
from lus_common.phantoms import ellipse_circumference


def test_dice_iou_accuracy_of_known_overlap():
    pred = np.zeros((1, 20, 20))
    truth = np.zeros((1, 20, 20), np.uint8)
    pred[0, 0:10, 0:10] = 1  # 100 px
    truth[0, 0:10, 5:15] = 1  # 100 px, 50 shared
    s = segmentation_scores(pred, truth).iloc[0]
    assert s.dice == pytest.approx(0.5)
    assert s.iou == pytest.approx(50 / 150)
    assert s.pixel_accuracy == pytest.approx(300 / 400)
    # background: 250 shared of 350 in the union
    assert s.miou == pytest.approx((50 / 150 + 250 / 350) / 2)


def test_threshold_applies_to_probabilities():
    pred = np.full((1, 4, 4), 0.4)
    truth = np.ones((1, 4, 4), np.uint8)
    assert segmentation_scores(pred, truth, threshold=0.5).dice[0] == pytest.approx(0.0)
    assert segmentation_scores(pred, truth, threshold=0.3).dice[0] == pytest.approx(1.0)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in shape"):
        segmentation_scores(np.zeros((1, 4, 4)), np.zeros((1, 4, 5)))


def test_ramanujan_circle_and_known_ellipse():
    assert ellipse_circumference(10, 10) == pytest.approx(2 * np.pi * 10)
    # a=2, b=1: exact perimeter 9.688448220547...
    assert ellipse_circumference(2, 1) == pytest.approx(9.688448, rel=1e-5)


def test_head_circumference_with_anisotropic_pixels():
    spacing = (0.2, 0.15)  # mm per row, per column
    mask = np.zeros((540, 800), np.uint8)
    rr, cc = ellipse(
        270, 400, 20 / spacing[0], 30 / spacing[1], shape=mask.shape
    )  # semi-axes 20, 30 mm
    mask[rr, cc] = 1
    assert head_circumference_mm(mask, spacing) == pytest.approx(
        ellipse_circumference(30, 20), rel=0.005
    )


def test_head_circumference_uses_largest_region_and_nan_when_empty():
    mask = np.zeros((100, 100), np.uint8)
    assert np.isnan(head_circumference_mm(mask, (1, 1)))
    rr, cc = ellipse(50, 50, 20, 20)
    mask[rr, cc] = 1
    mask[0:2, 0:2] = 1  # a speck
    assert head_circumference_mm(mask, (1, 1)) == pytest.approx(2 * np.pi * 20, rel=0.01)


def test_pooled_scores_are_the_hc18_authors_check_accuracy():
    """Dice and IoU pooled over the pixels of each batch, then averaged over batches."""
    from lus_common.evaluation.metrics import pooled_scores

    target = np.zeros((3, 4, 4), np.uint8)
    target[:, :2] = 1  # 8 head pixels per image
    pred = target.astype(np.float32).copy()
    pred[1, :1] = 0  # image 1: 4 of its 8 head pixels found
    pred[2] = 0  # image 2: nothing found
    s = pooled_scores(pred, target, batch_size=2)
    # batch 1 (images 0, 1): intersection 12, |p| + |t| = 12 + 16 -> Dice 24/28, IoU 12/16
    # batch 2 (image 2): Dice 0, IoU 0
    assert s["dice"] == pytest.approx((24 / 28 + 0) / 2, abs=1e-6)
    assert s["iou"] == pytest.approx((12 / 16 + 0) / 2, abs=1e-6)
    assert s["pixel_accuracy"] == pytest.approx(1 - 12 / 48)
    # Per image the same predictions average differently: the definitions must be kept apart.
    assert segmentation_scores(pred, target)["dice"].mean() == pytest.approx(
        (1 + 2 / 3 + 0) / 3, abs=1e-6
    )
    with pytest.raises(ValueError, match="differ in shape"):
        pooled_scores(pred[:, :2], target, 2)


def test_class_scores_and_false_positives_of_known_label_maps():
    """Two 4x6 maps of paper 5's sparse classes with known overlaps."""
    from lus_common.evaluation.metrics import class_scores, false_positives

    classes = ["background", "A-line", "B-line", "pleural line"]
    target = np.zeros((2, 4, 6), int)
    target[0, 0, :] = 3  # pleural line: 6 pixels
    target[0, 2, 1:5] = 1  # an A-line: 4 pixels
    pred = target.copy()
    pred[0, 2, 1:3] = 0  # half the A-line missed
    pred[0, 3, 0] = 1  # a stray A-line pixel, a component of its own (8-connected)
    pred[1, 1:3, 0] = 2  # a B-line where image 1 has none: 2 pixels, one component
    out = class_scores(pred, target, classes)
    assert out["iou"]["pleural line"] == 1.0
    assert out["iou"]["A-line"] == pytest.approx(2 / 5)  # tp 2, fn 2, fp 1
    assert out["iou"]["B-line"] == 0.0  # predicted only
    bg_tp = 48 - 6 - 4 - 1 - 2  # all background pixels that stay background: 35
    assert out["iou"]["background"] == pytest.approx(bg_tp / (bg_tp + 2 + 3))
    assert out["pixel_accuracy"] == pytest.approx(1 - 5 / 48)
    assert out["miou"] == pytest.approx(np.mean(list(out["iou"].values())))
    fp = false_positives(pred, target, classes).set_index(["image", "class"])
    assert fp.loc[(0, "A-line"), ["fp_pixels", "fp_components", "components"]].tolist() == [1, 1, 2]
    assert fp.loc[(1, "B-line"), ["fp_pixels", "fp_components"]].tolist() == [2, 1]
    assert fp.loc[(0, "pleural line"), "fp_pixels"] == 0
    assert np.isnan(class_scores(target[1:], target[1:], classes)["iou"]["A-line"])
    with pytest.raises(ValueError, match="label maps"):
        class_scores(pred[0], target[0], classes)

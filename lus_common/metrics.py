"""Segmentation metrics (smp's ``get_stats`` + scores) and head circumference from a mask.

Per-image metrics, then means, as the HC18 paper reports them: pixel accuracy (PA), Dice, IoU of
the head, and mIoU (mean of head and background IoU, "the average IoU over all classes K").
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from skimage.measure import label, regionprops

from .phantoms import ellipse_circumference


def segmentation_scores(pred, target, threshold: float = 0.5) -> pd.DataFrame:
    """Per-image binary segmentation scores.

    Args:
        pred: probabilities or 0/1 masks, shape (N, H, W) (numpy or torch).
        target: 0/1 masks of the same shape.
        threshold: cut-off applied to ``pred``.

    Returns:
        DataFrame with one row per image: ``pixel_accuracy``, ``dice``, ``iou``, ``miou``.
    """
    import segmentation_models_pytorch as smp

    pred = torch.as_tensor(np.asarray(pred, dtype=np.float32))
    target = torch.as_tensor(np.asarray(target)).long()
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    tp, fp, fn, tn = smp.metrics.get_stats(pred[:, None], target[:, None], mode="binary", threshold=threshold)
    iou_fg = smp.metrics.iou_score(tp, fp, fn, tn)
    iou_bg = smp.metrics.iou_score(tn, fn, fp, tp)  # background as the positive class
    return pd.DataFrame(
        {
            "pixel_accuracy": smp.metrics.accuracy(tp, fp, fn, tn).flatten().numpy(),
            "dice": smp.metrics.f1_score(tp, fp, fn, tn).flatten().numpy(),
            "iou": iou_fg.flatten().numpy(),
            "miou": ((iou_fg + iou_bg) / 2).flatten().numpy(),
        }
    )


def head_circumference_mm(mask: np.ndarray, spacing_mm) -> float:
    """Head circumference of the largest region of a mask, by ellipse fit, in millimetres.

    The ellipse has the second moments of the region, measured in millimetres (``spacing_mm``
    handles the anisotropic pixels of resized HC18 images); its perimeter is Ramanujan's.

    Args:
        mask: 2-D 0/1 array.
        spacing_mm: (row, col) pixel size in mm.

    Returns:
        Circumference in mm, NaN for an empty mask.
    """
    labels = label(np.asarray(mask) > 0)
    if labels.max() == 0:
        return float("nan")
    regions = regionprops(labels, spacing=tuple(float(s) for s in spacing_mm))
    region = max(regions, key=lambda r: r.area)
    return float(ellipse_circumference(region.axis_major_length / 2, region.axis_minor_length / 2))


def head_circumferences(masks: np.ndarray, spacing_mm: np.ndarray) -> np.ndarray:
    """:func:`head_circumference_mm` for a stack of masks with one spacing per mask."""
    return np.array([head_circumference_mm(m, s) for m, s in zip(masks, spacing_mm)])


def hc_absolute_error(pred_hc_mm, true_hc_mm) -> np.ndarray:
    """Absolute HC difference in mm per image (the HC18 challenge ranks on its mean)."""
    return np.abs(np.asarray(pred_hc_mm, float) - np.asarray(true_hc_mm, float))

"""Segmentation metrics (smp's ``get_stats`` + scores) and head circumference from a mask.

Two definitions, kept apart because papers differ:

- :func:`segmentation_scores`: per image, then means: pixel accuracy (PA), Dice, IoU of the
  foreground (head), and ``miou``, the mean of foreground and background IoU (the two-class mIoU that
  the HC18 paper's text defines, but not what its code computes);
- :func:`pooled_scores`: the HC18 authors' ``check_accuracy``: Dice and foreground IoU pooled over
  the pixels of each batch, then averaged over batches; PA over all pixels. Their "mIoU" is this
  foreground (head) IoU.
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


def pooled_scores(pred, target, batch_size: int, threshold: float = 0.5) -> dict:
    """The HC18 authors' ``check_accuracy``: per batch of ``batch_size`` images (in order), Dice and
    head IoU over the batch's pixels, averaged over batches; pixel accuracy over all pixels.

    Returns:
        ``{"pixel_accuracy", "dice", "iou"}`` as fractions.
    """
    pred = torch.as_tensor(np.asarray(pred, dtype=np.float32)) > threshold
    target = torch.as_tensor(np.asarray(target)) > 0
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    dice, iou = [], []
    for start in range(0, len(pred), batch_size):
        p, t = pred[start:start + batch_size].float(), target[start:start + batch_size].float()
        inter, total = (p * t).sum(), (p + t).sum()
        dice.append(2 * inter / (total + 1e-8))
        iou.append(inter / (total - inter + 1e-8))
    return {"pixel_accuracy": float((pred == target).float().mean()), "dice": float(torch.stack(dice).mean()),
            "iou": float(torch.stack(iou).mean())}


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

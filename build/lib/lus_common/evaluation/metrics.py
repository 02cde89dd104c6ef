"""Segmentation metrics (smp's ``get_stats`` + scores); head circumference is in ``biometry``.

Two definitions, kept apart because papers differ:

- :func:`segmentation_scores`: per image, then means: pixel accuracy (PA), Dice, IoU of the
  foreground (head), and ``miou``, the mean of foreground and background IoU (the two-class mIoU
  that the HC18 paper's text defines, but not what its code computes);
- :func:`pooled_scores`: the HC18 authors' ``check_accuracy``: Dice and foreground IoU pooled over
  the pixels of each batch, then averaged over batches; PA over all pixels. Their "mIoU" is this
  foreground (head) IoU.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch


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
        raise ValueError(
            f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape"
        )
    tp, fp, fn, tn = smp.metrics.get_stats(
        pred[:, None], target[:, None], mode="binary", threshold=threshold
    )
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
        raise ValueError(
            f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape"
        )
    dice, iou = [], []
    for start in range(0, len(pred), batch_size):
        p, t = pred[start : start + batch_size].float(), target[start : start + batch_size].float()
        inter, total = (p * t).sum(), (p + t).sum()
        dice.append(2 * inter / (total + 1e-8))
        iou.append(inter / (total - inter + 1e-8))
    return {
        "pixel_accuracy": float((pred == target).float().mean()),
        "dice": float(torch.stack(dice).mean()),
        "iou": float(torch.stack(iou).mean()),
    }

"""Segmentation metrics (smp's ``get_stats`` + scores); head circumference is in ``biometry``.

Two definitions, kept apart because papers differ:

- :func:`segmentation_scores`: per image, then means: pixel accuracy (PA), Dice, IoU of the
  foreground (head), and ``miou``, the mean of foreground and background IoU (the two-class mIoU
  that the HC18 paper's text defines, but not what its code computes);
- :func:`pooled_scores`: the HC18 authors' ``check_accuracy``: Dice and foreground IoU pooled over
  the pixels of each batch, then averaged over batches; PA over all pixels. Their "mIoU" is this
  foreground (head) IoU;
- :func:`class_scores` and :func:`false_positives`: label maps with several classes (paper 5's
  dense and sparse labels): pixel accuracy, per-class IoU pooled over the images, and the false
  positives per class as pixels and as connected components.
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


def _label_maps(pred, target) -> tuple[torch.Tensor, torch.Tensor]:
    pred = torch.as_tensor(np.asarray(pred)).long()
    target = torch.as_tensor(np.asarray(target)).long()
    if pred.shape != target.shape or pred.ndim != 3:
        raise ValueError(
            f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} must be label maps "
            "of one shape (N, H, W)"
        )
    return pred, target


def class_scores(pred, target, classes: list[str]) -> dict:
    """Pixel accuracy and per-class IoU of label maps, pooled over all pixels of the images (the
    IoU of a class over a test fold, as paper 5's Table 1 reports it).

    Args:
        pred: predicted class indices, (N, H, W).
        target: true class indices, same shape.
        classes: the class names, index order.

    Returns:
        ``{"pixel_accuracy": float, "iou": {class: float}, "miou": mean over the classes}``; a
        class absent from both prediction and truth has IoU NaN and is left out of ``miou``.
    """
    import segmentation_models_pytorch as smp

    pred, target = _label_maps(pred, target)
    stats = smp.metrics.get_stats(pred, target, mode="multiclass", num_classes=len(classes))
    tp, fp, fn = stats[:3]
    tp, fp, fn = tp.sum(0).double(), fp.sum(0).double(), fn.sum(0).double()
    union = tp + fp + fn
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.nan)
    return {
        "pixel_accuracy": float((pred == target).double().mean()),
        "iou": dict(zip(classes, iou.tolist())),
        "miou": float(np.nanmean(iou.numpy())) if bool((union > 0).any()) else float("nan"),
    }


def false_positives(pred, target, classes: list[str]) -> pd.DataFrame:
    """False positives per image and class: pixels predicted as the class where the truth is
    another, and predicted connected components (8-connected) that touch no true pixel of the
    class (a detection with no object behind it).

    Args:
        pred: predicted class indices, (N, H, W).
        target: true class indices, same shape.
        classes: the class names, index order (every class is counted, background included).

    Returns:
        One row per (image, class): ``image``, ``class``, ``fp_pixels``, ``fp_components``,
        ``components`` (all predicted components of the class).
    """
    from scipy import ndimage

    pred, target = (x.numpy() for x in _label_maps(pred, target))
    eight = np.ones((3, 3), bool)
    rows = []
    for i in range(len(pred)):
        for c, name in enumerate(classes):
            mine, truth = pred[i] == c, target[i] == c
            labels, n = ndimage.label(mine, structure=eight)
            hit = np.unique(labels[truth & mine])
            rows.append(
                {
                    "image": i,
                    "class": name,
                    "fp_pixels": int((mine & ~truth).sum()),
                    "fp_components": int(n - np.count_nonzero(hit)),
                    "components": int(n),
                }
            )
    return pd.DataFrame(rows)

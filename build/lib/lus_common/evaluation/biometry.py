"""Head circumference from a segmentation mask (HC18's biometry): an ellipse fitted to the largest
region, its perimeter in millimetres, and the absolute error against the annotation.
"""

from __future__ import annotations

import numpy as np
from skimage.measure import label, regionprops

from lus_common.phantoms import ellipse_circumference


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

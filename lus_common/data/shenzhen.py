"""Shenzhen chest X-rays with lung masks (paper 3).

Two layouts are read, under ``$LUS_DATA_DIR/shenzhen_cxr`` by default:

- the "Chest X-ray masks and labels" layout: ``images/CHNCXR_NNNN_L.png`` and ``masks/`` with the
  same file name;
- the original NLM layout: ``CXR_png/CHNCXR_NNNN_L.png`` and ``masks/`` (or ``mask/``) with a
  ``_mask`` suffix, ``CHNCXR_NNNN_L_mask.png``. Not every NLM image has a mask; those are skipped
  and counted in ``info["skipped_without_mask"]``.

``L`` in the name is the label (0 normal, 1 tuberculosis), kept in ``meta["abnormal"]``. Masks are
both lungs in one image with soft edges: thresholded at 127. Every image is one patient.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from lus_common.config.paths import dataset_dir
from lus_common.data.packed import packed_set
from lus_common.data.sets import SegmentationSet, read_image_mask

_NAME = re.compile(r"^CHNCXR_(\d{4})_([01])$")


def _mask_for(image: Path, mask_dir: Path) -> Path | None:
    for name in (image.name, f"{image.stem}_mask.png", f"{image.stem}_mask{image.suffix}"):
        if (mask_dir / name).is_file():
            return mask_dir / name
    return None


def load_shenzhen(
    root: Path | None = None, image_size: int = 128, limit: int | None = None
) -> SegmentationSet:
    """Load Shenzhen chest X-rays and lung masks, resized to ``image_size`` x ``image_size``.

    Args:
        root: the dataset folder (default ``$LUS_DATA_DIR/shenzhen_cxr``).
        image_size: side of the output arrays.
        limit: keep the first ``limit`` pairs (sorted by name).

    Returns:
        A real :class:`SegmentationSet` (images in [0, 1], grey); ``meta["abnormal"]`` from the
        name.

    Raises:
        FileNotFoundError: no dataset, no image folder, or no image with a mask.
        ValueError: an image and its mask differ in size.
    """
    if root is None:  # a pack of these arguments in $LUS_PACKED_DIR (`lus gpu-pack`)
        packed = packed_set("shenzhen_cxr", image_size=image_size, limit=limit)
        if packed is not None:
            return packed
    root = Path(root) if root is not None else dataset_dir("shenzhen_cxr")
    image_dir = next((root / d for d in ("images", "CXR_png") if (root / d).is_dir()), None)
    mask_dir = next((root / d for d in ("masks", "mask") if (root / d).is_dir()), None)
    if image_dir is None or mask_dir is None:
        raise FileNotFoundError(
            f"{root} is not a Shenzhen folder: expected images/ + masks/ (Chest X-ray masks and "
            "labels) or CXR_png/ + masks/ with _mask suffixes (NLM release)."
        )
    pairs, skipped = [], 0
    for path in sorted(image_dir.glob("CHNCXR_*.png")):
        mask = _mask_for(path, mask_dir)
        if mask is None:
            skipped += 1
        else:
            pairs.append((path, mask))
    if not pairs:
        raise FileNotFoundError(f"No CHNCXR_*.png image in {image_dir} has a mask in {mask_dir}.")
    pairs = pairs[:limit] if limit else pairs
    images, masks, ids, abnormal = [], [], [], []
    for path, mask_path in pairs:
        image, mask = read_image_mask(path, mask_path, image_size)
        images.append(image)
        masks.append(mask)
        ids.append(path.stem)
        match = _NAME.match(path.stem)
        abnormal.append(int(match.group(2)) if match else -1)
    return SegmentationSet(
        images=np.stack(images),
        masks=np.stack(masks),
        ids=ids,
        source="shenzhen",
        synthetic=False,
        info={"root": str(root), "skipped_without_mask": skipped},
        meta=pd.DataFrame({"abnormal": abnormal}),
    )


def percentile_normalize(
    images: np.ndarray, low: float = 2.0, high: float = 98.0, per_image: bool = False
) -> np.ndarray:
    """Contrast stretch: the ``low`` and ``high`` percentiles map to 0 and 1 (clipped).

    The authors compute one pair of percentiles over the whole set (``per_image=False``);
    ``per_image=True`` stretches every image by its own.
    """
    axis = (1, 2) if per_image else None
    lo = np.percentile(images, low, axis=axis, keepdims=True)
    hi = np.percentile(images, high, axis=axis, keepdims=True)
    return np.clip((images - lo) / np.maximum(hi - lo, 1e-6), 0, 1).astype(np.float32)

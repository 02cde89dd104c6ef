"""Loaders for real salient-object sets, so real data can replace the salient-object phantom.

- ``weizmann_horse/``: ``gray/horseNNN.jpg`` and ``figure_ground/horseNNN.jpg`` (masks as JPEG,
  thresholded at 127), the Weizmann Horse database (Borenstein & Ullman, ECCV 2002).
- XPIE layout (Xia et al., CVPR 2017): an image folder and a mask folder side by side whose files
  share stems, e.g. ``xpie/img/NAME.jpg`` and ``xpie/gt/NAME.png``. The folder names accepted are
  listed in :data:`IMAGE_FOLDERS` and :data:`MASK_FOLDERS`.

Images are converted to grey and resized to a square (paper 2: 256 x 256, aspect not kept).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lus_common.config.paths import dataset_dir
from lus_common.data.sets import SegmentationSet, read_image_mask

IMAGE_FOLDERS = ("img", "images", "Image", "Images", "Imgs", "gray")
MASK_FOLDERS = ("gt", "GT", "masks", "Mask", "Masks", "figure_ground")
SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def _pick(root: Path, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise FileNotFoundError(f"No {what} folder in {root}: expected one of {list(names)}.")


def load_image_mask_folders(
    image_dir: Path,
    mask_dir: Path,
    image_size: int = 256,
    limit: int | None = None,
    source: str = "salient",
) -> SegmentationSet:
    """Pairs of grey images and binary masks matched by file stem, resized to a square.

    Args:
        image_dir: folder of images (any of :data:`SUFFIXES`; colour is converted to grey).
        mask_dir: folder of masks with the same stems (thresholded at 127).
        image_size: side of the output arrays.
        limit: keep only the first ``limit`` pairs (sorted by name).
        source: name recorded in the set.

    Raises:
        FileNotFoundError: no image, or an image without a mask.
        ValueError: an image and its mask differ in size.
    """
    images_paths = sorted(p for p in Path(image_dir).iterdir() if p.suffix.lower() in SUFFIXES)
    if not images_paths:
        raise FileNotFoundError(f"No images ({', '.join(SUFFIXES)}) in {image_dir}.")
    masks_by_stem = {p.stem: p for p in Path(mask_dir).iterdir() if p.suffix.lower() in SUFFIXES}
    images_paths = images_paths[:limit] if limit else images_paths
    images, masks = [], []
    for path in images_paths:
        if path.stem not in masks_by_stem:
            raise FileNotFoundError(
                f"No mask for {path.name} in {mask_dir} (expected {path.stem}.png or .jpg)."
            )
        image, mask = read_image_mask(path, masks_by_stem[path.stem], image_size)
        images.append(image)
        masks.append(mask)
    ids = [p.stem for p in images_paths]
    n = len(ids)
    return SegmentationSet(
        images=np.stack(images),
        masks=np.stack(masks),
        ids=ids,
        spacing_mm=np.ones((n, 2)),
        source=source,
        synthetic=False,
        info={"image_dir": str(image_dir), "mask_dir": str(mask_dir)},
    )


def load_weizmann_horse(
    root: Path | None = None, image_size: int = 256, limit: int | None = None
) -> SegmentationSet:
    """The Weizmann Horse set (``gray/`` + ``figure_ground/``), default
    ``$LUS_DATA_DIR/weizmann_horse``."""
    root = Path(root) if root is not None else dataset_dir("weizmann_horse")
    return load_image_mask_folders(
        root / "gray", root / "figure_ground", image_size, limit, "weizmann_horse"
    )


def load_xpie(
    root: Path | None = None, image_size: int = 256, limit: int | None = None
) -> SegmentationSet:
    """A salient-object set in the XPIE layout, default ``$LUS_DATA_DIR/xpie``."""
    root = Path(root) if root is not None else dataset_dir("xpie")
    return load_image_mask_folders(
        _pick(root, IMAGE_FOLDERS, "image"),
        _pick(root, MASK_FOLDERS, "mask"),
        image_size,
        limit,
        "xpie",
    )

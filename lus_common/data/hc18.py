"""Loader for the HC18 Grand Challenge training set in its official layout.

Layout (``<data_dir>/hc18``)::

    training_set/NNN_HC.png              800x540 grey ultrasound image
    training_set/NNN_HC_Annotation.png   ellipse OUTLINE, as released (filled here), or
    training_set/NNN_HC_Mask.png         the filled ellipse
    training_set_pixel_size_and_HC.csv   filename, pixel size (mm), head circumference (mm)

Images named ``NNN_2HC.png`` are further images of subject ``NNN``; splits keep a subject on
one side.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

from lus_common.config.paths import dataset_dir
from lus_common.data.packed import packed_set
from lus_common.data.sets import SegmentationSet, read_grey

CSV_NAME = "training_set_pixel_size_and_HC.csv"
_IMAGE_RE = re.compile(r"^(\d+)_(\d*)HC\.png$")


def _ellipse_fill(edge: np.ndarray) -> np.ndarray:
    """The filled ellipse fitted (least squares) to the outline pixels, clipped to the image."""
    from skimage.draw import polygon
    from skimage.measure import EllipseModel

    rows, cols = np.nonzero(edge)
    xy = np.column_stack([cols, rows]).astype(float)
    if hasattr(EllipseModel, "from_estimate"):  # scikit-image >= 0.26
        model = EllipseModel.from_estimate(xy)
        ok = bool(model)
    else:
        model = EllipseModel()
        ok = model.estimate(xy)
    if not ok:
        raise ValueError(
            "the outline touches the image border and no ellipse could be fitted to it"
        )
    x, y = model.predict_xy(np.linspace(0, 2 * np.pi, 720, endpoint=False)).T
    mask = np.zeros(edge.shape, np.uint8)
    rr, cc = polygon(y, x, shape=edge.shape)
    mask[rr, cc] = 1
    return mask


def fill_outline(outline: np.ndarray) -> np.ndarray:
    """Fill a closed ellipse outline (the released annotation) into a solid 0/1 mask.

    An outline cut by the image border (the head leaves the frame: HC18 images 186, 346, 787) is not
    closed, and filling its holes would leave only the drawn ring; such an outline is filled with
    the ellipse fitted to its pixels, clipped to the image.

    Args:
        outline: 2-D array, non-zero on the drawn outline.

    Returns:
        uint8 mask, 1 inside and on the outline.
    """
    edge = outline > 0
    # Close one-pixel gaps in the drawn contour before filling.
    closed = ndimage.binary_closing(edge, structure=np.ones((3, 3)), iterations=1)
    filled = ndimage.binary_fill_holes(closed)
    border = np.concatenate([edge[0], edge[-1], edge[:, 0], edge[:, -1]])
    if border.any():
        filled |= _ellipse_fill(edge).astype(bool)
    return filled.astype(np.uint8)


def read_mask(image_path: Path) -> np.ndarray:
    """Read the mask belonging to an HC18 image: filled ``_Mask`` or outline ``_Annotation``.

    Raises:
        FileNotFoundError: neither mask file exists.
    """
    stem = image_path.stem
    filled = image_path.with_name(f"{stem}_Mask.png")
    outline = image_path.with_name(f"{stem}_Annotation.png")
    if filled.is_file():
        arr = np.asarray(read_grey(filled))
        return (arr > 127).astype(np.uint8)
    if outline.is_file():
        return fill_outline(np.asarray(read_grey(outline)) > 127)
    raise FileNotFoundError(
        f"No mask for {image_path.name}: expected {filled.name} (filled) or "
        f"{outline.name} (outline)."
    )


def _resize(arr: np.ndarray, size: int, is_mask: bool) -> np.ndarray:
    img = Image.fromarray(arr * 255 if is_mask else arr)
    out = np.asarray(img.resize((size, size), Image.BILINEAR))
    return (out > 127).astype(np.uint8) if is_mask else out


def load_hc18(
    root: Path | None = None, image_size: int = 512, limit: int | None = None
) -> SegmentationSet:
    """Load the HC18 training set, resized to ``image_size`` x ``image_size``.

    Args:
        root: the ``hc18`` folder; default ``<data_dir>/hc18``.
        image_size: side of the square arrays returned.
        limit: keep only the first ``limit`` subjects' images (sorted by name), for quick runs.

    Returns:
        A :class:`SegmentationSet`; ``spacing_mm`` is the pixel size of the resized arrays and
        ``hc_mm`` the reference circumference from the CSV.

    Raises:
        FileNotFoundError: the folder, the CSV or a mask is missing.
        ValueError: an image and its mask differ in size, or the CSV lacks an image.
    """
    if root is None:  # a pack of these arguments in $LUS_PACKED_DIR (`lus gpu-pack`)
        packed = packed_set("hc18", image_size=image_size, limit=limit)
        if packed is not None:
            return packed
    root = Path(root) if root is not None else dataset_dir("hc18")
    folder = root / "training_set"
    csv_path = root / CSV_NAME
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} not found: the HC18 folder must contain training_set/.")
    if not csv_path.is_file():
        raise FileNotFoundError(
            f"{csv_path} not found: HC18 needs its pixel-size CSV ({CSV_NAME})."
        )
    table = pd.read_csv(csv_path)
    table.columns = ["filename", "pixel_size_mm", "hc_mm"]
    table = table.set_index("filename")

    paths = sorted(p for p in folder.iterdir() if _IMAGE_RE.match(p.name))
    if not paths:
        raise FileNotFoundError(f"No NNN_HC.png images in {folder}.")
    subjects = [_IMAGE_RE.match(p.name).group(1) for p in paths]
    if limit is not None:
        keep = set(sorted(set(subjects))[:limit])
        paths, subjects = zip(*[(p, s) for p, s in zip(paths, subjects) if s in keep])

    images, masks, spacing, hc = [], [], [], []
    for path in paths:
        image = np.asarray(read_grey(path))
        mask = read_mask(path)
        if image.shape != mask.shape:
            raise ValueError(
                f"{path.name} is {image.shape[1]}x{image.shape[0]} but its mask is "
                f"{mask.shape[1]}x{mask.shape[0]}: image and mask must have the same size."
            )
        if path.name not in table.index:
            raise ValueError(f"{path.name} has no row in {CSV_NAME}.")
        px = float(table.at[path.name, "pixel_size_mm"])
        rows, cols = image.shape
        images.append(_resize(image, image_size, is_mask=False))
        masks.append(_resize(mask, image_size, is_mask=True))
        spacing.append((px * rows / image_size, px * cols / image_size))
        hc.append(float(table.at[path.name, "hc_mm"]))

    return SegmentationSet(
        images=np.stack(images).astype(np.float32) / 255.0,
        masks=np.stack(masks),
        ids=[p.stem for p in paths],
        groups=list(subjects),
        spacing_mm=np.asarray(spacing, dtype=np.float64),
        hc_mm=np.asarray(hc, dtype=np.float64),
        source="hc18",
        synthetic=False,
        info={"root": str(root), "original_shape": list(image.shape)},
    )

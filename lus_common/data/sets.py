"""The in-memory segmentation set every study uses, and subject-disjoint splits (one train/test
split, :func:`split_by_group`, or k folds, :func:`group_folds`).

Loaders (``hc18``) and phantoms (``phantoms``) both return a :class:`SegmentationSet`, so a
study switches between real and synthetic data with one parameter.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd


def fingerprint(arrays, name_lists) -> str:
    """12 hex digits of SHA-256 over arrays (shape and bytes, in order) and lists of names (each
    joined by newlines, lists separated by a NUL byte): what names a data set in run keys."""
    h = hashlib.sha256()
    for arr in arrays:
        h.update(str(arr.shape).encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    h.update(b"\0".join("\n".join(names).encode() for names in name_lists))
    return h.hexdigest()[:12]


@dataclass
class SegmentationSet:
    """Images, binary masks and per-image metadata, all of one size.

    Attributes:
        images: float32 array (N, H, W) scaled to [0, 1].
        masks: uint8 array (N, H, W) of 0/1.
        ids: one name per image (file stem or phantom id).
        source: where the data came from, e.g. ``"hc18"`` or ``"synthetic"``.
        synthetic: True for phantom data; figures and tables say so.
        groups: subject id per image; splits never put one subject on both sides (default: the
            ids, one image per subject).
        spacing_mm: float array (N, 2), millimetres per pixel along (rows, cols) of these arrays
            (default: NaN, unknown).
        hc_mm: float array (N,), reference head circumference in mm (default: NaN, unknown).
        info: free-form description of the generator or loader.
        layers: more per-pixel maps of the images' shape, by name (e.g. the lung phantom's
            ``"ribs"`` or ``"dense"`` class map); ``masks`` is the one the study trains on.
        meta: per-image table (one row per image: patient, video, frame, diagnosis, ...).
    """

    images: np.ndarray
    masks: np.ndarray
    ids: list[str]
    source: str
    synthetic: bool
    groups: list[str] | None = None
    spacing_mm: np.ndarray | None = None
    hc_mm: np.ndarray | None = None
    info: dict = field(default_factory=dict)
    layers: dict = field(default_factory=dict)
    meta: pd.DataFrame | None = None

    def __post_init__(self):
        n = len(self.images)
        if self.groups is None:
            self.groups = list(self.ids)
        if self.spacing_mm is None:
            self.spacing_mm = np.full((n, 2), np.nan)
        if self.hc_mm is None:
            self.hc_mm = np.full(n, np.nan)
        if self.images.shape != self.masks.shape:
            raise ValueError(
                f"images {self.images.shape} and masks {self.masks.shape} differ in shape: "
                "every mask must have its image's size."
            )
        for name in ("ids", "groups", "spacing_mm", "hc_mm"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries for {n} images.")
        for name, layer in self.layers.items():
            if layer.shape != self.masks.shape:
                raise ValueError(
                    f"layer '{name}' has shape {layer.shape}, the masks {self.masks.shape}."
                )
        if self.meta is not None and len(self.meta) != n:
            raise ValueError(f"meta has {len(self.meta)} rows for {n} images.")

    @classmethod
    def phantom(cls, images, masks, ids, generator: str, version, **fields) -> SegmentationSet:
        """A synthetic set: source ``"synthetic"``, ``synthetic=True``, and the generator's name
        and version in ``info`` (with any other ``info`` given)."""
        info = {"generator": generator, "version": version, **fields.pop("info", {})}
        return cls(
            images=images,
            masks=masks,
            ids=ids,
            source="synthetic",
            synthetic=True,
            info=info,
            **fields,
        )

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index) -> SegmentationSet:
        """The images at ``index`` (an integer array), as a new set."""
        index = np.asarray(index, dtype=int)
        return SegmentationSet(
            images=self.images[index],
            masks=self.masks[index],
            ids=[self.ids[i] for i in index],
            groups=[self.groups[i] for i in index],
            spacing_mm=self.spacing_mm[index],
            hc_mm=self.hc_mm[index],
            source=self.source,
            synthetic=self.synthetic,
            info=dict(self.info),
            layers={name: layer[index] for name, layer in self.layers.items()},
            meta=None if self.meta is None else self.meta.iloc[index].reset_index(drop=True),
        )

    def fingerprint(self) -> str:
        """A short hash of the pixels, masks, pixel sizes, reference circumferences and ids: names
        this exact data in run keys.

        It changes when a file, the loader, the resizing or the phantom generator changes, so a
        stored run is never reused for other data.
        """
        measures = [np.asarray(a, np.float64) for a in (self.spacing_mm, self.hc_mm)]
        # An all-NaN measurement (a set without pixel sizes or circumferences) carries nothing.
        arrays = [self.images, self.masks, *(m for m in measures if not np.isnan(m).all())]
        return fingerprint(arrays, [self.ids])

    @classmethod
    def concat(cls, sets: list[SegmentationSet]) -> SegmentationSet:
        """The sets one after the other (e.g. phantom patients drawn by diagnosis). They must share
        source, ``synthetic`` and layer names; ``info`` is the first set's, ``meta`` is joined
        where every set has one.

        Raises:
            ValueError: no set, or sets of another source, kind or layer names.
        """
        if not sets:
            raise ValueError("concat needs at least one set.")
        first = sets[0]
        for s in sets[1:]:
            if (s.source, s.synthetic, set(s.layers)) != (
                first.source,
                first.synthetic,
                set(first.layers),
            ):
                raise ValueError(
                    "Sets to join must share source, synthetic and layer names: "
                    f"{first.source}/{sorted(first.layers)} vs {s.source}/{sorted(s.layers)}."
                )
        metas = [s.meta for s in sets]
        return cls(
            images=np.concatenate([s.images for s in sets]),
            masks=np.concatenate([s.masks for s in sets]),
            ids=[i for s in sets for i in s.ids],
            source=first.source,
            synthetic=first.synthetic,
            groups=[g for s in sets for g in s.groups],
            spacing_mm=np.concatenate([s.spacing_mm for s in sets]),
            hc_mm=np.concatenate([s.hc_mm for s in sets]),
            info=dict(first.info),
            layers={k: np.concatenate([s.layers[k] for s in sets]) for k in first.layers},
            meta=None if any(m is None for m in metas) else pd.concat(metas, ignore_index=True),
        )

    @property
    def label(self) -> str:
        """Short label for figure titles, e.g. ``"HC18 (real)"`` or ``"SYNTHETIC phantom"``."""
        return "SYNTHETIC phantom" if self.synthetic else f"{self.source.upper()} (real)"


def split_by_group(groups, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split image indices into train and test so that no group (subject) is on both sides.

    Args:
        groups: one group id per image.
        test_fraction: wanted share of images in the test part (0 < f < 1).
        seed: split seed.

    Returns:
        ``(train_index, test_index)``, sorted integer arrays.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    groups = np.asarray(groups)
    unique = np.unique(groups)
    if len(unique) < 2:
        raise ValueError("At least two subjects are needed to make a train/test split.")
    order = np.random.default_rng(seed).permutation(unique)
    counts = {g: c for g, c in zip(*np.unique(groups, return_counts=True))}
    target = test_fraction * len(groups)
    test_groups, n_test = [], 0
    for g in order:
        if n_test >= target:
            break
        test_groups.append(g)
        n_test += counts[g]
    test_groups = test_groups[: len(unique) - 1]  # keep at least one subject for training
    is_test = np.isin(groups, test_groups)
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def group_folds(groups, k: int, seed: int, stratify=None) -> np.ndarray:
    """Assign every item to one of ``k`` folds so that a group (patient, video) is in one fold:
    scikit-learn's ``StratifiedGroupKFold`` (shuffled, seeded) when ``stratify`` is given, else
    ``GroupKFold``.

    Args:
        groups: one group id per item.
        k: number of folds (>= 2).
        seed: the shuffle of the stratified folds.
        stratify: one class per item to spread across folds (default: balance sizes only).

    Returns:
        Integer array (n,): the fold (0..k-1) of each item; fold ``f`` tests ``folds == f``.

    Raises:
        ValueError: ``k`` < 2, fewer groups than folds, or ``stratify`` of another length.
    """
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    groups = np.asarray(groups)
    n_groups = len(np.unique(groups))
    if k < 2 or n_groups < k:
        raise ValueError(f"{k} folds need k >= 2 and at least k groups; got {n_groups} groups.")
    if stratify is not None and len(stratify) != len(groups):
        raise ValueError(f"stratify has {len(stratify)} entries for {len(groups)} items.")
    if stratify is None:
        splits = GroupKFold(n_splits=k).split(groups, groups=groups)
    else:
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        splits = splitter.split(groups, np.asarray(stratify), groups=groups)
    folds = np.empty(len(groups), int)
    for f, (_, test) in enumerate(splits):
        folds[test] = f
    return folds


def read_grey(path: Path):
    """Open an image file as an 8-bit grey PIL image, fully decoded.

    Raises:
        OSError: the file cannot be read or decoded (truncated, not an image); the message names it.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("L")  # convert() decodes every pixel, so truncation shows here
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise OSError(
            f"Cannot read the image {path}: {exc}. The file is truncated, damaged or not an "
            "image: replace it with the released file (e.g. `lus data verify hc18`), or "
            "remove it together with its mask."
        ) from exc


def read_image_mask(
    image_path: Path, mask_path: Path, image_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """One grey image and its binary mask (threshold 127), resized to ``image_size`` x
    ``image_size``.

    The image is resized bilinearly to [0, 1] float32; the mask is thresholded first, then resized
    by nearest neighbour, so it stays binary.

    Raises:
        ValueError: the image and its mask differ in size.
    """
    from PIL import Image

    image, mask = read_grey(image_path), read_grey(mask_path)
    if image.size != mask.size:
        raise ValueError(
            f"{Path(image_path).name} is {image.size} but its mask {Path(mask_path).name} is "
            f"{mask.size}: every mask must have its image's size."
        )
    size = (image_size, image_size)
    pixels = np.asarray(image.resize(size, Image.BILINEAR), np.float32) / 255
    binary = Image.fromarray(((np.asarray(mask) > 127) * 255).astype(np.uint8))
    return pixels, (np.asarray(binary.resize(size, Image.NEAREST)) > 127).astype(np.uint8)

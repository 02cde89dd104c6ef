"""Loader of ``lus_pleura_rib``: real lung ultrasound frames with pleural-line and rib masks.

The layout (MXHsj/CS541-Deep-Learning-Project, Ma, Zeng & Zhou, WPI 2022; 156 frames of one healthy
volunteer, curved Clarius probe, 12 clips of 13 consecutive frames):

- ``image/<stem>.jpg``, ``<stem>`` = ``din-NN-S-K-V-frameF`` (NN the intercostal position, S the
  side L/R, K the clip, F the frame);
- ``mask/<structure>/<stem>-<structure>.jpg`` for ``structure`` in :data:`STRUCTURES`: binary
  JPEGs of the image's size (threshold 127; JPEG noise at the edges). A frame without a file has
  none of that structure (an empty mask).

Frames of one clip are near copies: ``groups`` is the clip (``din-NN-S-K``), so splits keep a clip
on one side. Images are resized to a square (paper 2 resized its 960x128 frames to 256x256 too,
aspect not kept); masks are thresholded, then resized by nearest neighbour.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from lus_common.config.paths import dataset_dir
from lus_common.config.registry import lookup
from lus_common.data.sets import SegmentationSet, read_grey

STRUCTURES = ("rib_line", "rib_shadow", "pleural_line")
NAME = re.compile(r"^(?P<clip>(?P<volunteer>[A-Za-z]+)-(?P<position>\d+)-(?P<side>[LR])-(?P<k>\d+))"
                  r"-V-frame(?P<frame>\d+)$")  # fmt: skip


def _parse(stem: str) -> dict:
    match = NAME.match(stem)
    if match is None:
        raise ValueError(
            f"Unexpected file name '{stem}.jpg': lus_pleura_rib names frames "
            "'<volunteer>-NN-L|R-K-V-frameF.jpg' (e.g. din-01-L-1-V-frame0.jpg)."
        )
    g = match.groupdict()
    return {
        "clip": g["clip"],
        "volunteer": g["volunteer"],
        "position": int(g["position"]),
        "side": g["side"],
        "frame": int(g["frame"]),
    }


def _read_mask(path: Path, size: tuple[int, int], image_size: int, stem: str) -> np.ndarray:
    """A binary mask (threshold 127) resized by nearest neighbour; empty when there is no file."""
    from PIL import Image

    if not path.is_file():
        return np.zeros((image_size, image_size), np.uint8)
    mask = read_grey(path)
    if mask.size != size:
        raise ValueError(
            f"{path.name} is {mask.size} but its image {stem}.jpg is {size}: every mask must have "
            "its image's size."
        )
    binary = Image.fromarray(((np.asarray(mask) > 127) * 255).astype(np.uint8))
    resized = binary.resize((image_size, image_size), Image.NEAREST)
    return (np.asarray(resized) > 127).astype(np.uint8)


def load_lus_pleura_rib(
    root: Path | None = None,
    target: str = "rib_line",
    image_size: int = 256,
    limit: int | None = None,
    only: list[str] | None = None,
) -> SegmentationSet:
    """The real frames with every structure's mask, ``target``'s as ``masks``.

    Args:
        root: the dataset folder (default ``$LUS_DATA_DIR/lus_pleura_rib``).
        target: the structure that becomes ``masks``, one of :data:`STRUCTURES`.
        image_size: side of the square output arrays.
        limit: keep only the first ``limit`` frames (ordered by clip and frame).
        only: keep only the frames of these stems (e.g. those a figure shows).

    Returns:
        A real :class:`SegmentationSet`: ``groups`` = clips, ``layers`` = one mask per structure,
        ``meta`` with clip, position, side and frame and, per structure, whether the frame has it.

    Raises:
        FileNotFoundError: no dataset folder, no ``image/`` folder or no frame in it.
        ValueError: an unknown target, an unexpected file name, or a mask of another size.
        OSError: an unreadable image or mask (the message names the file).
    """
    from PIL import Image

    lookup(STRUCTURES, target, "lus_pleura_rib structure", error=ValueError)
    root = Path(root) if root is not None else dataset_dir("lus_pleura_rib")
    image_dir = root / "image"
    paths = sorted(image_dir.glob("*.jpg")) if image_dir.is_dir() else []
    if not paths:
        raise FileNotFoundError(
            f"No frames in {image_dir}: lus_pleura_rib keeps them as image/<stem>.jpg with masks "
            "in mask/<structure>/<stem>-<structure>.jpg (see `lus data list`)."
        )
    rows = [{"stem": p.stem, **_parse(p.stem)} for p in paths]
    meta = pd.DataFrame(rows).sort_values(["clip", "frame"], kind="stable").reset_index(drop=True)
    if only is not None:
        meta = meta[meta["stem"].isin(list(only))].reset_index(drop=True)
    if limit:
        meta = meta.iloc[: int(limit)].reset_index(drop=True)
    n = len(meta)
    images = np.empty((n, image_size, image_size), np.float32)
    layers = {s: np.empty((n, image_size, image_size), np.uint8) for s in STRUCTURES}
    for i, stem in enumerate(meta["stem"]):
        image = read_grey(image_dir / f"{stem}.jpg")
        resized = image.resize((image_size, image_size), Image.BILINEAR)
        images[i] = np.asarray(resized, np.float32) / 255
        for s in STRUCTURES:
            path = root / "mask" / s / f"{stem}-{s}.jpg"
            layers[s][i] = _read_mask(path, image.size, image_size, stem)
    for s in STRUCTURES:
        meta[f"has_{s}"] = layers[s].reshape(n, -1).any(1)
    counts = {s: int(meta[f"has_{s}"].sum()) for s in STRUCTURES}
    return SegmentationSet(
        images=images,
        masks=layers[target],
        ids=list(meta["stem"]),
        source="lus_pleura_rib",
        synthetic=False,
        groups=list(meta["clip"]),
        info={"root": str(root), "target": target, "frames_with": counts, "probe": "convex"},
        layers=layers,
        meta=meta,
    )

"""Real-time augmentation for Keras ``fit``: the random affine transforms of Keras'
``ImageDataGenerator`` (paper 2's authors), image and mask alike.

``ImageDataGenerator`` is gone from Keras 3, so :class:`AugmentedBatches` draws the same transform
family per image (a rotation in degrees, width and height shifts as fractions of the side, a shear
angle in degrees, one zoom factor in ``[1 - z, 1 + z]`` for both axes, a horizontal flip with
probability 1/2) and applies it to a whole batch at once with torch's ``affine_grid`` /
``grid_sample`` (the Keras backend here is torch): bilinear for images, nearest for masks, and
``ImageDataGenerator``'s default ``fill_mode="nearest"`` (border pixels repeated) for both.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.nn import functional as F

from lus_common.models.keras_unets import keras


@dataclass(frozen=True)
class Augmentation:
    """``ImageDataGenerator`` arguments (the authors': rotation_range=0.15, width_shift_range=0.05,
    height_shift_range=0.05, shear_range=0.05, zoom_range=0.05, horizontal_flip=True)."""

    rotation_range: float = 0.15  # degrees
    width_shift_range: float = 0.05  # fraction of the width
    height_shift_range: float = 0.05
    shear_range: float = 0.05  # degrees (Keras' unit)
    zoom_range: float = 0.05
    horizontal_flip: bool = True

    def as_dict(self) -> dict:
        return asdict(self)


def affine_matrices(n: int, aug: Augmentation, gen: torch.Generator) -> torch.Tensor:
    """``n`` random (2, 3) matrices for ``affine_grid`` (normalised coordinates, output -> input).

    Shifts in normalised units are twice the fraction of the side (the grid spans [-1, 1]).
    """

    def uniform(half: float) -> torch.Tensor:
        return (torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1) * half

    angle = uniform(math.radians(aug.rotation_range))
    shear = uniform(math.radians(aug.shear_range))
    zoom = 1 + uniform(aug.zoom_range)
    tx, ty = 2 * uniform(aug.width_shift_range), 2 * uniform(aug.height_shift_range)
    flip = torch.ones(n, dtype=torch.float64)
    if aug.horizontal_flip:
        flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0).double()
    cos, sin = torch.cos(angle), torch.sin(angle)
    # rotation R, shear S = [[1, -sin(sh)], [0, cos(sh)]] (Keras' form), zoom Z, flip F: R S Z F
    a = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    s = torch.zeros(n, 2, 2, dtype=torch.float64)
    s[:, 0, 0], s[:, 0, 1], s[:, 1, 1] = 1, -torch.sin(shear), torch.cos(shear)
    m = a @ s * zoom[:, None, None]
    m[:, :, 0] *= flip[:, None]
    return torch.cat([m, torch.stack([tx, ty], -1)[:, :, None]], -1).float()


def augment_batch(
    x: np.ndarray, y: np.ndarray, aug: Augmentation, gen: torch.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One batch ``x`` (N, H, W, C) and masks ``y`` (N, H, W, 1), channels last as Keras has them,
    transformed by one random matrix per image."""
    xt = torch.as_tensor(x).permute(0, 3, 1, 2)
    yt = torch.as_tensor(y).permute(0, 3, 1, 2)
    grid = F.affine_grid(affine_matrices(len(x), aug, gen), list(xt.shape), align_corners=False)
    xo = F.grid_sample(xt, grid, mode="bilinear", padding_mode="border", align_corners=False)
    yo = F.grid_sample(yt, grid, mode="nearest", padding_mode="border", align_corners=False)
    return xo.permute(0, 2, 3, 1).numpy(), yo.permute(0, 2, 3, 1).numpy()


def augmented_batches(
    x: np.ndarray, y: np.ndarray, batch_size: int, aug: Augmentation | None, seed: int
):
    """A ``keras.utils.PyDataset`` of shuffled batches, freshly augmented every epoch (``aug=None``:
    shuffled only), seeded: the same run gives the same batches."""
    k = keras()

    class _Batches(k.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.gen = torch.Generator().manual_seed(int(seed))
            self.order = np.arange(len(x))
            self.on_epoch_end()

        def __len__(self) -> int:
            return -(-len(x) // batch_size)

        def on_epoch_end(self):
            perm = torch.randperm(len(x), generator=self.gen).numpy()
            self.order = perm

        def __getitem__(self, i: int):
            idx = np.sort(self.order[i * batch_size : (i + 1) * batch_size])
            xb, yb = x[idx], y[idx]
            return (xb, yb) if aug is None else augment_batch(xb, yb, aug, self.gen)

    return _Batches()

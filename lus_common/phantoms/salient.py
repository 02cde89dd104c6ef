"""Salient-object phantom (paper 2's X-UNet pretraining, XPIE-like): one textured object on a scene.

Natural images have a power spectrum falling as ``1/f^beta`` with beta about 2; the background
is such a field (random beta) under a smooth illumination gradient, sometimes split by a horizon
into two regions of different brightness. The object is a star-shaped blob
``r(theta) = r0 (1 + sum_k a_k cos(k theta + phi_k))``, sometimes the union of two, filled with
its own texture (a different beta, or an oriented grating under noise), offset in mean brightness
from its surroundings and shaded across its extent as a lit 3-D body would be. Grey scale, as the
paper converted XPIE to grey.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.fft

from lus_common.data.sets import SegmentationSet
from lus_common.phantoms.bmode import as_generator, without_huge_pages

GENERATOR_VERSION = 1


def _power_law_noise(n: int, size: int, beta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``n`` fields with power spectra ``1/f^beta`` (one beta per field), zero mean, unit std."""
    f = np.hypot(*np.meshgrid(scipy.fft.fftfreq(size), scipy.fft.rfftfreq(size), indexing="ij"))
    f[0, 0] = 1.0
    spectrum = scipy.fft.rfft2(rng.standard_normal((n, size, size), dtype=np.float32), workers=-1)
    spectrum *= f[None] ** (-np.asarray(beta, dtype=np.float32)[:, None, None] / 2)
    spectrum[:, 0, 0] = 0
    field = scipy.fft.irfft2(spectrum, s=(size, size), workers=-1)
    return (field / field.std(axis=(1, 2), keepdims=True)).astype(np.float32)


@without_huge_pages()
def salient_object_phantom(n: int, image_size: int = 256, seed=0) -> SegmentationSet:
    """Generate grey natural-looking scenes with one salient object and its mask.

    Args:
        n: number of images.
        image_size: side of the square images.
        seed: int seed or ``np.random.Generator``.

    Returns:
        A synthetic :class:`SegmentationSet` whose ``masks`` are the objects.
    """
    rng = as_generator(seed)
    size = int(image_size)
    background = _power_law_noise(n, size, rng.uniform(1.6, 2.4, n), rng)
    texture = _power_law_noise(n, size, rng.uniform(0.8, 2.6, n), rng)
    c = (np.arange(size) + 0.5) / size
    y, x = c[:, None], c[None, :]
    images = np.empty((n, size, size), np.float32)
    masks = np.empty((n, size, size), np.uint8)
    for k in range(n):
        mask = np.zeros((size, size), bool)
        for _ in range(1 + int(rng.random() < 0.3)):  # sometimes two lobes
            cx, cy = rng.uniform(0.3, 0.7, 2)
            r0 = rng.uniform(0.12, 0.28)
            theta = np.arctan2(y - cy, x - cx)
            r = r0 * (
                1
                + sum(
                    rng.uniform(0, 0.35 / kk) * np.cos(kk * theta + rng.uniform(0, 2 * np.pi))
                    for kk in range(2, 6)
                )
            )
            mask |= np.hypot((x - cx) / rng.uniform(0.7, 1.3), y - cy) < r
        light = rng.normal(size=2)
        scene = 0.12 * background[k] + 0.3 * (light[0] * (x - 0.5) + light[1] * (y - 0.5))
        if rng.random() < 0.4:  # a horizon splits the scene
            scene += rng.uniform(-0.25, 0.25) * (
                y > rng.uniform(0.3, 0.7) + rng.uniform(-0.2, 0.2) * (x - 0.5)
            )
        if rng.random() < 0.4:  # an oriented grating (bark, fur, fabric)
            angle, period = rng.uniform(0, np.pi), rng.uniform(0.02, 0.08)
            fill = (
                0.6 * np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period)
                + 0.5 * texture[k]
            )
        else:
            fill = texture[k]
        ys, xs = np.nonzero(mask)
        shade = (x - xs.mean() / size) * rng.normal() + (y - ys.mean() / size) * rng.normal()
        contrast = rng.choice([-1, 1]) * rng.uniform(0.15, 0.4)
        obj = scene[mask].mean() + contrast + 0.1 * fill + 0.6 * shade
        img = np.where(mask, obj, scene)
        lo, hi = np.percentile(img, (0.5, 99.5))
        images[k] = np.clip((img - lo) / (hi - lo), 0, 1)
        masks[k] = mask
    ids = [f"salient_phantom_{k:05d}" for k in range(n)]
    meta = pd.DataFrame({"object_fraction": masks.reshape(n, -1).mean(1)})
    return SegmentationSet.phantom(
        images, masks, ids, "salient_object_phantom", GENERATOR_VERSION, meta=meta,
        spacing_mm=np.ones((n, 2)),
    )  # fmt: skip

"""Chest X-ray phantom (paper 3, Shenzhen-like): a projection of a thorax, with lung-field masks.

A radiograph shows the attenuation line integral ``mu`` through the body (processed radiographs
are close to ``log`` of the transmitted intensity, so dense = bright). The phantom sums, per
pixel, the path lengths through: soft tissue of a thorax of varying width; two air-filled lung
fields (which *lower* ``mu``; their thickness falls to zero at their borders); the heart and
mediastinum; the spine with vertebral bodies; posterior ribs as curved bony bands; the clavicles;
the diaphragm and abdomen below the lungs; and, optionally, abnormal opacities (consolidation- or
TB-like blobs, mostly in the upper zones). Then the detector: blur (its MTF), quantum noise,
a heel-effect gradient, and a random window/gamma (exposure and processing vary between films).

The mask is both lung fields minus the heart's shadow, as in the Shenzhen masks.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage

from lus_common.data.sets import SegmentationSet
from lus_common.phantoms.bmode import as_generator, without_huge_pages

GENERATOR_VERSION = 1


def _lung_field(
    x, y, side: int, rng: np.random.Generator, warp: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    """One lung field (side -1: image left = patient's right) as a boolean mask on the (x, y)
    grid."""
    dx, dy = warp
    u, v = side * (x + dx), y + dy  # mirror so that u grows laterally
    medial = rng.uniform(0.11, 0.17)
    apex, base = rng.uniform(0.10, 0.16), rng.uniform(0.74, 0.84)
    width = rng.uniform(0.62, 0.78) - medial
    t = np.clip((v - apex) / (base - apex), 0, 1)
    lateral = medial + 0.12 + (width - 0.12) * t**0.45  # narrow rounded apex, widest at the base
    dome = rng.uniform(0.05, 0.10)
    w = np.clip((u - medial) / width, 0, 1)
    bottom = (
        base - dome * np.sin(np.pi * np.clip(w * 0.9, 0, 1)) + rng.uniform(0.03, 0.06) * w**6
    )  # costophrenic angle
    return (u > medial) & (u < lateral) & (v > apex) & (v < bottom)


@without_huge_pages()
def chest_xray_phantom(
    n: int, image_size: int = 256, abnormal_fraction: float = 0.0, seed=0
) -> SegmentationSet:
    """Generate frontal chest X-rays with lung-field masks.

    Args:
        n: number of images.
        image_size: side of the square images.
        abnormal_fraction: share of images with abnormal opacities (``meta["abnormal"]``).
        seed: int seed or ``np.random.Generator``.

    Returns:
        A synthetic :class:`SegmentationSet`: ``masks`` are the lung fields, ``layers["heart"]``
        the heart, ``layers["opacity"]`` the abnormal opacities; ``meta`` has ``abnormal``.
    """
    rng = as_generator(seed)
    size = int(image_size)
    c = (np.arange(size) + 0.5) / size
    x, y = c[None, :] * 2 - 1, c[:, None]  # x: -1 (image left) .. 1; y: 0 (top) .. 1
    images = np.empty((n, size, size), np.float32)
    masks = np.empty((n, size, size), np.uint8)
    hearts = np.empty((n, size, size), np.uint8)
    opacities = np.zeros((n, size, size), np.uint8)
    abnormal = rng.random(n) < abnormal_fraction
    for k in range(n):
        mu, lungs, heart, xs, ys, body, body_half = _thorax(x, y, size, rng)
        _add_ribs_and_clavicles(mu, xs, ys, body_half, rng)
        below = ys > 0.80 + 0.04 * np.cos(np.pi * xs)
        mu += 0.25 * body * (below & ~lungs)
        if abnormal[k]:
            _add_opacities(mu, opacities[k], xs, ys, lungs, rng)
        images[k] = _detector(mu, y, size, rng)
        masks[k] = lungs & ~heart
        hearts[k] = heart
    ids = [f"cxr_phantom_{k:04d}" for k in range(n)]
    meta = pd.DataFrame({"abnormal": abnormal.astype(int)})
    return SegmentationSet.phantom(
        images, masks, ids, "chest_xray_phantom", GENERATOR_VERSION, meta=meta,
        spacing_mm=np.full((n, 2), 430.0 / size), layers={"heart": hearts, "opacity": opacities},
    )  # fmt: skip


def _thorax(x, y, size: int, rng: np.random.Generator):
    """One patient's attenuation map before the ribs: body, lungs (air), heart, mediastinum,
    spine; with the warped coordinates ``xs``, ``ys`` and the body's half width."""
    warp = tuple(
        ndimage.gaussian_filter(rng.standard_normal((size, size)), size / 6) * (size / 6) * 0.02
        for _ in range(2)
    )
    scale = rng.uniform(0.92, 1.05)  # patient size within the film
    xs, ys = x / scale, 0.5 + (y - 0.5) / scale
    body_half = rng.uniform(0.88, 0.98)
    body = np.clip(1 - (xs / body_half) ** 2, 0, None) ** 0.5  # chord length through an ellipse
    shoulders = np.clip(1 - (xs / (body_half + 0.1)) ** 2, 0, None) ** 0.5 * (ys < 0.2)
    mu = np.maximum(body, shoulders) * (ys > 0.0)
    lungs = _lung_field(xs, ys, -1, rng, warp) | _lung_field(xs, ys, 1, rng, warp)
    depth = ndimage.distance_transform_edt(lungs)
    mu -= 0.55 * np.sqrt(depth / max(depth.max(), 1.0))  # air: thickest in the middle of each lung
    hr = ((xs - rng.uniform(0.08, 0.16)) / rng.uniform(0.24, 0.30)) ** 2 + (
        (ys - rng.uniform(0.62, 0.68)) / rng.uniform(0.12, 0.16)
    ) ** 2
    heart = hr < 1
    mu += 0.3 * np.sqrt(np.clip(1 - hr, 0, 1))
    mediastinum = np.clip(1 - ((xs - 0.02) / rng.uniform(0.10, 0.13)) ** 2, 0, 1) * (ys < 0.75)
    mu += 0.25 * np.sqrt(mediastinum)
    spine = np.abs(xs) < 0.06
    mu += spine * (0.08 + 0.06 * (np.sin(2 * np.pi * ys / rng.uniform(0.055, 0.07)) > -0.6))
    return mu, lungs, heart, xs, ys, body, body_half


def _add_ribs_and_clavicles(mu, xs, ys, body_half: float, rng: np.random.Generator) -> None:
    """Eleven posterior ribs a side (up and out from the spine, then down along the chest wall,
    with a brighter cortex) and the clavicles, added to ``mu`` in place."""
    for side in (-1, 1):
        u = side * xs
        start, pitch = rng.uniform(0.08, 0.12), rng.uniform(0.062, 0.075)
        for i in range(11):
            centre = start + i * pitch - 0.12 * u + 0.45 * np.clip(u - 0.1, 0, None) ** 2
            edge = np.abs(ys - centre)
            band = (u > 0.06) & (u < body_half * 0.95) & (edge < 0.010 + 0.0015 * i)
            mu += 0.10 * band + 0.05 * band * (edge > 0.006 + 0.0015 * i)
        clav = (u > 0.04) & (u < 0.55) & (np.abs(ys - (0.17 - 0.16 * u + 0.10 * u**2)) < 0.015)
        mu += 0.25 * clav


def _add_opacities(mu, opacity, xs, ys, lungs, rng: np.random.Generator) -> None:
    """One to three round opacities inside the lungs, added to ``mu`` and marked in ``opacity``
    (both in place)."""
    for _ in range(int(rng.integers(1, 4))):
        cy = rng.uniform(0.2, 0.55)
        cx = rng.choice([-1, 1]) * rng.uniform(0.25, 0.6)
        r = rng.uniform(0.04, 0.1)
        blob = np.exp(-(((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * r**2)))
        mu += rng.uniform(0.3, 0.6) * blob * lungs
        opacity |= (blob > 0.5) & lungs


def _detector(mu, y, size: int, rng: np.random.Generator) -> np.ndarray:
    """The film: blur, heel effect, quantum noise, then exposure and processing into [0, 1]."""
    mu = ndimage.gaussian_filter(mu, rng.uniform(0.4, 1.0) * size / 256)
    mu += rng.uniform(-0.05, 0.05) * y  # heel effect
    mu += rng.normal(0, rng.uniform(0.01, 0.03), mu.shape)
    lo, hi = np.percentile(mu, (2, 99.8))
    return np.clip((mu - lo) / (hi - lo), 0, 1) ** rng.uniform(0.7, 1.4)

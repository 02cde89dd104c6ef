"""Synthetic images with exact ground truth, so every study runs with no dataset.

Every phantom here takes a ``seed`` (or ``np.random.Generator``) and returns a
:class:`~lus_common.data.sets.SegmentationSet` marked ``synthetic=True``.

The fetal-head phantom (HC18 study) forms a B-mode image, not a painting: random scatterers with
an echogenicity map (maternal tissue, amniotic fluid, skull, brain, midline echo) seen through the
analytic point-spread function of :mod:`.bmode` (envelope detection), depth attenuation, acoustic
shadow behind the skull, a convex-probe sector window and log compression. The head is an ellipse
defined in millimetres, so its true circumference is known exactly.
"""

from __future__ import annotations

import numpy as np

from lus_common.data.sets import SegmentationSet
from lus_common.phantoms import bmode

# HC18 images are 800x540 pixels of 0.05-0.3 mm; the phantom uses the same aspect.
_HC18_SHAPE = (540, 800)


def ellipse_circumference(a, b):
    """Ramanujan's approximation of an ellipse's perimeter from its semi-axes (error < 1e-4 %).

    Args:
        a: semi-axis (array or scalar).
        b: other semi-axis, same unit.

    Returns:
        Perimeter in the unit of ``a`` and ``b``.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return np.pi * (3 * (a + b) - np.sqrt((3 * a + b) * (a + 3 * b)))


GENERATOR_VERSION = 2  # 2: speckle formed by the shared B-mode engine (bmode.envelope)


def _speckle(echo: np.ndarray, psf: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Envelope of scatterers with echogenicity ``echo`` seen through the shared analytic PSF."""
    return bmode.envelope(np.sqrt(echo).astype(np.float32), psf, rng, workers=-1)


@bmode.without_huge_pages()
def fetal_head_phantom(n: int, image_size: int = 256, seed=0) -> SegmentationSet:
    """Generate HC18-like fetal head ultrasound images with filled-ellipse head masks.

    Args:
        n: number of images.
        image_size: side of the square output (the 800x540 field of view is resampled to it,
            as the HC18 study resizes its images).
        seed: int seed or ``np.random.Generator``.

    Returns:
        A synthetic :class:`SegmentationSet` whose ``hc_mm`` is the exact circumference of the
        drawn ellipse (outer skull border) and ``spacing_mm`` the pixel size along (rows, cols).
    """
    rng = bmode.as_generator(seed)
    size = int(image_size)
    rows = np.arange(size) + 0.5
    images = np.empty((n, size, size), np.float32)
    masks = np.empty((n, size, size), np.uint8)
    spacing = np.empty((n, 2))
    # One PSF for every image: its widths scale with the image size only.
    psf = bmode.analytic_psf_spectrum(
        bmode.padded_shape((size, size)), max(1.0, 0.6 * size / 256), max(1.2, 1.5 * size / 256)
    )
    hc = np.empty(n)
    for k in range(n):
        px = rng.uniform(0.10, 0.18)  # mm per original HC18 pixel
        fov_h, fov_w = _HC18_SHAPE[0] * px, _HC18_SHAPE[1] * px
        sy, sx = fov_h / size, fov_w / size
        y = rows[:, None] * sy  # depth in mm
        x = rows[None, :] * sx
        # Head: outer skull ellipse in mm, fully inside the field of view.
        a = rng.uniform(0.28, 0.42) * fov_h
        b = a * rng.uniform(0.72, 0.9)
        theta = rng.uniform(-np.pi / 6, np.pi / 6)
        cx = fov_w / 2 + rng.uniform(-0.12, 0.12) * fov_w
        cy = fov_h * rng.uniform(0.5, 0.56)
        c, s = np.cos(theta), np.sin(theta)
        u = ((x - cx) * c + (y - cy) * s) / a
        v = (-(x - cx) * s + (y - cy) * c) / b
        r = np.sqrt(u**2 + v**2)  # 1 on the outer skull border
        thickness = rng.uniform(2.0, 3.5) / min(a, b)  # skull bone about 2-3.5 mm
        inside = r <= 1.0
        skull = inside & (r > 1.0 - thickness)
        brain = r <= 1.0 - thickness

        echo = np.full((size, size), 3e-4)  # amniotic fluid: about -35 dB below bone
        echo = np.where(y < fov_h * rng.uniform(0.08, 0.16), 0.12, echo)  # maternal wall
        echo = np.where(brain, 0.015 + 0.02 * rng.random(), echo)
        falx = brain & (np.abs(v) < 0.02 * a / b) & (np.abs(u) < 0.8)
        echo = np.where(falx, 0.15, echo)
        # Acoustic shadow: tissue beneath the skull at the same lateral position is darker.
        shadow = np.cumsum(skull, axis=0) > 0
        echo = np.where(shadow & ~skull, echo * 0.55, echo)
        echo = np.where(skull, 1.0, echo)

        env = _speckle(echo, psf, rng)
        env *= np.exp(-0.004 * y * rng.uniform(0.5, 1.5))  # uncompensated attenuation
        # Convex probe: a fan with its apex above the image.
        apex_y, half_angle = -0.25 * fov_h, np.deg2rad(rng.uniform(38, 46))
        fan = np.abs(np.arctan2(x - fov_w / 2, y - apex_y)) < half_angle
        db = 20 * np.log10(env / np.percentile(env[fan], 99.5) + 1e-6)
        image = np.clip((db + 50.0) / 50.0, 0, 1) * fan  # 50 dB display range

        images[k] = image
        masks[k] = inside
        spacing[k] = (sy, sx)
        hc[k] = ellipse_circumference(a, b)

    ids = [f"phantom_{k:04d}" for k in range(n)]
    return SegmentationSet.phantom(
        images, masks, ids, "fetal_head_phantom", GENERATOR_VERSION, spacing_mm=spacing, hc_mm=hc
    )

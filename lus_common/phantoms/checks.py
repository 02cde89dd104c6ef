"""Physical checks of the lung phantom, measured on its images (used by the tests and the book).

Each function measures one property from the pixels, using the labels only to know where to
look, and returns the numbers the acceptance criteria are stated in.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage

from lus_common.data.despeckle import edge_width, homomorphic_despeckle, speckle_snr
from lus_common.data.sets import SegmentationSet


def clear_columns(
    data: SegmentationSet, k: int, margin_mm: float = 3.0
) -> tuple[np.ndarray, np.ndarray]:
    """Columns of image ``k`` with a visible pleura and no rib within ``margin_mm``, and the
    pleura's top row."""
    ribs = ndimage.binary_dilation(
        data.layers["ribs"][k].any(0), iterations=int(margin_mm / data.spacing_mm[k, 1])
    )
    cols = np.flatnonzero(data.layers["pleura"][k].any(0) & ~ribs)
    return cols, data.layers["pleura"][k][:, cols].argmax(0)


def chest_wall_speckle(data: SegmentationSet, k: int) -> np.ndarray:
    """Envelope samples of the intercostal muscle 1.2-3 mm above the pleura (one echogenicity).

    Needs a set made with ``keep_envelope=True`` and a linear probe.
    """
    cols, top = clear_columns(data, k)
    dz = data.spacing_mm[k, 0]
    env = data.info["envelope"][k]
    return np.concatenate([env[int(t - 3 / dz) : int(t - 1.2 / dz), c] for c, t in zip(cols, top)])


def _peak(profile: np.ndarray) -> float:
    """Where a profile peaks, to a fraction of a row: the parabola through its highest sample and
    the two beside it (the highest sample itself at the ends)."""
    i = int(np.argmax(profile))
    if 0 < i < len(profile) - 1:
        left, mid, right = profile[i - 1], profile[i], profile[i + 1]
        curve = left - 2 * mid + right
        if curve < 0:
            return i + 0.5 * float(left - right) / float(curve)
    return float(i)


def a_line_depth_errors(data: SegmentationSet) -> dict[int, list[float]]:
    """Per repeat n, the offsets (pixels) of the n-th A-line's brightest row from n x the pleural
    depth.

    Depths are measured from the transducer face (row 0) of linear-probe images; the pleura is the
    brightest row of each column near its label; only repeats labelled visible are measured.
    """
    errors: dict[int, list[float]] = {}
    for k in range(len(data)):
        cols, _ = clear_columns(data, k)
        img = ndimage.uniform_filter1d(
            data.images[k], 5, axis=1
        )  # a few scan lines against speckle
        for c in cols[::4]:
            profile = ndimage.gaussian_filter1d(img[:, c], 1.0)
            label_rows = np.flatnonzero(data.layers["pleura"][k][:, c])
            lo = max(label_rows[0] - 4, 0)
            depth = lo + _peak(profile[lo : label_rows[-1] + 5]) + 0.5
            for n in range(2, 12):
                centre = n * depth - 0.5
                a, b = int(centre - 0.25 * depth), int(centre + 0.25 * depth)
                if b >= len(profile) or not data.layers["alines"][k][a:b, c].any():
                    break
                errors.setdefault(n, []).append(float(a + _peak(profile[a:b]) - centre))
    return errors


def rib_shadow_ratios(data: SegmentationSet) -> list[float]:
    """Mean intensity below each image's ribs over the mean at the same depths in clear columns."""
    ratios = []
    for k in range(len(data)):
        ribs = data.layers["ribs"][k]
        # Columns well inside a rib (1 mm from its ends), where the whole beam meets bone.
        rib_cols = np.flatnonzero(
            ndimage.binary_erosion(ribs.any(0), iterations=int(1.0 / data.spacing_mm[k, 1]))
        )
        clear, _ = clear_columns(data, k)
        if len(rib_cols) < 10 or len(clear) < 10:
            continue
        start = int(np.flatnonzero(ribs.any(1)).max()) + 3
        ratios.append(
            float(data.images[k][start:, rib_cols].mean() / data.images[k][start:, clear].mean())
        )
    return ratios


def b_line_depth_ratios(data: SegmentationSet, bottom_rows: int | None = None) -> list[float]:
    """Mean B-line intensity in the bottom rows over that 1-5 mm below the pleura, per image."""
    ratios = []
    size = data.images.shape[1]
    bottom_rows = bottom_rows or size // 10
    rows = np.arange(size)[:, None]
    for k in range(len(data)):
        bl = data.layers["blines"][k].astype(bool)
        have = np.flatnonzero(bl.any(1))
        if len(have) < 20:
            continue
        dz = data.spacing_mm[k, 0]
        top = bl & (rows >= have[0] + 1 / dz) & (rows < have[0] + 5 / dz)
        bottom = bl & (rows >= size - bottom_rows)
        if top.sum() > 50 and bottom.sum() > 50:
            ratios.append(float(data.images[k][bottom].mean() / data.images[k][top].mean()))
    return ratios


def lung_patch_snr(image: np.ndarray, data: SegmentationSet, k: int, n: int = 12) -> float:
    """Mean speckle SNR of ``n`` x ``n`` patches of healthy lung between the pleura and the first
    A-line."""
    cols, top = clear_columns(data, k)
    clear = np.zeros(image.shape[1], bool)
    clear[cols] = True
    t, dz = int(np.median(top)), data.spacing_mm[k, 0]
    snr = [
        speckle_snr(image[r : r + n, c : c + n])
        for r in range(int(t + 2 / dz), int(2 * t - 2 / dz) - n, n)
        for c in range(0, image.shape[1] - n, n)
        if clear[c : c + n].all()
    ]
    return float(np.mean(snr))


def pleura_profile(image: np.ndarray, data: SegmentationSet, k: int) -> np.ndarray:
    """Depth profile across the pleura's upper edge, averaged over the clear columns."""
    cols, top = clear_columns(data, k)
    return np.mean([image[t - 8 : t + 3, c] for c, t in zip(cols, top)], axis=0)


def despeckle_effect(data: SegmentationSet, k: int, **options) -> dict:
    """Speckle SNR gain and pleural edge-width ratio of :func:`homomorphic_despeckle` on image
    ``k``'s envelope."""
    env = data.info["envelope"][k]
    clean = homomorphic_despeckle(env, **options)
    return {
        "snr_before": lung_patch_snr(env, data, k),
        "snr_after": lung_patch_snr(clean, data, k),
        "edge_before_px": edge_width(pleura_profile(env, data, k)),
        "edge_after_px": edge_width(pleura_profile(clean, data, k)),
        "clean": clean,
    }


# Profiles of "The phantoms" chapter: image side, images per check, images timed, appearance.
CHAPTER_PROFILES = {
    "paper": dict(
        image_size=256, n_check_images=64, n_bench_images=5131, seed=0, appearance="calibrated"
    ),  # a paper-1-sized set
    "quick": dict(
        image_size=256, n_check_images=16, n_bench_images=1024, seed=0, appearance="calibrated"
    ),
    "smoke": dict(
        image_size=256, n_check_images=8, n_bench_images=64, seed=0, appearance="calibrated"
    ),
}


def homogeneous(appearance="calibrated"):
    """The appearance with tissue of one echogenicity in the chest wall (no texture, no extra
    fascia, no bright fibres, no sparse strong reflectors): where fully developed speckle, and so
    the Rayleigh envelope, can be checked.

    Textured tissue is a mixture of echogenicities, so its envelope is a compound (K-like)
    distribution whose mean/std lies below Rayleigh's 1.913, as in real muscle."""
    from dataclasses import replace

    from lus_common.phantoms.appearance import resolve_appearance

    return replace(
        resolve_appearance(appearance),
        texture=0.0,
        muscle_fascia=(0, 0),
        wall_fibres=0.0,
        specks=0.0,
    )


def square_on(appearance="calibrated"):
    """The appearance with every video's A-lines at full strength, as when the beam meets the
    pleura square on: where A-line depths are checked (their depth does not depend on their
    brightness; the calibrated generator dims them per video, :attr:`Appearance.aline_fade`)."""
    from dataclasses import replace

    from lus_common.phantoms.appearance import resolve_appearance

    return replace(resolve_appearance(appearance), aline_fade=1.0)


def physical_checks(
    image_size: int = 256, n: int = 16, seed: int = 0, appearance="calibrated"
) -> tuple[pd.DataFrame, dict]:
    """Run every physical check of the lung phantom on fresh sets and compare with the criteria.

    Args:
        image_size: side of the images.
        n: images per check (linear probe; 4 frames per video).
        seed: generator seed.
        appearance: the generator (:mod:`lus_common.phantoms.appearance`); the Rayleigh and
            despeckling checks use its :func:`homogeneous` tissue, the A-line depths its
            A-lines at full strength (:func:`square_on`).

    Returns:
        ``(table, details)``: one row per check (measured value, criterion, pass), and the sets and
        raw measurements behind it for figures.
    """
    from lus_common.phantoms import lung_ultrasound_phantom

    common = dict(
        n_patients=max(1, n // 8),
        frames_per_video=4,
        image_size=image_size,
        probe="linear",
        appearance=appearance,
    )
    smooth = dict(diagnoses="healthy", n_blines=0, pleural_irregularity_mm=0.0)
    healthy = lung_ultrasound_phantom(
        n,
        seed=seed,
        keep_envelope=True,
        **smooth,
        **{**common, "appearance": homogeneous(appearance)},
    )
    textured = lung_ultrasound_phantom(
        n, seed=seed, **smooth, **{**common, "appearance": square_on(appearance)}
    )
    mixed = lung_ultrasound_phantom(n, seed=seed + 1, **common)
    covid = lung_ultrasound_phantom(n, diagnoses="COVID-19", seed=seed + 2, **common)
    samples = [chest_wall_speckle(healthy, k) for k in range(len(healthy))]
    ratio = float(
        np.mean([speckle_snr(x) for x in samples])
    )  # per image: gains differ between images
    speckle = np.concatenate([x / x.mean() for x in samples])
    a_errors = a_line_depth_errors(textured)
    shadows = rib_shadow_ratios(mixed)
    blines = b_line_depth_ratios(covid)
    effects = [despeckle_effect(healthy, k) for k in range(0, len(healthy), 4)]
    gains = [e["snr_after"] / e["snr_before"] for e in effects]
    widths = [e["edge_after_px"] / e["edge_before_px"] for e in effects]
    rows = _criteria(ratio, a_errors, shadows, blines, gains, widths)
    table = pd.DataFrame(rows, columns=["check", "measured", "criterion", "pass"])
    details = dict(
        healthy=healthy,
        textured=textured,
        mixed=mixed,
        covid=covid,
        speckle=speckle,
        a_errors=a_errors,
        shadows=shadows,
        blines=blines,
        despeckle=effects,
    )
    return table, details


def _criteria(ratio, a_errors, shadows, blines, gains, widths) -> list[tuple]:
    """The rows ``(check, measured, criterion, pass)`` of :func:`physical_checks`."""
    from lus_common.phantoms.bmode import RAYLEIGH_MEAN_OVER_STD

    rows = [
        (
            "envelope mean/std in the chest wall, mean over images (Rayleigh 1.913)",
            ratio,
            "within 10 % of 1.913",
            abs(ratio / RAYLEIGH_MEAN_OVER_STD - 1) <= 0.10,
        ),
    ]
    for rep, e in sorted(a_errors.items()):
        if len(e) >= 10:
            rows.append(
                (
                    f"A-line {rep}: median offset from {rep} x pleural depth (px)",
                    float(np.median(e)),
                    "|offset| <= 2 px",
                    abs(np.median(e)) <= 2,
                )
            )
    rows += [
        (
            "rib shadow / same depth beside (worst image)",
            max(shadows) if shadows else np.nan,
            "< 0.30",
            bool(shadows) and max(shadows) < 0.30,
        ),
        (
            "B-line bottom / below pleura (worst image)",
            max(blines, key=lambda r: abs(r - 1)) if blines else np.nan,
            "within 20 % of 1",
            bool(blines) and max(abs(r - 1) for r in blines) <= 0.20,
        ),
        ("despeckling: speckle SNR gain (worst image)", min(gains), ">= 1.5", min(gains) >= 1.5),
        (
            "despeckling: pleural edge width ratio (worst image)",
            max(widths, key=lambda r: abs(r - 1)),
            "within 20 % of 1",
            max(abs(w - 1) for w in widths) <= 0.20,
        ),
    ]
    return rows


def compare_checks(
    image_size: int = 256, n: int = 16, seed: int = 0, appearances=("v1", "calibrated")
) -> tuple[pd.DataFrame, dict]:
    """:func:`physical_checks` of several appearances side by side.

    The criteria were set for the first generator, whose display is idealised (pitch-black rib
    shadows, TGC that restores every depth); the calibrated one is measured against the same
    criteria, so the table shows where realism and the idealisation part.

    Returns:
        ``(table, details)``: one row per check and criterion, with ``measured (<name>)`` and
        ``pass (<name>)`` per appearance (empty where a check has too few samples in one), and
        each appearance's details.
    """
    tables, details = {}, {}
    for a in appearances:
        table, details[a] = physical_checks(image_size, n, seed, a)
        tables[a] = table.set_index(["check", "criterion"])
    merged = pd.concat(tables, axis=1)
    merged.columns = [f"{column} ({a})" for a, column in merged.columns]
    return merged.reset_index(), details

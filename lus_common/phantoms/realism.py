"""How real is the lung phantom? Appearance statistics, a domain classifier and sim-to-real Dice.

Three measurements compare phantom frames with real lung ultrasound frames of the same probe type
at the same size (:func:`phantom_check` runs all three for one or more generators):

- **Appearance statistics** (:func:`frame_statistics`, :func:`compare_statistics`), from the
  pixels alone, the same code for both sides (no mask is read): the fraction of the frame inside
  the sector; grey-level mean, spread and histogram inside it (histogram distance: Wasserstein-1
  and Jensen-Shannon); speckle in the chest wall (log-domain mean and standard deviation, the
  dynamic range a Rayleigh envelope would need for that spread, and the speckle size as the
  autocorrelation's full width at half maximum, axial and lateral); the depth profile of mean
  brightness; the depth of the brightest layer (the pleura, or the ribs' surface above it) as a
  fraction of the sector's depth; and how strongly the deep image varies from scan line to scan
  line (rib shadows), with the steepness of its edges and the shadows' width.
- **A domain classifier** (:func:`domain_auc`): a small CNN trained to tell phantom from real
  frames, with folds that keep a real clip and a phantom video on one side; its held-out ROC AUC
  (0.5: it cannot tell them apart), beside the same classifier on two halves of the real frames
  (:func:`same_source_domain`: its null) and on a second real source (:func:`other_real_frames`).
- **Sim-to-real transfer** (:func:`sim_to_real`): a U-Net trained on phantom frames only and scored
  on the real frames (pleural line, rib shadow), beside the real-to-real ceiling: the same U-Net
  and budget trained on some real clips and scored on the others (:func:`real_to_real`).

The calibration of the phantom (:mod:`lus_common.phantoms.calibration`) fits its appearance
parameters to the statistics, never to the real masks: the Dice is a measurement.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage, special, stats

# The real structure masks of lus_pleura_rib and the phantom layer that labels the same thing.
STRUCTURE_LAYERS = {"pleural_line": "pleura", "rib_shadow": "rib_shadow", "rib_line": "ribs"}
DEPTH_BINS = 20
# Bands of depth (fraction of the image's) where the lung's fine texture is measured: beneath
# the pleura, and deep.
LUNG_BANDS = {"mid": (0.25, 0.45), "deep": (0.45, 0.9)}
HIST_BINS = 32
RIPPLE_BINS = 120  # depth bins of the A-lines' ripple (about 2 rows each at 256 px)
# ... and the Gaussian (bins) whose smoothing the ripple is measured against: bands up to about
# 7 mm wide count (a fit against 4 bins widened the A-lines until the statistic missed them)
RIPPLE_SMOOTH_BINS = 8.0
_EPS = 1e-6
PIT_FLOOR = 0.08  # pits are counted where the local mean grey is above this (not in shadows)


def sector_masks(images: np.ndarray, groups) -> np.ndarray:
    """Where each frame's image lies: the fan of a convex probe, the rectangle of a linear one.

    Rib shadows inside the fan can be as black as the outside, so the fan is taken from all frames
    of a group (clip or video: one probe setting): the pixels above 3/255 in at least a fifth of
    them, opened (JPEG specks and stray text go), and the convex hull of what is left (a fan's
    near-field arc adds a thin sliver to it).

    Args:
        images: (N, H, W) grey frames in [0, 1].
        groups: one clip or video id per frame.

    Returns:
        bool array (N, H, W).
    """
    from skimage.morphology import convex_hull_image

    groups = np.asarray(groups)
    out = np.zeros(images.shape, bool)
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        lit = (images[idx] > 3 / 255).mean(0) >= 0.2
        lit = ndimage.binary_opening(lit, np.ones((3, 3), bool), iterations=2)
        out[idx] = convex_hull_image(lit) if lit.any() else lit
    return out


def depth_fraction(inside: np.ndarray) -> np.ndarray:
    """Per pixel, how far down its scan line it lies: 0 at the sector's top edge in its column,
    1 at the bottom edge (NaN outside). Columns stand in for scan lines (exact for a linear probe,
    close to the centre of a fan)."""
    h = inside.shape[-2]
    rows = np.arange(h)[:, None]
    any_col = inside.any(-2)
    top = np.where(any_col, inside.argmax(-2), 0)
    bottom = np.where(any_col, h - 1 - inside[..., ::-1, :].argmax(-2), 1)
    frac = (rows - top[..., None, :]) / np.maximum(bottom - top, 1)[..., None, :]
    return np.where(inside, frac, np.nan)


def across_fan(inside: np.ndarray) -> np.ndarray:
    """Per pixel, where it lies across its row of the sector: -1 at the row's first column inside,
    1 at its last, 0 halfway (NaN outside, and on rows with fewer than three such columns). Deep
    rows of a fan stand in for arcs of equal depth; near the top, rows cross the fan's near-field
    arc and the ends of a row lie on the flanks' scan lines."""
    w = inside.shape[-1]
    any_row = inside.sum(-1) >= 3
    first = np.where(any_row, inside.argmax(-1), 0)
    last = np.where(any_row, w - 1 - inside[..., ::-1].argmax(-1), 2)
    mid, half = (first + last) / 2, np.maximum(last - first, 2) / 2
    u = (np.arange(w) - mid[..., None]) / half[..., None]
    return np.where(inside & any_row[..., None], u, np.nan)


def centre_line_depth(inside: np.ndarray) -> np.ndarray:
    """Per pixel, its row's depth along the sector's centre column: 0 at that column's first row
    inside, 1 at its last (NaN outside, or everywhere when the centre column has no image).
    Unlike :func:`depth_fraction`, whose flank columns start at the fan's slanted edge (deep in
    the image), a row lies at one depth across a filled convex frame: beneath a flat pleura,
    the rows above it are chest wall from flank to flank."""
    h, w = inside.shape
    column = np.flatnonzero(inside[:, w // 2])
    if len(column) < 2:
        return np.full((h, w), np.nan)
    depth = (np.arange(h) - column[0]) / (column[-1] - column[0])
    return np.where(inside, depth[:, None], np.nan)


def _wall_statistics(image: np.ndarray, inside: np.ndarray, rows: np.ndarray, u: np.ndarray):
    """The chest wall's brightness across the fan and near the skin, by rows (``rows``,
    :func:`centre_line_depth`): from 2 % of the depth (below the skin line) to 85 % of the
    brightest layer's (:func:`brightest_layer_depth` on the rows' depth, so a flat pleura is one
    depth across the middle half of the fan): ``wall_centre_share``, the mean grey of the middle
    fifth of those rows of the sector (:func:`across_fan`, ``|u| <= 0.2``) over that of their
    flanks (``0.6 <= |u| <= 0.9``; above 1 where the wall echoes most beneath the probe's
    centre, as anisotropic tissue met square on does); ``near_mean``, the mean grey of their
    middle half (``|u| <= 0.5``) down to half the layer's depth (the skin's and the fat's
    brightness). NaN on 20 pixels or fewer, or flanks darker than 0.01."""
    layer = brightest_layer_depth(image, rows)
    wall = inside & (rows > 0.02) & (rows < 0.85 * layer)
    a = np.abs(np.nan_to_num(u, nan=9.0))
    middle, flanks = wall & (a <= 0.2), wall & (a >= 0.6) & (a <= 0.9)
    near = wall & (rows < 0.5 * layer) & (a <= 0.5)
    out = {"wall_centre_share": np.nan, "near_mean": np.nan}
    if middle.sum() > 20 and flanks.sum() > 20 and image[flanks].mean() > 0.01:
        out["wall_centre_share"] = float(image[middle].mean() / image[flanks].mean())
    if near.sum() > 20:
        out["near_mean"] = float(image[near].mean())
    return out


ENTRY_DEPTH = 0.04  # of the frame's height beneath the sector's top edge: the entry line's band


def entry_lines(inside: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where :func:`_entry_rise` reads a sector: the middle half of the columns that hold it, and
    each one's first row inside."""
    cols = np.flatnonzero(inside.any(0))
    if len(cols) < 4:
        return cols[:0], cols[:0]
    lo, hi = cols[0], cols[-1]
    cols = cols[(cols >= lo + (hi - lo) / 4) & (cols <= hi - (hi - lo) / 4)]
    return cols, inside[:, cols].argmax(0)


def _entry_rise(image: np.ndarray, cols: np.ndarray, top: np.ndarray) -> float:
    """The probe's face and the skin's entry line: the mean grey of each pixel row beneath the
    sector's top edge (:func:`entry_lines`, down to :data:`ENTRY_DEPTH` of the height, at least
    3 rows); its brightest row over its first. Above 1 where the coupling gel and the lens lie
    dark above the skin's bright entry line; 1 where the frame is brightest at its top edge. NaN
    without columns, or a first row darker than 0.01."""
    h = image.shape[0]
    rows = top[None, :] + np.arange(max(3, round(ENTRY_DEPTH * h)))[:, None]
    if not len(cols) or rows.max() >= h:
        return np.nan
    profile = image[rows, cols[None, :]].mean(1)
    return float(profile.max() / profile[0]) if profile[0] > 0.01 else np.nan


def _autocorrelation_widths(patch: np.ndarray, weight: np.ndarray) -> tuple[float, float]:
    """Full width at half maximum (pixels) of the normalised autocorrelation of a zero-mean
    ``patch`` where ``weight`` is 1, along rows (axial) and columns (lateral)."""
    shape = [int(2 ** np.ceil(np.log2(2 * n))) for n in patch.shape]
    f = np.fft.rfft2(patch * weight, shape)
    w = np.fft.rfft2(weight, shape)
    ac = np.fft.irfft2(f * np.conj(f), shape)
    norm = np.fft.irfft2(w * np.conj(w), shape)
    ac = ac / np.maximum(norm, 1.0)
    ac /= ac[0, 0] + _EPS

    def fwhm(line):
        below = np.flatnonzero(line < 0.5)
        if not len(below):
            return np.nan
        k = below[0]
        # linear interpolation of the half-maximum crossing between k-1 and k
        x = k - 1 + (line[k - 1] - 0.5) / max(line[k - 1] - line[k], _EPS)
        return 2 * x

    return fwhm(ac[: shape[0] // 2, 0]), fwhm(ac[0, : shape[1] // 2])


def _grain_ratios(image: np.ndarray, mask: np.ndarray) -> dict:
    """The lung texture's grain, along each axis: the standard deviation of its finest detail (the
    grey less its Gaussian smoothing of sigma 1 px along that axis) over that of its blobs (sigma
    1.5 px smoothing less sigma 6 px), where ``mask``. Real frames, shown far smaller than they
    were formed, have fine grain; speckle formed near the display size comes as blobs."""
    out = {}
    for name, axis in (("grain_axial", 0), ("grain_lateral", 1)):
        s1, s15, s6 = (ndimage.gaussian_filter1d(image, s, axis=axis) for s in (1.0, 1.5, 6.0))
        fine, blobs = image - s1, s15 - s6
        ok = mask.sum() > 20
        out[name] = float(fine[mask].std() / (blobs[mask].std() + _EPS)) if ok else np.nan
    return out


def _depth_profile(image: np.ndarray, frac: np.ndarray, bins: int) -> np.ndarray:
    """Mean brightness in ``bins`` equal bins of depth fraction (:func:`depth_fraction`)."""
    ok = np.isfinite(frac)
    index = np.minimum((frac[ok] * bins).astype(int), bins - 1)
    return np.bincount(index, image[ok], bins) / np.maximum(np.bincount(index, minlength=bins), 1)


def brightest_layer_depth(image: np.ndarray, frac: np.ndarray) -> float:
    """Depth fraction of the brightest layer in the upper 60 % of the sector: the pleura, or the
    ribs' surface just above it (the profile of mean brightness over 60 depth bins, the middle
    half of the scan lines)."""
    cols = image.shape[1]
    centre = slice(cols // 4, cols - cols // 4)
    profile = ndimage.gaussian_filter1d(_depth_profile(image[:, centre], frac[:, centre], 60), 0.7)
    lo, hi = 2, 36  # skip the skin line; at most 60 % of the depth
    return float((lo + np.argmax(profile[lo:hi]) + 0.5) / 60)


def _fine_cv(fine: np.ndarray, image: np.ndarray, mask: np.ndarray) -> float:
    """The fine texture's standard deviation over the mean grey where ``mask`` (NaN on 20 pixels
    or fewer)."""
    return float(fine[mask].std() / (image[mask].mean() + _EPS)) if mask.sum() > 20 else np.nan


def _fine_skew(fine: np.ndarray, mask: np.ndarray) -> float:
    """The fine texture's skewness where ``mask`` (NaN on 20 pixels or fewer)."""
    return float(stats.skew(fine[mask])) if mask.sum() > 20 else np.nan


def _pleura_statistics(image: np.ndarray, inside: np.ndarray, frac: np.ndarray, layer: float):
    """The brightest layer along its length: per scan line of the middle half, the brightest grey
    within 3 % of the depth of ``layer`` (:func:`brightest_layer_depth`). ``pleura_cv``: their
    coefficient of variation (a line of even brightness, or one that comes and goes);
    ``pleura_contrast``: the median of the brighter half of them over the median grey from 5 %
    to 15 % of the depth beneath the layer (a line on a dark lung, or in a bright haze)."""
    w = image.shape[1]
    cols = slice(w // 4, w - w // 4)
    near = (inside & (np.abs(frac - layer) < 0.03))[:, cols]
    ok = near.any(0)
    beneath = inside & (frac > layer + 0.05) & (frac < layer + 0.15)
    if ok.sum() < 8 or beneath.sum() < 20:
        return {"pleura_cv": np.nan, "pleura_contrast": np.nan}
    peak = np.where(near, image[:, cols], -1.0).max(0)[ok]
    bright = peak[peak >= np.median(peak)]
    return {
        "pleura_cv": float(peak.std() / (peak.mean() + _EPS)),
        "pleura_contrast": float(np.median(bright) / (np.median(image[beneath]) + 0.01)),
    }


SHADOW_DARK = 0.5  # a rib shadow's columns: darker than this share of the bright lung's


def _shadow_width(col_mean: np.ndarray, width: int) -> float:
    """The rib shadows' width from the pixels alone: in the scan lines' mean brightness between
    40 % and 90 % of the depth (``col_mean``, the fan's columns left to right; Gaussian-smoothed
    over 2 px of a 256-px frame), the runs of columns darker than :data:`SHADOW_DARK` of its 90th
    percentile with brighter lung on both sides (whole shadows, not the fan's dim edges); their
    mean width as a share of the frame's ``width``. NaN where a frame has none."""
    if len(col_mean) < 8:
        return np.nan
    profile = ndimage.gaussian_filter1d(col_mean, 2.0 * width / 256)
    runs, n = ndimage.label(profile < SHADOW_DARK * np.percentile(profile, 90))
    widths = [len(c) for c in (np.flatnonzero(runs == k) for k in range(1, n + 1))
              if c[0] > 0 and c[-1] < len(profile) - 1]  # fmt: skip
    return float(np.mean(widths) / width) if widths else np.nan


def _centre_share(image: np.ndarray, inside: np.ndarray, frac: np.ndarray, layer: float):
    """How the lung beneath the pleura is lit across the fan: the mean grey of the columns in the
    middle fifth of the frame's width over that of the flanks beside it (from a tenth to three
    tenths of the width off the centre), between 5 % of the depth below ``layer`` and 90 % of
    the depth (columns with image on a tenth of the frame's height or more). Above 1 where the
    lung is brightest beneath the probe's centre, as where the beams meet a specular pleura
    square on; 1 where it is lit evenly. NaN with fewer than five such columns, none in the
    middle or the flanks, or flanks darker than 0.01 (black: no ratio to speak of)."""
    h, w = image.shape
    band = inside & (frac > layer + 0.05) & (frac < 0.9)
    n = band.sum(0)
    good = n >= 0.1 * h
    off = np.abs(np.arange(w) + 0.5 - w / 2) / w  # from the centre, in frame widths
    middle, flanks = good & (off <= 0.1), good & (off > 0.1) & (off <= 0.3)
    if good.sum() < 5 or not middle.any() or not flanks.any():
        return np.nan
    mean = (image * band).sum(0) / np.maximum(n, 1)
    beside = float(mean[flanks].mean())
    return float(mean[middle].mean() / beside) if beside > 0.01 else np.nan


def frame_statistics(images: np.ndarray, groups) -> tuple[pd.DataFrame, dict]:
    """Appearance statistics of every frame, from the pixels alone.

    Args:
        images: (N, H, W) grey frames in [0, 1] (real frames as loaded, phantom frames as made).
        groups: clip or video per frame (the sector is found per group).

    Returns:
        ``(table, arrays)``: one row per frame with ``sector_fraction``, ``grey_mean``,
        ``grey_p05``, ``grey_p50``, ``grey_p95``, ``dark_fraction`` (below 0.05 inside the
        sector), ``layer_depth`` (:func:`brightest_layer_depth`), ``wall_mean`` and ``wall_std``
        (grey in the chest wall, between 25 % and 85 % of the layer depth),
        ``implied_range_db`` (5.57 dB / ``wall_std``: the display range at which a Rayleigh
        envelope, whose log has a 5.57 dB standard deviation, would give that spread),
        ``speckle_axial_px`` and ``speckle_lateral_px`` (autocorrelation FWHM of the
        high-passed chest wall and lung), ``step_axial`` and ``step_lateral`` (mean absolute
        grey difference between neighbouring pixels down and across: the fine texture's
        contrast), ``fine_cv_mid`` and ``fine_cv_deep`` (standard deviation of the
        high-passed grey, Gaussian sigma 2 px removed, over the mean grey in the bands of
        :data:`LUNG_BANDS`: the fine texture's contrast relative to its brightness, beneath the
        pleura and deep), ``aline_ripple`` (the A-lines' mark: the standard deviation of the
        depth profile of brightness between 30 % and 90 % depth, middle half of the scan lines,
        in :data:`RIPPLE_BINS` bins less its Gaussian smoothing of :data:`RIPPLE_SMOOTH_BINS`,
        over its mean), ``grain_axial`` and ``grain_lateral`` (:func:`_grain_ratios` in both
        lung bands: fine grain or blobs), ``fine_skew`` (skewness of that fine texture in both
        lung bands: bright specks on a smooth ground, or the dark pits of log-compressed
        speckle), ``column_contrast`` (coefficient of variation of the scan lines' mean
        brightness between 40 % and 90 % depth: rib shadows) and ``shadow_edge`` (the steepest
        change of that lateral profile, per pixel, over its mean), ``shadow_width``
        (:func:`_shadow_width`: the whole shadows' width in that profile), ``centre_share``
        (:func:`_centre_share`: the lung brightest beneath the probe's centre),
        ``wall_centre_share`` and ``near_mean`` (:func:`_wall_statistics`, by rows: the chest
        wall brightest beneath the probe's centre; the skin and fat's grey), ``pit_share``
        (the share of the sector's lit pixels, local mean above :data:`PIT_FLOOR`, darker than
        half their local mean, Gaussian sigma 2 px: the black pits of log-compressed speckle
        formed at the display size, which real frames averaged down from a finer grid do not
        show),
        ``wall_fine_cv`` and ``wall_skew`` (that fine texture in the chest wall: its standard
        deviation over the mean grey, and its skewness, positive where bright fibres and fascia
        lie on a darker ground), ``entry_rise`` (:func:`_entry_rise`: the skin's entry line
        beneath the dark gel and lens at the sector's top edge), ``pleura_cv`` and
        ``pleura_contrast``
        (:func:`_pleura_statistics`); and
        ``arrays`` with
        ``histogram`` (N, :data:`HIST_BINS`) and ``depth_profile`` (N, :data:`DEPTH_BINS`).
    """
    images = np.asarray(images, np.float32)
    n, h, w = images.shape
    groups = np.asarray(groups)
    inside = sector_masks(images, groups)
    # what depends on the sector alone, once per group (one probe setting)
    sector = {}
    for g in np.unique(groups):
        ins = inside[np.flatnonzero(groups == g)[0]]
        frac = depth_fraction(ins)
        region = ndimage.binary_erosion(ins & (frac > 0.05) & (frac < 0.95), iterations=4)
        core = ndimage.binary_erosion(ins, iterations=2)
        lung = {  # 6 px from the band's edges at 256 px, fewer on smaller frames
            k: ndimage.binary_erosion(
                ins & (frac > lo) & (frac < hi), iterations=max(1, round(6 * h / 256))
            )
            for k, (lo, hi) in LUNG_BANDS.items()
        }
        in_lung = lung["mid"] | lung["deep"]
        across = (centre_line_depth(ins), across_fan(ins))
        sector[g] = (frac, region.astype(np.float32), core, lung, in_lung, across,
                     entry_lines(ins))  # fmt: skip
    rows, hists, profiles = [], [], []
    edges = np.linspace(0, 1, HIST_BINS + 1)
    for k in range(n):
        img, ins = images[k], inside[k]
        frac, region, core, lung, in_lung, across, entry = sector[groups[k]]
        v = img[ins]
        hist = np.histogram(v, edges)[0].astype(float)
        hists.append(hist / max(hist.sum(), 1))
        profiles.append(_depth_profile(img, frac, DEPTH_BINS))
        layer = brightest_layer_depth(img, frac)
        wall = ins & (frac > 0.25 * layer) & (frac < 0.85 * layer)
        wv = img[wall]
        # speckle size: high-pass (local mean removed) below the skin, ribs and bright lines kept
        hp = img - ndimage.gaussian_filter(img, 4.0)
        ax, lat = _autocorrelation_widths(hp - (hp * region).sum() / max(region.sum(), 1), region)
        deep = ins & (frac > 0.4) & (frac < 0.9)
        col_n = deep.sum(0)
        good = col_n >= 0.1 * h
        col_mean = (img * deep).sum(0)[good] / col_n[good]
        smooth = ndimage.gaussian_filter1d(col_mean, 1.0) if len(col_mean) > 3 else col_mean
        contrast = float(col_mean.std() / (col_mean.mean() + _EPS)) if len(col_mean) else np.nan
        edge = (
            float(np.abs(np.diff(smooth)).max() / (col_mean.mean() + _EPS))
            if len(col_mean) > 3
            else np.nan
        )
        shadow_width = _shadow_width(col_mean, w)
        centre = _centre_share(img, ins, frac, layer)
        wall_stats = _wall_statistics(img, ins, *across)
        wall_std = float(wv.std()) if wv.size > 20 else np.nan
        pleura = _pleura_statistics(img, ins, frac, layer)
        step_axial = float(np.abs(np.diff(img, axis=0))[core[1:] & core[:-1]].mean())
        step_lateral = float(np.abs(np.diff(img, axis=1))[core[:, 1:] & core[:, :-1]].mean())
        # A-lines: ripple of the depth profile (middle half of the scan lines) beneath the pleura
        cols = slice(w // 4, w - w // 4)
        depth = _depth_profile(img[:, cols], frac[:, cols], RIPPLE_BINS)
        band = depth[round(0.3 * RIPPLE_BINS) : round(0.9 * RIPPLE_BINS)]
        ripple = band - ndimage.gaussian_filter1d(band, RIPPLE_SMOOTH_BINS)
        local = ndimage.gaussian_filter(img, 2.0)
        fine = img - local
        lit = (region > 0) & (local > PIT_FLOOR)
        wall_in = wall & core
        grain = _grain_ratios(img, in_lung)
        fine_cv = {f"fine_cv_{k}": _fine_cv(fine, img, m) for k, m in lung.items()}
        rows.append(
            {
                "sector_fraction": float(ins.mean()),
                "grey_mean": float(v.mean()),
                "grey_p05": float(np.percentile(v, 5)),
                "grey_p50": float(np.percentile(v, 50)),
                "grey_p95": float(np.percentile(v, 95)),
                "dark_fraction": float((v < 0.05).mean()),
                "layer_depth": layer,
                "wall_mean": float(wv.mean()) if wv.size > 20 else np.nan,
                "wall_std": wall_std,
                "implied_range_db": 5.57 / wall_std if wall_std and wall_std > 0 else np.nan,
                "speckle_axial_px": ax,
                "speckle_lateral_px": lat,
                "step_axial": step_axial,
                "step_lateral": step_lateral,
                "column_contrast": contrast,
                "shadow_edge": edge,
                "shadow_width": shadow_width,
                "centre_share": centre,
                **wall_stats,
                "aline_ripple": float(ripple.std() / (band.mean() + _EPS)),
                **grain,
                "fine_skew": _fine_skew(fine, in_lung),
                "pit_share": float((img[lit] < 0.5 * local[lit]).mean())
                if lit.sum() > 20
                else np.nan,
                **fine_cv,
                "wall_fine_cv": _fine_cv(fine, img, wall_in),
                "wall_skew": _fine_skew(fine, wall_in),
                "entry_rise": _entry_rise(img, *entry),
                **pleura,
            }
        )
    return pd.DataFrame(rows), {"histogram": np.array(hists), "depth_profile": np.array(profiles)}


# The statistics compared, with the floor of the scale their differences are measured in (a
# statistic's difference counts in units of the real frames' spread, never below this floor).
STATISTICS = {
    "sector_fraction": 0.005,
    "grey_mean": 0.02,
    "grey_p05": 0.003,
    "grey_p50": 0.02,
    "grey_p95": 0.03,
    "dark_fraction": 0.03,
    "layer_depth": 0.02,
    "wall_mean": 0.03,
    "wall_std": 0.02,
    "speckle_axial_px": 0.2,
    "speckle_lateral_px": 0.3,
    "step_axial": 0.003,
    "step_lateral": 0.003,
    "column_contrast": 0.05,
    "shadow_edge": 0.03,
    "shadow_width": 0.01,
    "centre_share": 0.05,
    "wall_centre_share": 0.05,
    "near_mean": 0.02,
    "fine_cv_mid": 0.02,
    "fine_cv_deep": 0.02,
    "aline_ripple": 0.01,
    "grain_axial": 0.02,
    "grain_lateral": 0.02,
    "fine_skew": 0.1,
    "pit_share": 0.002,
    "wall_fine_cv": 0.01,
    "wall_skew": 0.1,
    "entry_rise": 0.03,
    "pleura_cv": 0.03,
    "pleura_contrast": 0.2,
}


def summarise(images: np.ndarray, groups) -> dict:
    """:func:`frame_statistics` of a set reduced to what :func:`compare_statistics` needs: the
    per-frame table, its means and standard deviations, the mean histogram and depth profile."""
    table, arrays = frame_statistics(images, groups)
    return {
        "table": table,
        "mean": table.mean(),
        "std": table.std(),
        "histogram": arrays["histogram"].mean(0),
        "depth_profile": arrays["depth_profile"].mean(0),
    }


def compare_statistics(phantom: dict, real: dict) -> tuple[pd.DataFrame, dict]:
    """Phantom against real, statistic by statistic, and the distances between their histograms
    and depth profiles.

    Args:
        phantom: :func:`summarise` of phantom frames.
        real: :func:`summarise` of real frames.

    Returns:
        ``(table, distances)``: one row per statistic of :data:`STATISTICS` with ``real``,
        ``phantom``, ``real_sd`` and ``z`` (the difference in units of the real frames' standard
        deviation, or of the statistic's floor where that is larger); ``distances`` holds
        ``histogram_w1`` (Wasserstein-1 between the grey-level histograms, in grey levels of
        [0, 1]), ``histogram_js`` (Jensen-Shannon distance, base 2: 0 same, 1 disjoint),
        ``profile_rms`` (root mean square difference of the depth profiles) and ``mean_abs_z``.
    """
    from scipy.spatial.distance import jensenshannon
    from scipy.stats import wasserstein_distance

    rows = []
    for name, floor in STATISTICS.items():
        r, p, sd = real["mean"][name], phantom["mean"][name], real["std"][name]
        scale = max(float(sd) if np.isfinite(sd) else 0.0, floor)
        rows.append({"statistic": name, "real": r, "phantom": p, "real_sd": sd,
                     "z": (p - r) / scale})  # fmt: skip
    table = pd.DataFrame(rows).set_index("statistic")
    centres = (np.arange(HIST_BINS) + 0.5) / HIST_BINS
    distances = {
        "histogram_w1": float(
            wasserstein_distance(centres, centres, phantom["histogram"], real["histogram"])
        ),
        "histogram_js": float(jensenshannon(phantom["histogram"], real["histogram"], base=2)),
        "profile_rms": float(
            np.sqrt(np.mean((phantom["depth_profile"] - real["depth_profile"]) ** 2))
        ),
        "mean_abs_z": float(np.abs(table["z"]).mean()),
    }
    return table, distances


# ---------------------------------------------------------------------------------------------
# Learnt measurements: a domain classifier and sim-to-real segmentation
# ---------------------------------------------------------------------------------------------

# Budgets of `lus phantom-check`: working size, phantom training frames, epochs, folds, and the
# seeds of the headline domain classifiers (the phantoms', the two halves' and POCUS': their
# depth and scale views train one).
CHECK_PROFILES = {
    "paper": dict(size=256, train_videos=60, frames_per_video=13, seg_epochs=30, folds=3,
                  domain_epochs=20, batch_size=16, lr=1e-3, stats_size=256, seed=0, seg_seeds=3,
                  domain_seeds=3),
    "quick": dict(size=128, train_videos=24, frames_per_video=13, seg_epochs=12, folds=3,
                  domain_epochs=10, batch_size=16, lr=2e-3, stats_size=256, seed=0, seg_seeds=3,
                  domain_seeds=3),
    "smoke": dict(size=64, train_videos=6, frames_per_video=6, seg_epochs=2, folds=2,
                  domain_epochs=2, batch_size=16, lr=2e-3, stats_size=128, seed=0, seg_seeds=1,
                  domain_seeds=1),
}  # fmt: skip
SEGMENTER_FEATURES = (16, 32, 64, 128)  # a small U-Net: fast on a CPU, enough for two structures


def label_thickness_px(masks: np.ndarray) -> float:
    """Median thickness of thin band labels (e.g. the annotated pleural line): pixels per column
    where a column has any, over all frames."""
    per_col = masks.sum(-2)
    return float(np.median(per_col[per_col > 0])) if (per_col > 0).any() else 0.0


def thicken(masks: np.ndarray, thickness_px: float) -> np.ndarray:
    """Band labels of at least ``thickness_px`` rows: each labelled pixel grown up and down.

    A phantom's pleura is its exact acoustic thickness (1-2 pixels); annotators draw the pleural
    line as a band of a few pixels. Trained on the exact label, a segmenter learns a thinner line
    than the one it is scored against; thickened, it learns the annotation's convention.
    """
    grow = max(0, int(round((thickness_px - 1) / 2)))
    if grow == 0:
        return masks
    structure = np.zeros((1, 2 * grow + 1, 1), bool)
    structure[0, :, 0] = True
    return ndimage.binary_dilation(masks.astype(bool), structure).astype(np.uint8)


def central_space(layers) -> dict:
    """Phantom labels drawn as the real annotators drew theirs: the intercostal space beneath the
    probe's centre and the two ribs bounding it, no other.

    ``lus_pleura_rib``'s masks show, per frame, the pleural line of one intercostal space (its
    centre at 43-54 % of the frame's width in 90 % of the frames) and at most one rib shadow on
    each side of it, never a third rib at the fan's edge (where the ribs' spacing puts one in
    about half the frames). The phantom labels every rib and every space it shows, and a
    segmenter trained on them marks ribs and pleura the annotators left out. Kept here: the
    pleura between the shadows on either side of its pixel nearest the frame's centre column,
    those two shadows (each a connected region of the shadow mask, placed by its mean column)
    and the rib cortex above them (in their columns). A frame without pleura keeps nothing, a
    frame without ribs all its pleura.

    Args:
        layers: a phantom's label layers, (N, H, W) each: ``pleura``, ``rib_shadow`` and,
            if there, ``ribs``.

    Returns:
        ``{"pleura", "rib_shadow"[, "ribs"]}``, of the same shapes and dtypes.
    """
    pleura, shadow = layers["pleura"], layers["rib_shadow"]
    ribs = layers.get("ribs")
    out = {"pleura": np.zeros_like(pleura), "rib_shadow": np.zeros_like(shadow)}
    if ribs is not None:
        out["ribs"] = np.zeros_like(ribs)
    centre = (pleura.shape[2] - 1) / 2
    where = np.arange(pleura.shape[2])
    for k, (p_k, s_k) in enumerate(zip(pleura.astype(bool), shadow.astype(bool), strict=True)):
        cols = np.flatnonzero(p_k.any(0))
        if not len(cols):
            continue
        c_star = cols[np.argmin(np.abs(cols - centre))]
        regions, n = ndimage.label(s_k)
        means = [where[(regions == r).any(0)].mean() for r in range(1, n + 1)]
        left = [(m, r) for r, m in enumerate(means, 1) if m < c_star]
        right = [(m, r) for r, m in enumerate(means, 1) if m > c_star]
        lo, hi = max(left, default=(-np.inf, 0)), min(right, default=(np.inf, 0))
        out["pleura"][k] = p_k & ((where > lo[0]) & (where < hi[0]))[None, :]
        kept = np.isin(regions, [r for _, r in (lo, hi) if r])
        out["rib_shadow"][k] = kept
        if ribs is not None:
            out["ribs"][k] = ribs[k].astype(bool) & kept.any(0)[None, :]
    return out


def healthy_convex_phantom(appearance, n_videos: int, frames: int, size: int, seed: int):
    """Healthy convex-probe phantom videos as the real volunteer's: no B-line (healthy lungs may
    show one or two, the volunteer's 156 frames show none, and one would be a cue the domain
    classifier learns at once); a SegmentationSet."""
    from lus_common.phantoms.lung import lung_ultrasound_phantom

    return lung_ultrasound_phantom(
        n_videos * frames,
        n_patients=n_videos,
        frames_per_video=frames,
        image_size=size,
        probe="convex",
        diagnoses="healthy",
        n_blines=0,
        seed=seed,
        appearance=appearance,
        id_prefix=f"sim{seed}",
    )


def _train_segmenter(images, masks, p: dict, seed: int, device: str):
    """A small U-Net trained on ``masks`` (N, C, H, W), BCE + soft Dice, flips and rotation."""
    import torch

    from lus_common.models.torch_unet import UNet
    from lus_common.training.torch_loop import TrainConfig, train_model

    torch.manual_seed(seed)
    model = UNet(3, masks.shape[1], SEGMENTER_FEATURES)
    cfg = TrainConfig(
        epochs=p["seg_epochs"], batch_size=p["batch_size"], lr=p["lr"], lr_decay=0.9,
        rotation_deg=10, hflip=True, task="multilabel", dice_weight=1.0, log_dice=True,
        seed=seed, input_norm="unit",
    )  # fmt: skip
    history = train_model(model, images, masks, cfg, device)
    return model, history


def _dice_per_structure(model, images, masks, structures, device: str) -> dict:
    """Mean per-frame Dice of each structure, over the frames whose real mask has it."""
    from lus_common.evaluation.metrics import segmentation_scores
    from lus_common.training.torch_loop import predict

    probs = predict(model, images, 16, device, input_norm="unit", output="multilabel")
    out = {}
    for c, name in enumerate(structures):
        has = masks[:, c].reshape(len(masks), -1).any(1)
        scores = segmentation_scores(probs[has, c], masks[has, c])
        out[name] = {"dice": float(scores["dice"].mean()), "frames": int(has.sum()),
                     "per_frame": scores["dice"].round(4).tolist()}  # fmt: skip
    return out


def _stack(layers, names) -> np.ndarray:
    return np.stack([layers[n] for n in names], 1)


def sim_to_real(phantom, real, structures, p: dict, device: str, central: bool = True) -> dict:
    """Train on phantom frames only, score on every real frame.

    The phantom's labels are drawn as the real annotators drew theirs: with ``central`` only the
    intercostal space beneath the probe's centre and the two ribs bounding it
    (:func:`central_space`), and the thin band labels (pleura, rib cortex) thickened to the real
    annotations' thickness of the same structure (:func:`label_thickness_px`, :func:`thicken`).

    Args:
        phantom: a phantom SegmentationSet (its layers named as :data:`STRUCTURE_LAYERS` says),
            or a function of a seed that draws one: then every seed trains on its own draw, and
            the seeds' spread holds the phantom's draw as well as the network's initialisation
            (both move the Dice on real frames).
        real: the real SegmentationSet (``lus_pleura_rib``), same size.
        structures: real structure names, e.g. ``("pleural_line", "rib_shadow")``.
        p: a :data:`CHECK_PROFILES` entry.
        device: torch device.
        central: label only the space beneath the centre and its two ribs (the annotators'
            convention); ``False``: every rib and space the phantom shows.

    Returns:
        ``{structure: {"dice", "dice_seeds", "frames", "per_frame"}}``, ``"central"``,
        ``"train_seconds"`` and
        ``"phantom_per_seed"`` (whether each seed drew its own phantom frames): one U-Net per
        seed (``p["seg_seeds"]`` of them, seeds ``p["seed"]``, ``+ 1``, ...), ``dice`` the mean
        of the seeds' mean per-frame Dice, ``per_frame`` each frame's Dice averaged over the
        seeds.
    """
    import time

    truth = _stack(real.layers, structures)
    # lines the annotators drew as bands: the phantom's thin labels widened to their thickness
    bands = {c: label_thickness_px(real.layers[s]) for c, s in enumerate(structures)
             if s in ("pleural_line", "rib_line")}  # fmt: skip
    start = time.perf_counter()
    runs = []
    for k in range(p.get("seg_seeds", 1)):
        data = phantom(p["seed"] + k) if callable(phantom) else phantom
        drawn = central_space(data.layers) if central else data.layers
        y = _stack(drawn, [STRUCTURE_LAYERS[s] for s in structures])
        for c, thickness in bands.items():
            y[:, c] = thicken(y[:, c], thickness)
        model, _ = _train_segmenter(data.images, y, p, p["seed"] + k, device)
        runs.append(_dice_per_structure(model, real.images, truth, structures, device))
    out = {
        s: {"dice": float(np.mean([r[s]["dice"] for r in runs])),
            "dice_seeds": [r[s]["dice"] for r in runs], "frames": runs[0][s]["frames"],
            "per_frame": np.mean([r[s]["per_frame"] for r in runs], 0).round(4).tolist()}
        for s in structures
    }  # fmt: skip
    out["train_seconds"] = round(time.perf_counter() - start, 1)
    out["phantom_per_seed"] = callable(phantom)
    out["central"] = bool(central)
    return out


def real_to_real(real, structures, p: dict, device: str) -> dict:
    """The ceiling: the same U-Net and budget trained on the real frames of some clips and scored
    on the others (``p["folds"]`` folds by clip); every frame is scored once, held out.

    Returns:
        ``{structure: {"dice", "frames", "per_frame"}}`` (per frame in the real set's order) and
        ``"folds"``, ``"train_seconds"``.
    """
    import time

    from lus_common.data.sets import group_folds

    folds = group_folds(real.groups, p["folds"], p["seed"])
    y = _stack(real.layers, structures)
    per_frame = {s: np.full(len(real), np.nan) for s in structures}
    # the same number of optimiser steps as the phantom run: more epochs over fewer frames
    n_sim = p["train_videos"] * p["frames_per_video"]
    start = time.perf_counter()
    for f in range(p["folds"]):
        train, test = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
        q = dict(p, seg_epochs=max(1, round(p["seg_epochs"] * n_sim / len(train))))
        model, _ = _train_segmenter(real.images[train], y[train], q, p["seed"] + f, device)
        probs_scores = _dice_per_structure(model, real.images[test], y[test], structures, device)
        for c, s in enumerate(structures):
            has = np.flatnonzero(y[test, c].reshape(len(test), -1).any(1))
            per_frame[s][test[has]] = probs_scores[s]["per_frame"]
    out = {
        s: {"dice": float(np.nanmean(v)), "frames": int(np.isfinite(v).sum()),
            "per_frame": [None if np.isnan(x) else float(x) for x in v]}
        for s, v in per_frame.items()
    }  # fmt: skip
    out["folds"] = int(p["folds"])
    out["train_seconds"] = round(time.perf_counter() - start, 1)
    return out


class DomainCNN:
    """The domain classifier: four strided 3x3 convolutions (16-32-64-64, batch norm, ReLU),
    global average pooling and one linear layer to two classes (phantom, real)."""

    def __new__(cls):
        from torch import nn

        layers, ch = [], 3
        for out in (16, 32, 64, 64):
            layers += [nn.Conv2d(ch, out, 3, 2, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
            ch = out
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ch, 2))


def common_fan(phantom_images, phantom_groups, real_images, real_groups) -> np.ndarray:
    """Where every phantom and every real frame has image: the intersection of all their
    sectors (:func:`sector_masks`), so that a classifier shown only these pixels cannot tell the
    two apart by the fan's outline."""
    phantom = sector_masks(phantom_images, phantom_groups).all(0)
    return phantom & sector_masks(real_images, real_groups).all(0)


def domain_auc(
    phantom_images,
    phantom_groups,
    real_images,
    real_groups,
    p: dict,
    device: str,
    mask: np.ndarray | None = None,
    seeds: int = 1,
):
    """Held-out ROC AUC of a small CNN telling phantom (0) from real (1) frames.

    Folds keep a real clip, or a phantom video, on one side (scikit-learn's
    ``StratifiedGroupKFold``); every frame is scored once, by the fold that held it out, by its
    log-odds of being real (a probability would round to exactly 0 or 1 for a sure classifier,
    and its ties would lower the AUC), with its batch norm's statistics recomputed on its
    training frames first (:func:`.torch_loop.recompute_batch_norm`: the moving averages lag a
    few epochs behind the weights on a few hundred frames, so an early epoch's AUC measured how
    far they had come). With ``mask``, every frame is shown only inside it (black elsewhere).
    With ``seeds`` above 1, the whole (folds and networks) is repeated with the seeds ``p["seed"]``,
    ``p["seed"] + 1``, ... and averaged (:func:`_over_seeds`): one classifier's AUC moves from
    seed to seed (POCUS against the real set: 1.000, 0.933, 0.971 in the reference check).

    Returns:
        dict with ``auc`` (the mean of the folds' AUCs after the last epoch), ``auc_folds``,
        ``auc_pooled`` (over all held-out scores at once: lower when the folds' classifiers are
        calibrated differently), ``auc_by_epoch`` (the folds' mean held-out AUC after each
        epoch: how fast the difference is learnt, which still tells generators apart when both
        end at 1), ``epochs_to_099`` (the first epoch at 0.99 or more, None if never),
        ``log_loss`` (held-out cross-entropy: how sure it is), ``accuracy`` (threshold 0.5) and
        ``frames``; with several seeds these are means over them (``auc_folds`` every fold
        of every seed), and ``auc_seeds`` and ``log_loss_seeds`` give each seed's.
    """
    if seeds > 1:
        runs = [
            domain_auc(
                phantom_images,
                phantom_groups,
                real_images,
                real_groups,
                {**p, "seed": p["seed"] + k},
                device,
                mask,
            )  # fmt: skip
            for k in range(seeds)
        ]
        return _over_seeds(runs)
    import torch
    from sklearn.metrics import log_loss, roc_auc_score

    from lus_common.data.sets import group_folds
    from lus_common.training.torch_loop import (
        TrainConfig,
        predict,
        recompute_batch_norm,
        train_model,
    )

    images = np.concatenate([phantom_images, real_images]).astype(np.float32)
    if mask is not None:  # only these pixels are shown (e.g. common_fan)
        images *= mask
    domain = np.r_[np.zeros(len(phantom_images), int), np.ones(len(real_images), int)]
    groups = [f"phantom:{g}" for g in phantom_groups] + [f"real:{g}" for g in real_groups]
    folds = group_folds(groups, p["folds"], p["seed"], stratify=domain)
    score = np.full(len(images), np.nan)
    aucs, curves = [], []
    for f in range(p["folds"]):
        train, test = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
        torch.manual_seed(p["seed"] + f)
        model = DomainCNN()
        cfg = TrainConfig(
            epochs=p["domain_epochs"],
            batch_size=p["batch_size"],
            lr=1e-3,
            hflip=True,
            task="classify",
            seed=p["seed"] + f,
            input_norm="unit",
        )

        def margin(model, test=test, train=train):  # log p(real) - log p(phantom): no ties
            # where p rounds to 1; batch norm's statistics of the training frames, as the
            # weights stand (they lag by many steps after an epoch or two of a small set)
            recompute_batch_norm(model, images[train], p["batch_size"], device, "unit")
            lp = predict(  # in float32: bf16 logits would tie again
                model, images[test], 32, device, amp=False, input_norm="unit", output="log_proba"
            )
            return lp[:, 1] - lp[:, 0]

        def held_out(model, epoch, test=test):  # after every epoch: the last is the fold's score
            score[test] = margin(model)
            return {"held_out_auc": float(roc_auc_score(domain[test], score[test]))}

        history = train_model(model, images[train], domain[train], cfg, device, evaluate=held_out)
        aucs.append(float(history["held_out_auc"].iloc[-1]))
        curves.append(history["held_out_auc"].to_numpy())
    curve = np.mean(curves, 0)
    return {
        "auc": float(np.mean(aucs)),
        "auc_folds": aucs,
        "auc_pooled": float(roc_auc_score(domain, score)),
        "auc_by_epoch": curve.round(4).tolist(),
        "epochs_to_099": int(np.argmax(curve >= 0.99) + 1) if (curve >= 0.99).any() else None,
        "log_loss": float(log_loss(domain, np.clip(special.expit(score), 1e-6, 1 - 1e-6))),
        "accuracy": float(((score > 0) == domain).mean()),
        "frames": {"phantom": int(len(phantom_images)), "real": int(len(real_images))},
    }


def _over_seeds(runs: list[dict]) -> dict:
    """:func:`domain_auc`'s results of several seeds as one: their means, every fold's AUC, and
    each seed's AUC and log-loss."""
    curve = np.mean([r["auc_by_epoch"] for r in runs], 0)
    return {
        "auc": float(np.mean([r["auc"] for r in runs])),
        "auc_folds": [a for r in runs for a in r["auc_folds"]],
        "auc_pooled": float(np.mean([r["auc_pooled"] for r in runs])),
        "auc_by_epoch": curve.round(4).tolist(),
        "epochs_to_099": int(np.argmax(curve >= 0.99) + 1) if (curve >= 0.99).any() else None,
        "log_loss": float(np.mean([r["log_loss"] for r in runs])),
        "accuracy": float(np.mean([r["accuracy"] for r in runs])),
        "frames": runs[0]["frames"],
        "seeds": len(runs),
        "auc_seeds": [r["auc"] for r in runs],
        "log_loss_seeds": [r["log_loss"] for r in runs],
    }


# What a view's run keeps of :func:`domain_auc`'s result (by depth band, by scale).
_VIEW_KEYS = ("auc", "auc_by_epoch", "epochs_to_099", "log_loss")


# Thirds of the frame's height: the chest wall and pleura (the real pleura lies at about a quarter
# of the depth), the lung near the pleura (A-lines, rib shadows), and the deep lung.
DEPTH_BANDS = {"top": (0.0, 1 / 3), "middle": (1 / 3, 2 / 3), "bottom": (2 / 3, 1.0)}
DEPTH_BAND_LABELS = {
    "top": "top third (chest wall, pleura)",
    "middle": "middle third (lung: A-lines, shadows)",
    "bottom": "bottom third (deep lung)",
}


def other_real_frames(folder, n_clips: int, per_clip: int, size: int):
    """A second real source for the domain classifier's reference: healthy convex clips of a
    POCUS-style folder (``pocus_videos/convex/``), the first ``n_clips`` in file order, up to
    ``per_clip`` frames of each at 3 per second, cropped to their content and resized to
    ``size`` (:func:`lus_common.data.pocus.load_pocus`).

    Telling these from the reference frames is telling two real sources apart (other scanners,
    other people): the AUC a phantom cannot be asked to beat.

    Raises:
        FileNotFoundError: the folder has no healthy convex clip.
    """
    from lus_common.data.pocus import list_pocus, load_pocus

    table = list_pocus(folder, include_images=False)
    pick = table[
        (table["kind"] == "video")
        & (table["diagnosis"] == "healthy")
        & table["file"].str.contains("convex")
    ]
    if pick.empty:
        raise FileNotFoundError(f"No healthy convex clip in {folder} (pocus_videos/convex/).")
    files = list(pick["file"][:n_clips])
    return load_pocus(folder, image_size=size, fps=3.0, max_frames_per_video=per_clip,
                      include_images=False, files=files, crop="content")  # fmt: skip


def same_source_halves(groups) -> tuple[np.ndarray, str]:
    """Two halves of one real set's clips, for the domain classifier's null reference: the clips of
    the left side against those of the right where every clip's name says its side (``-L-`` or
    ``-R-``, as ``lus_pleura_rib``'s do: the same volunteer, probe and settings, another part of
    the chest), else alternate clips in sorted order.

    Returns:
        ``(first, split)``: per frame whether it is in the first half, and the split in words.

    Raises:
        ValueError: fewer than four clips (each half needs two, for folds by clip).
    """
    groups = np.asarray(groups).astype(str)
    clips = sorted(set(groups))
    if len(clips) < 4:
        raise ValueError(f"same-source reference: {len(clips)} clip(s); it needs at least 4")
    left = {c for c in clips if "-L-" in c}
    right = {c for c in clips if "-R-" in c}
    if left and right and len(left) + len(right) == len(clips) and min(len(left), len(right)) > 1:
        return np.isin(groups, sorted(left)), "left-side clips vs right-side clips"
    return np.isin(groups, clips[::2]), "alternate clips (sorted by name)"


def same_source_domain(real, p: dict, device: str) -> dict:
    """The domain classifier's null reference: :func:`domain_auc` between two halves of the real
    frames themselves (:func:`same_source_halves`), the same folds by clip and budget. Near 0.5
    when the classifier finds nothing between clips of one source; how far a phantom's AUC lies
    above it is what it gives away.

    Returns:
        ``{"split", "clips": [first, second], "frames": [first, second], "domain"}``.
    """
    first, split = same_source_halves(real.groups)
    groups = np.asarray(real.groups).astype(str)
    images = np.asarray(real.images)
    domain = domain_auc(images[first], groups[first], images[~first], groups[~first], p, device,
                        seeds=p.get("domain_seeds", 1))  # fmt: skip
    return {
        "split": split,
        "clips": [len(set(groups[first])), len(set(groups[~first]))],
        "frames": [int(first.sum()), int((~first).sum())],
        "domain": domain,
    }


def domain_auc_by_depth(
    phantom_images, phantom_groups, real_images, real_groups, p: dict, device: str
) -> dict:
    """Where in the frame the phantom gives itself away: :func:`domain_auc` once per band of
    :data:`DEPTH_BANDS`, every frame shown only inside that band (black elsewhere), the same folds
    and budget.

    Returns:
        ``{band: {"auc", "auc_by_epoch", "epochs_to_099", "log_loss", "rows"}}``, ``rows`` the
        band's first and last pixel row.
    """
    height, width = np.shape(real_images)[-2:]
    row = np.arange(height)
    out = {}
    for band, (lo, hi) in DEPTH_BANDS.items():
        keep = (row >= lo * height) & (row < hi * height)
        mask = np.repeat(keep[:, None], width, axis=1)
        d = domain_auc(phantom_images, phantom_groups, real_images, real_groups, p, device, mask)
        out[band] = {k: d[k] for k in _VIEW_KEYS}
        out[band]["rows"] = [int(row[keep][0]), int(row[keep][-1])]
    return out


# One scale of the frame at a time: the layout alone, or the fine texture alone.
SCALE_VIEWS = {
    "coarse": "layout alone (a 16 x 16 grid of block means: layers, shadows, brightness)",
    "fine": "texture alone (less a Gaussian blur of 1/40 of the size: speckle, edges)",
}
_COARSE_BLOCKS = 16
_FINE_SIGMA = 1 / 40  # of the frame's height: 3.2 px at 128 px, about three speckle cells wide


def scale_view(images: np.ndarray, view: str, fan: np.ndarray) -> np.ndarray:
    """The frames at one scale of :data:`SCALE_VIEWS`, same shape.

    ``coarse``: the frame cut into a 16 x 16 grid of blocks (8 x 8 px at 128 px), each replaced
    by its mean; the whole frame, so the fan's outline is in the edge blocks (the frame's height
    and width must divide by 16). ``fine``: 0.5 plus the frame less its Gaussian blur, inside
    ``fan`` (e.g. :func:`common_fan`) shrunk by twice the blur's sigma, 0.5 elsewhere (the fan's
    outline, a sharp edge in every frame, is not shown).
    """
    from lus_common.config.registry import lookup

    lookup(SCALE_VIEWS, view, "scale view", error=ValueError)
    x = np.asarray(images, np.float32)
    n, h, w = x.shape
    if view == "coarse":
        if h % _COARSE_BLOCKS or w % _COARSE_BLOCKS:
            raise ValueError(f"coarse view: {h}x{w} frames do not divide into 16 x 16 blocks")
        bh, bw = h // _COARSE_BLOCKS, w // _COARSE_BLOCKS
        means = x.reshape(n, _COARSE_BLOCKS, bh, _COARSE_BLOCKS, bw).mean((2, 4))
        return np.repeat(np.repeat(means, bh, 1), bw, 2)
    sigma = _FINE_SIGMA * h  # "fine"
    keep = ndimage.binary_erosion(fan, iterations=int(np.ceil(2 * sigma)))
    return np.where(keep, 0.5 + x - ndimage.gaussian_filter(x, (0, sigma, sigma)), 0.5)


def domain_auc_by_scale(
    phantom_images, phantom_groups, real_images, real_groups, p: dict, device: str
) -> dict:
    """What gives the phantom away, the layout or the texture: :func:`domain_auc` once per view
    of :data:`SCALE_VIEWS` (:func:`scale_view`, both sides alike, the fine view inside their
    :func:`common_fan`), the same folds and budget.

    Returns:
        ``{view: {"auc", "auc_by_epoch", "epochs_to_099", "log_loss"}}``.
    """
    fan = common_fan(phantom_images, phantom_groups, real_images, real_groups)
    out = {}
    for view in SCALE_VIEWS:
        d = domain_auc(scale_view(phantom_images, view, fan), phantom_groups,
                       scale_view(real_images, view, fan), real_groups, p, device)  # fmt: skip
        out[view] = {k: d[k] for k in _VIEW_KEYS}
    return out


SHADOW_ROW = 0.6  # where rib shadows are measured, as a share of the frame's height


def shadow_layout(masks: np.ndarray, inside: np.ndarray, row: float = SHADOW_ROW) -> dict:
    """Where the rib shadows lie, from their masks: on the row ``row`` of the frame's height
    down, the shadows per frame, the width of each shadow the fan holds whole (not cut by the
    fan's edge) and the distance between neighbouring whole shadows' centres (the ribs' pitch
    seen from the probe), in pixels and as shares of the frame's width.

    A measurement, not an objective: the phantom's geometry is never fitted to real masks.

    Args:
        masks: (N, H, W) rib-shadow masks.
        inside: (N, H, W) the fans (:func:`sector_masks`).
        row: the row, as a share of the height.
    """
    r = min(int(round(row * masks.shape[1])), masks.shape[1] - 1)
    counts, widths, gaps = [], [], []
    for mask, fan in zip(masks[:, r].astype(bool), inside[:, r], strict=True):
        runs, n = ndimage.label(mask)
        counts.append(n)
        whole = []
        for k in range(1, n + 1):
            cols = np.flatnonzero(runs == k)
            lo, hi = cols[0] - 1, cols[-1] + 1  # a whole shadow has fan on both sides
            if lo >= 0 and hi < len(fan) and fan[lo] and fan[hi]:
                whole.append(cols)
        widths += [len(c) for c in whole]
        gaps += list(np.diff([c.mean() for c in whole]))
    width = masks.shape[2]

    def median(x):
        return float(np.median(x)) if len(x) else None

    out = {"row": r, "frames": len(masks), "per_frame": float(np.mean(counts)),
           "width_px": median(widths), "gap_px": median(gaps), "shadows_whole": len(widths),
           "pairs": len(gaps)}  # fmt: skip
    out["width_share"] = None if out["width_px"] is None else out["width_px"] / width
    out["gap_share"] = None if out["gap_px"] is None else out["gap_px"] / width
    return out


def _statistics_table(real: dict, phantoms: dict) -> tuple[list[dict], dict]:
    """Rows statistic by statistic (real, then each generator and its z) and distances."""
    rows, distances = {}, {}
    for name, summary in phantoms.items():
        table, distances[name] = compare_statistics(summary, real)
        for stat, row in table.iterrows():
            r = rows.setdefault(stat, {"statistic": stat, "real": row["real"],
                                       "real_sd": row["real_sd"]})  # fmt: skip
            r[name] = row["phantom"]
            r[f"z_{name}"] = row["z"]
    return list(rows.values()), distances


def _real_layout(real) -> tuple[dict, int, int]:
    """A real set's record (folder, frames, clips, fingerprint), its clips and frames per clip:
    what the phantom draws of :func:`_phantom_like` match."""
    n_clips = len(set(real.groups))
    per_clip = int(np.ceil(len(real) / n_clips))
    record = {"folder": real.info["root"], "frames": len(real), "clips": n_clips,
              "fingerprint": real.fingerprint()}  # fmt: skip
    return record, n_clips, per_clip


def _phantom_like(appearance, n_clips: int, per_clip: int, size: int, p: dict):
    """The check's phantom frames of an appearance: as many videos and frames as the real set
    has clips and frames, one seed for every appearance (common random numbers)."""
    return healthy_convex_phantom(appearance, n_clips, per_clip, size, p["seed"] + 101)


def phantom_check(
    real_dir=None,
    structures=("pleural_line", "rib_shadow"),
    generators=("v1", "calibrated"),
    profile: str = "quick",
    device: str = "cpu",
    progress: bool = True,
    other_real="auto",
    central: bool = True,
    same_source: bool = True,
    **overrides,
) -> dict:
    """How real is each phantom generator, against ``lus_pleura_rib``-style real frames.

    Args:
        real_dir: the real folder (``image/`` and ``mask/<structure>/``; default
            ``$LUS_DATA_DIR/lus_pleura_rib``).
        structures: real structures to segment (``pleural_line``, ``rib_shadow``, ``rib_line``).
        generators: appearances of :mod:`lus_common.phantoms.appearance` to compare.
        profile: a budget of :data:`CHECK_PROFILES` (``quick`` runs in minutes on a CPU).
        device: torch device for the networks.
        progress: print a line per step.
        other_real: a POCUS-style folder whose healthy convex clips the same domain classifier
            tells from the real frames (:func:`other_real_frames`): the real-to-real reference
            of the domain AUC. ``"auto"`` (default): the ``pocus`` folder beside the real one, or
            ``$LUS_DATA_DIR/pocus``, where it exists, else skipped and said so; ``None``: skipped.
        central: the sim-to-real U-Net learns the phantom's labels as the real annotators drew
            theirs (:func:`central_space`); ``False``: every rib and space in view.
        same_source: also the domain classifier between two halves of the real frames
            (:func:`same_source_domain`): its null reference, where 0.5 is reachable.
        **overrides: values of the profile to change (``size``, ``seg_epochs``, ...).

    Returns:
        A JSON-ready dict: ``real`` (folder, frames, clips, fingerprint), ``params``,
        ``label_thickness_px``, ``ceiling`` (real-to-real Dice per structure), per generator its
        ``version``, ``sim_to_real`` (Dice per structure), ``domain`` (AUC) and ``distances``
        (histogram, profile, mean |z|), ``statistics`` (rows: real and every generator),
        ``same_source`` (:func:`same_source_domain`, when asked for) and ``other_real`` (the
        second real source's ``domain`` result, or why it was skipped).
    """
    import time

    from lus_common.config.profiles import resolve_params
    from lus_common.config.registry import lookup
    from lus_common.data.lus_pleura_rib import load_lus_pleura_rib
    from lus_common.phantoms.appearance import resolve_appearance

    start = time.perf_counter()
    p = resolve_params(CHECK_PROFILES, profile, **overrides)
    say = (lambda m: print(m, file=sys.stderr, flush=True)) if progress else (lambda m: None)
    for s in structures:
        lookup(STRUCTURE_LAYERS, s, "structure", error=ValueError)
    appearances = {g: resolve_appearance(g) for g in generators}
    real = load_lus_pleura_rib(real_dir, image_size=p["size"])
    real_stats_set = load_lus_pleura_rib(real_dir, image_size=p["stats_size"])
    real_record, n_clips, per_clip = _real_layout(real)
    thickness = label_thickness_px(real.layers["pleural_line"])
    say(f"real: {len(real)} frames, {n_clips} clips; pleural line drawn {thickness:.1f} px thick")
    result = {
        "real": real_record,
        "params": {**p, "profile": profile, "structures": list(structures), "device": device,
                   "labels": "central" if central else "all"},
        "label_thickness_px": thickness,
        "generators": {},
    }  # fmt: skip
    real_summary = summarise(real_stats_set.images, real_stats_set.groups)
    if "rib_shadow" in real.layers:
        result["real"]["shadow_layout"] = shadow_layout(
            real.layers["rib_shadow"], sector_masks(real.images, real.groups)
        )
    summaries = {}
    for g, a in appearances.items():
        t0 = time.perf_counter()
        look = _phantom_like(a, n_clips, per_clip, p["stats_size"], p)
        summaries[g] = summarise(look.images, look.meta["video"])
        small = _phantom_like(a, n_clips, per_clip, p["size"], p)
        domain = _domain_with_bands(small.images, small.meta["video"], real, p, device)
        layout = shadow_layout(small.layers["rib_shadow"],
                               sector_masks(small.images, small.meta["video"]))  # fmt: skip
        say(f"{g}: domain classifier AUC {domain['auc']:.3f}")
        for key in ("by_depth", "by_scale"):
            if key in domain:
                say(f"{g}: {key.replace('_', ' ')} " + ", ".join(
                    f"{v} {d['auc']:.3f}" for v, d in domain[key].items()))  # fmt: skip

        def draw(seed, a=a):  # a new phantom draw for every seed of the U-Net
            return healthy_convex_phantom(
                a, p["train_videos"], p["frames_per_video"], p["size"], seed
            )

        sim = sim_to_real(draw, real, structures, p, device, central=central)
        say(f"{g}: sim-to-real Dice " + ", ".join(f"{s} {sim[s]['dice']:.3f}" for s in structures))
        result["generators"][g] = {"version": a.version, "domain": domain, "sim_to_real": sim,
                                   "shadow_layout": layout,
                                   "rib_width_mm": [2 * x for x in a.rib_half_mm],
                                   "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    rows, distances = _statistics_table(real_summary, summaries)
    for g in appearances:
        result["generators"][g]["distances"] = distances[g]
    result["statistics"] = rows
    for key in ("depth_profile", "histogram"):
        result[key] = {"real": real_summary[key].tolist()}
        result[key].update({g: s[key].tolist() for g, s in summaries.items()})
    if same_source:
        result["same_source"] = same_source_domain(real, p, device)
        say(f"same source ({result['same_source']['split']}): domain classifier AUC "
            f"{result['same_source']['domain']['auc']:.3f}")  # fmt: skip
    result["other_real"] = _other_real_domain(other_real, real, n_clips, per_clip, p, device)
    if "domain" in result["other_real"]:
        say(f"other real source: domain classifier AUC {result['other_real']['domain']['auc']:.3f}")
    else:
        say(f"other real source skipped: {result['other_real']['skipped']}")
    ceiling = real_to_real(real, structures, p, device)
    say("real-to-real ceiling: " + ", ".join(f"{s} {ceiling[s]['dice']:.3f}" for s in structures))
    result["ceiling"] = ceiling
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def parse_changes(text: str) -> dict:
    """``"specks=30,speck_density=0.23"`` -> ``{"specks": 30.0, "speck_density": 0.23}``: fields
    of :class:`~lus_common.phantoms.appearance.Appearance` with numbers, ``lo:hi`` for a range.

    Raises:
        ValueError: an unknown field, a missing ``=``, a value that is not a number, or a range
            given for a single number or the reverse.
    """
    from dataclasses import fields

    from lus_common.phantoms.appearance import V1

    known = {f.name for f in fields(V1)} - {"name", "version"}
    out = {}
    for part in filter(None, (t.strip() for t in text.split(","))):
        name, eq, value = part.partition("=")
        if not eq:
            raise ValueError(f"{part!r}: write NAME=VALUE (or NAME=LO:HI for a range)")
        if name not in known:
            raise ValueError(
                f"{name!r} is not an appearance field; one of: {', '.join(sorted(known))}"
            )
        ranged = isinstance(getattr(V1, name), tuple)
        try:
            parsed = tuple(float(v) for v in value.split(":")) if ":" in value else float(value)
        except ValueError:
            raise ValueError(f"{name}={value!r}: not a number") from None
        if ranged != isinstance(parsed, tuple) or (ranged and len(parsed) != 2):
            raise ValueError(f"{name} takes {'LO:HI (a range)' if ranged else 'one number'}")
        out[name] = parsed
    return out


def domain_ablation(
    real_dir=None,
    variants: dict | None = None,
    base: str = "calibrated",
    profile: str = "quick",
    device: str = "cpu",
    progress: bool = True,
    **overrides,
) -> dict:
    """Which of an appearance's features the domain classifier keys on: :func:`domain_auc` (the
    profile's ``domain_seeds``) of the ``base`` appearance, and of each variant of it with some
    fields changed (``{name: {field: value}}``, e.g. a feature switched off), against the same
    real frames, on phantom draws of the same seed (common random numbers) as
    :func:`phantom_check` draws them. A variant the classifier learns more slowly (lower AUC
    after one epoch, higher held-out log-loss) changed something it used; the changes are
    diagnostics for the next calibration, not fitted to the classifier.

    Returns:
        ``{"real", "base", "base_version", "params", "variants": {name: {"changes", "domain"}},
        "seconds"}``, the base as the variant ``"base"`` with no changes.
    """
    import time
    from dataclasses import replace

    from lus_common.config.profiles import resolve_params
    from lus_common.data.lus_pleura_rib import load_lus_pleura_rib
    from lus_common.phantoms.appearance import resolve_appearance

    start = time.perf_counter()
    p = resolve_params(CHECK_PROFILES, profile, **overrides)
    a = resolve_appearance(base)
    runs = {"base": {}, **(variants or {})}
    appearances = {name: replace(a, **changes) for name, changes in runs.items()}  # checked first
    real = load_lus_pleura_rib(real_dir, image_size=p["size"])
    real_record, n_clips, per_clip = _real_layout(real)
    out = {"real": real_record, "base": a.name, "base_version": a.version,
           "params": {**p, "profile": profile, "device": device}, "variants": {}}  # fmt: skip
    for name, look in appearances.items():
        small = _phantom_like(look, n_clips, per_clip, p["size"], p)
        domain = domain_auc(small.images, small.meta["video"], real.images, real.groups, p,
                            device, seeds=p.get("domain_seeds", 1))  # fmt: skip
        out["variants"][name] = {"changes": runs[name], "domain": domain}
        if progress:
            first, loss = domain["auc_by_epoch"][0], domain["log_loss"]
            print(f"{name}: AUC {auc_text(domain)}, after one epoch {first:.3f}, "
                  f"log-loss {loss:.4f}", file=sys.stderr, flush=True)  # fmt: skip
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


def _domain_with_bands(images, groups, real, p: dict, device: str) -> dict:
    """:func:`domain_auc` of ``images`` against the real set, with its :func:`domain_auc_by_depth`
    as ``by_depth`` and its :func:`domain_auc_by_scale` as ``by_scale`` unless the profile turns
    them off (``depth_bands``, ``scale_views``)."""
    domain = domain_auc(images, groups, real.images, real.groups, p, device,
                        seeds=p.get("domain_seeds", 1))  # fmt: skip
    if p.get("depth_bands", True):
        domain["by_depth"] = domain_auc_by_depth(
            images, groups, real.images, real.groups, p, device
        )
    if p.get("scale_views", True):
        domain["by_scale"] = domain_auc_by_scale(
            images, groups, real.images, real.groups, p, device
        )
    return domain


def _other_real_domain(other_real, real, n_clips: int, per_clip: int, p: dict, device: str):
    """The domain classifier on a second real source against the real frames, as many clips and
    frames as the real set (see :func:`phantom_check`'s ``other_real``)."""
    from lus_common.config.paths import dataset_dir

    if other_real is None:
        return {"skipped": "not asked for"}
    if other_real == "auto":  # beside the real folder, else in the data directory
        beside = Path(real.info["root"]).parent / "pocus" if real is not None else None
        try:
            other_real = beside if beside is not None and beside.is_dir() else dataset_dir("pocus")
        except FileNotFoundError as exc:
            return {"skipped": str(exc)}
    other = other_real_frames(Path(other_real), n_clips, per_clip, p["size"])
    domain = _domain_with_bands(other.frames, other.videos, real, p, device)
    return {"source": "POCUS healthy convex clips", "folder": str(other_real),
            "clips": len(set(other.videos)), "frames": len(other),
            "fingerprint": other.fingerprint(), "domain": domain}  # fmt: skip


def headline(result: dict) -> dict:
    """The one-line summary ``lus phantom-check`` prints: per generator its sim-to-real Dice and
    domain AUC, the real-to-real ceiling, and the seconds."""
    structures = result["params"]["structures"]
    line = {"real_frames": result["real"]["frames"], "profile": result["params"]["profile"],
            "size": result["params"]["size"]}  # fmt: skip
    for g, r in result["generators"].items():
        line[g] = {
            "version": r["version"],
            "sim_to_real_dice": {s: round(r["sim_to_real"][s]["dice"], 4) for s in structures},
            "domain_auc": round(r["domain"]["auc"], 4),
            **(
                {"domain_auc_seeds": [round(a, 4) for a in r["domain"]["auc_seeds"]]}
                if "auc_seeds" in r["domain"]
                else {}
            ),  # fmt: skip
            "domain_auc_after_1_epoch": round(r["domain"]["auc_by_epoch"][0], 4),
            "domain_log_loss": round(r["domain"]["log_loss"], 4),
            **{
                f"domain_auc_{key}": {v: round(d["auc"], 4) for v, d in r["domain"][key].items()}
                for key in ("by_depth", "by_scale")
                if key in r["domain"]
            },
            "mean_abs_z": round(r["distances"]["mean_abs_z"], 3),
        }
    same = result.get("same_source")
    if same:
        line["same_source"] = {
            "split": same["split"],
            "domain_auc": round(same["domain"]["auc"], 4),
            "domain_log_loss": round(same["domain"]["log_loss"], 4),
        }
    other = result.get("other_real", {})
    if "domain" in other:
        line["other_real"] = {
            "source": other["source"],
            "domain_auc": round(other["domain"]["auc"], 4),
            "domain_auc_after_1_epoch": round(other["domain"]["auc_by_epoch"][0], 4),
            "domain_log_loss": round(other["domain"]["log_loss"], 4),
        }
    line["real_to_real_dice"] = {s: round(result["ceiling"][s]["dice"], 4) for s in structures}
    line["seconds"] = result["seconds"]
    return line


def write_check(result: dict, path) -> Path:
    """Write a :func:`phantom_check` result as JSON (with the environment), atomically."""
    from lus_common.store.environment import environment_info
    from lus_common.store.results import write_json

    return write_json(path, {**result, "environment": environment_info()})


def read_check(path) -> dict:
    """A result written by :func:`write_check`."""
    return json.loads(Path(path).read_text())


# ---------------------------------------------------------------------------------------------
# The chapter's tables and sentences, from a recorded check
# ---------------------------------------------------------------------------------------------

STAT_LABELS = {
    "sector_fraction": "fraction of the frame inside the sector",
    "grey_mean": "grey level inside the sector: mean",
    "grey_p05": "grey level: 5th percentile",
    "grey_p50": "grey level: median",
    "grey_p95": "grey level: 95th percentile",
    "dark_fraction": "share of the sector darker than 0.05",
    "layer_depth": "brightest layer (pleura or rib surface): depth / sector depth",
    "wall_mean": "chest wall: mean grey (log domain)",
    "wall_std": "chest wall: grey standard deviation (log domain)",
    "implied_range_db": "chest wall: display range a Rayleigh envelope would need (dB)",
    "speckle_axial_px": "speckle size, axial (autocorrelation FWHM, px)",
    "speckle_lateral_px": "speckle size, lateral (autocorrelation FWHM, px)",
    "step_axial": "fine texture: mean |grey step| down",
    "step_lateral": "fine texture: mean |grey step| across",
    "column_contrast": "deep scan lines' brightness: coefficient of variation (shadows)",
    "shadow_edge": "steepest lateral change of the deep brightness / its mean (shadow edges)",
    "shadow_width": "rib shadows from the pixels: mean width of the whole dark runs / frame width",
    "centre_share": "lung beneath the pleura: middle fifth's mean grey / the flanks' (specular)",
    "wall_centre_share": "chest wall: middle fifth of the fan's grey / its flanks' (anisotropy)",
    "near_mean": "skin and fat (2 % of the depth to half the layer's), middle half: mean grey",
    "fine_cv_mid": "lung beneath the pleura (25-45 % depth): fine texture's std / mean grey",
    "fine_cv_deep": "deep lung (45-90 % depth): fine texture's std / mean grey",
    "aline_ripple": "lung (30-90 % depth): ripple of the depth profile / mean grey (A-lines)",
    "grain_axial": "lung texture, axial: finest detail's std / its blobs' std (grain)",
    "grain_lateral": "lung texture, lateral: finest detail's std / its blobs' std (grain)",
    "fine_skew": "lung texture: skewness of the fine texture (> 0: bright specks, < 0: dark pits)",
    "pit_share": "lit sector: share of pixels darker than half their local mean (speckle's pits)",
    "wall_fine_cv": "chest wall: fine texture's std / mean grey",
    "wall_skew": "chest wall: skewness of the fine texture (> 0: bright fibres and specks)",
    "entry_rise": "top edge: brightest row of the first 4 % of the depth / its first (gel, skin)",
    "pleura_cv": "brightest layer along its length: coefficient of variation of its peak grey",
    "pleura_contrast": "brightest layer's brighter half / the grey 5-15 % of the depth beneath it",
}
STRUCTURE_LABELS = {"pleural_line": "pleural line", "rib_shadow": "rib shadow",
                    "rib_line": "rib line"}  # fmt: skip


def statistics_frame(check: dict) -> pd.DataFrame:
    """The recorded check's appearance statistics: real, each generator, and each generator's
    difference in real standard deviations (``z``), one row per statistic."""
    table = pd.DataFrame(check["statistics"]).set_index("statistic")
    table.index = [STAT_LABELS.get(s, s) for s in table.index]
    return table.drop(columns=["real_sd"])


def distances_frame(check: dict) -> pd.DataFrame:
    """Per generator: the histogram's Wasserstein-1 and Jensen-Shannon distances to the real
    frames', the depth profiles' RMS difference and the mean |z| of the statistics."""
    return pd.DataFrame({g: r["distances"] for g, r in check["generators"].items()}).T


def scores_frame(check: dict) -> pd.DataFrame:
    """Sim-to-real Dice per structure and the domain classifier's AUC per generator, with the
    real-to-real ceiling as the last row."""
    structures = check["params"]["structures"]
    rows = {}
    for g, r in check["generators"].items():
        rows[f"trained on phantom {g}"] = {
            **{f"Dice: {STRUCTURE_LABELS[s]}": r["sim_to_real"][s]["dice"] for s in structures},
            "domain AUC (0.5: cannot tell)": r["domain"]["auc"],
            "domain AUC after 1 epoch": r["domain"]["auc_by_epoch"][0],
            "domain log-loss": r["domain"]["log_loss"],
        }
    rows["trained on real clips (ceiling)"] = {
        f"Dice: {STRUCTURE_LABELS[s]}": check["ceiling"][s]["dice"] for s in structures
    }
    other = check.get("other_real", {})
    if "domain" in other:
        d = other["domain"]
        rows[f"another real source ({other['source']})"] = {
            "domain AUC (0.5: cannot tell)": d["auc"],
            "domain AUC after 1 epoch": d["auc_by_epoch"][0],
            "domain log-loss": d["log_loss"],
        }
    return pd.DataFrame(rows).T


def _domains(check: dict) -> dict:
    """Every domain classifier result of a check by name: the generators, then the other real
    source (``"other real"``) and the real set's two halves (``"real halves"``) where they ran."""
    out = {g: r["domain"] for g, r in check["generators"].items()}
    if "domain" in check.get("other_real", {}):
        out["other real"] = check["other_real"]["domain"]
    if check.get("same_source"):
        out["real halves"] = check["same_source"]["domain"]
    return out


def domain_curves(check: dict) -> dict:
    """Held-out AUC after each epoch (mean of the folds) per generator and other real source."""
    return {name: np.asarray(d["auc_by_epoch"]) for name, d in _domains(check).items()}


def _views_frame(check: dict, key: str, labels: dict, shown: str) -> pd.DataFrame:
    """Per generator (and the other real source) and view of its domain result ``key`` (one
    row each): held-out AUC after the last and the first epoch, epochs to 0.99, log-loss."""
    rows = {}
    for g, domain in _domains(check).items():
        for view, d in domain.get(key, {}).items():
            rows[(g, labels.get(view, view))] = {
                "domain AUC": d["auc"],
                "AUC after 1 epoch": d["auc_by_epoch"][0],
                "epochs to 0.99": d["epochs_to_099"],
                "log-loss": d["log_loss"],
            }
    frame = pd.DataFrame(rows).T
    if len(frame):
        frame.index.names = ["generator", shown]
    return frame


def depth_bands_frame(check: dict) -> pd.DataFrame:
    """The domain classifier shown one third of the frame's height at a time: per generator (and
    the other real source) and band its held-out AUC after the last and after the first epoch,
    and its log-loss (empty for a check recorded without bands)."""
    return _views_frame(check, "by_depth", DEPTH_BAND_LABELS, "shown only")


def scale_views_frame(check: dict) -> pd.DataFrame:
    """The domain classifier shown one scale of the frame (:data:`SCALE_VIEWS`): the same
    columns as :func:`depth_bands_frame` (empty for a check recorded without them)."""
    return _views_frame(check, "by_scale", SCALE_VIEWS, "shown")


def check_caption(check: dict) -> str:
    """Where the recorded check ran, on what, with what budget."""
    p, real, env = check["params"], check["real"], check.get("environment", {})
    per_seed = any(g["sim_to_real"].get("phantom_per_seed") for g in check["generators"].values())
    draws = ", each on its own phantom draw," if per_seed and p.get("seg_seeds", 1) > 1 else ""
    if p.get("labels") == "central":
        draws += " labelled as the real annotators label (the space beneath the probe's centre and "
        draws += "its two ribs)"
    return (
        f"Recorded by `{check.get('command', 'lus phantom-check')}` "
        f"({p['profile']} profile: {p['size']} px, {p['train_videos']} phantom videos of "
        f"{p['frames_per_video']} frames, {p['seg_epochs']} epochs, "
        f"{p.get('seg_seeds', 1)} seed(s) of the U-Net trained on phantom frames{draws} and "
        f"one per fold of the ceiling's; domain classifier "
        f"{p['domain_epochs']} epochs, {p['folds']} folds by clip or video"
        + (f", {p['domain_seeds']} seeds" if p.get("domain_seeds", 1) > 1 else "")
        + ") on "
        f"{real['frames']} real frames of {real['clips']} clips, {p['device']}, "
        f"{env.get('date', '?')[:10]}, {check['seconds']:.0f} s. Statistics at "
        f"{p['stats_size']} px on as many phantom frames (healthy, convex) as real ones."
    )


def _rib_widths_text(check: dict, g: str) -> str:
    """How wide a generator of a check draws its ribs (as recorded; checks before version 10
    did not record it, when every generator drew them 10-14 mm wide)."""
    lo, hi = check["generators"][g].get("rib_width_mm", (10.0, 14.0))
    return f"`{g}` draws ribs {lo:g}-{hi:g} mm wide"


def auc_text(domain: dict) -> str:
    """A domain AUC as the chapter writes it: three decimals, four where three would round a
    value short of 1 up to 1.000."""
    auc = domain["auc"]
    return f"{auc:.4f}" if 0.9995 <= auc < 1 else f"{auc:.3f}"


def spread_text(domain: dict) -> str:
    """What a domain AUC is the mean of: each classifier seed's AUC (several seeds) or each
    fold's."""
    if domain.get("seeds", 1) > 1:
        each = ", ".join(auc_text({"auc": a}) for a in domain["auc_seeds"])
        return f"mean of {domain['seeds']} classifier seeds: {each}"
    return f"folds: {', '.join(f'{a:.2f}' for a in domain['auc_folds'])}"


def findings(check: dict) -> list[str]:
    """The chapter's sentences, every number from the recorded check."""
    structures = check["params"]["structures"]
    gens = list(check["generators"])
    out = []

    def dice(g, s):
        return check["generators"][g]["sim_to_real"][s]["dice"]

    def seeds(g, s):  # each U-Net seed's Dice, when there were several
        sim = check["generators"][g]["sim_to_real"]
        d = sim[s].get("dice_seeds", [])
        what = "seeds, each on its own phantom draw" if sim.get("phantom_per_seed") else "seeds"
        return f" ({what}: {', '.join(f'{x:.3f}' for x in d)})" if len(d) > 1 else ""

    def overlap(s, best):  # whether the seeds' ranges leave the best generator's lead unsettled
        span = {g: check["generators"][g]["sim_to_real"][s].get("dice_seeds", []) for g in gens}
        if len(span[best]) < 2:
            return ""
        rivals = [g for g in gens if g != best and len(span[g]) > 1
                  and max(span[g]) >= min(span[best])]  # fmt: skip
        if not rivals:
            return ""
        ranges = ", ".join(f"`{g}` {min(span[g]):.3f}-{max(span[g]):.3f}" for g in [best, *rivals])
        return (f" The seeds' ranges overlap ({ranges}): {len(span[best])} seeds do not settle "
                "which generator transfers better.")  # fmt: skip

    folds = check["ceiling"].get("folds", check["params"]["folds"])
    for s in structures:
        ceiling = check["ceiling"][s]["dice"]
        parts = ", ".join(f"{dice(g, s):.3f} with `{g}`{seeds(g, s)}" for g in gens)
        best = max(gens, key=lambda g: dice(g, s))
        out.append(
            f"**{STRUCTURE_LABELS[s].capitalize()}.** Trained on phantom frames only, the U-Net "
            f"scores a Dice of {parts} on the real frames; trained on real clips and scored on "
            f"the others, the same network and number of steps reaches {ceiling:.3f}. The best "
            + (f"phantom (`{best}`) reaches {dice(best, s) / ceiling:.0%} of that ceiling."
               if ceiling > 0 else "phantom cannot be compared with a ceiling of 0.")
            + (f" The ceiling is no upper bound: it learns from {folds - 1} of {folds} folds of "
               f"the {check['real']['clips']} real clips, in as many steps."
               if 0 < ceiling < dice(best, s) else "")
            + overlap(s, best)
        )  # fmt: skip
    layouts = {"the real masks": check["real"].get("shadow_layout")}
    layouts.update({f"`{g}`'s labels": check["generators"][g].get("shadow_layout") for g in gens})
    if all(layouts.values()):

        def layout_text(name, x):
            if x["gap_px"] is None:
                return f"{name} {x['per_frame']:.2f} per frame"
            return (f"{name} {x['per_frame']:.2f} per frame, {x['width_share']:.0%} of the "
                    f"frame's width wide and {x['gap_share']:.0%} apart")  # fmt: skip

        size = check["params"]["size"]
        row = layouts["the real masks"]["row"]
        out.append(
            f"**Where the ribs lie.** {row / size:.0%} of the way down the frames (medians of the "
            "shadows the fan holds whole, centre to centre between neighbours), the rib shadows "
            "of " + "; ".join(layout_text(n, x) for n, x in layouts.items())
            + ". Measured on the masks, not fitted to them: "
            + "; ".join(_rib_widths_text(check, g) for g in gens)
            + ", all with gaps of 14-24 mm; the first generator lays them out on the arc of the "
            "probe's face, which widens them and their gaps 1.3-1.7 times in angle at their "
            "depth, the calibrated one (since version 8) along the pleura, where they are."
        )  # fmt: skip
    dom = {g: check["generators"][g]["domain"] for g in gens}
    first = {g: dom[g]["auc_by_epoch"][0] for g in gens}
    out.append(
        "**Domain classifier.** Held out by clip, the small CNN tells phantom from real frames "
        "with an AUC of "
        + ", ".join(f"{auc_text(dom[g])} for `{g}` ({spread_text(dom[g])})" for g in gens)
        + " after its last epoch"
        + (
            ": 0.5 would mean it cannot tell them apart, and no generator is there. "
            if min(d["auc"] for d in dom.values()) > 0.6
            else ". "
        )
        + "How fast it learns the difference "
        + (
            "still separates them"
            if np.ptp(list(first.values())) > 0.02
            else "does not separate them"
        )
        + ": after one epoch its AUC is "
        + ", ".join(f"{first[g]:.3f} for `{g}`" for g in gens)
        + "; it first reaches 0.99 after "
        + ", ".join(
            f"{dom[g]['epochs_to_099']} epoch(s) for `{g}`"
            if dom[g]["epochs_to_099"]
            else f"no epoch of {len(dom[g]['auc_by_epoch'])} for `{g}`"
            for g in gens
        )
        + "; its held-out cross-entropy (higher: worse; a sure wrong answer costs most) is "
        + ", ".join(f"{dom[g]['log_loss']:.4f} for `{g}`" for g in gens)
        + "."
    )
    other = check.get("other_real", {})
    if "domain" in other:
        o = other["domain"]
        out.append(
            f"**Two real sources.** The same classifier, budget and folds tell {other['clips']} "
            f"healthy convex clips of POCUS ({other['frames']} frames: other scanners, other "
            f"people) from the real frames with an AUC of {auc_text(o)} after its last epoch and "
            f"{o['auc_by_epoch'][0]:.3f} after one, a log-loss of {o['log_loss']:.4f}. "
            + ("An AUC near 1 at this budget therefore says 'not this scanner and volunteer' "
               "more than 'not real'. " if o["auc"] > 0.95 else "")
            + "Against that reference: "
            + "; ".join(
                f"`{g}` scores {first[g]:.3f} after one epoch and a log-loss of "
                f"{dom[g]['log_loss']:.4f} ({dom[g]['log_loss'] / max(o['log_loss'], 1e-9):.0%} "
                f"of the real source's)"
                for g in gens
            )
            + "."
        )  # fmt: skip
    same = check.get("same_source")
    if same:
        n = same["domain"]
        near, some = abs(n["auc"] - 0.5) < 0.1, n["auc"] < 0.9
        out.append(
            f"**One source, two halves.** The same classifier, budget and folds tell the real "
            f"set's halves apart ({same['split']}: {same['clips'][0]} and {same['clips'][1]} "
            f"clips of the same volunteer and probe) with an AUC of {auc_text(n)} "
            f"({spread_text(n)}) and a log-loss of "
            f"{n['log_loss']:.4f}"
            + (": it does not see a difference where there is none to see, so an AUC near 1 "
               "is something the frames show, not something it learns from any two sets of clips."
               if near else
               ": above 0.5, so the two halves differ to it somewhat (the two sides of one chest "
               "are not the same scenes), yet far below 1, so an AUC near 1 is something the "
               "frames show, not something it learns from any two sets of clips."
               if some else
               ": even two halves of one source differ to it, so its AUCs above are upper "
               "bounds of what the frames give away.")
        )  # fmt: skip
    dom = _domains(check)  # with the other real source, where it ran
    banded = [g for g in dom if dom[g].get("by_depth")]
    if banded:

        def band_text(g):
            bands = dom[g]["by_depth"]
            return f"for `{g}` " + ", ".join(
                f"{DEPTH_BAND_LABELS.get(b, b)} {d['auc']:.3f} ({d['auc_by_epoch'][0]:.3f} after "
                f"one epoch)" for b, d in bands.items()
            )  # fmt: skip

        def hardest(g):  # the band learnt slowest: lowest mean held-out AUC over the epochs
            bands = dom[g]["by_depth"]
            return min(bands, key=lambda b: np.mean(bands[b]["auc_by_epoch"]))

        out.append(
            "**Where it tells.** Shown only one third of the frame's height (black elsewhere), "
            "the same classifier reaches " + "; ".join(band_text(g) for g in banded) + ". "
            + " ".join(
                f"For `{g}` the band it learns slowest (where the two look most alike) is the "
                f"{DEPTH_BAND_LABELS.get(hardest(g), hardest(g))}."
                if np.mean(dom[g]["by_depth"][hardest(g)]["auc_by_epoch"]) < 0.999
                else f"For `{g}` it learns every band at once."
                for g in banded
            )
        )  # fmt: skip
    scaled = [g for g in dom if dom[g].get("by_scale")]
    if scaled:

        def scale_text(view):
            return ", ".join(
                f"{dom[g]['by_scale'][view]['auc']:.3f} for `{g}` "
                f"({dom[g]['by_scale'][view]['auc_by_epoch'][0]:.3f} after one epoch, log-loss "
                f"{dom[g]['by_scale'][view]['log_loss']:.3f})"
                for g in scaled
            )

        sure_wrong = [  # ranks right, yet sure on the wrong side of p = 0.5 for many frames
            f"`{g}` {v}" for g in scaled for v, d in dom[g]["by_scale"].items()
            if d["log_loss"] > 1 and d["auc"] >= 0.99
        ]  # fmt: skip
        out.append(
            "**Layout or texture.** Shown only the layout (a 16 x 16 grid of block means, the "
            f"fan's outline included), the classifier reaches {scale_text('coarse')}; shown only "
            f"the fine texture (the frame less its blur, inside the common fan), "
            f"{scale_text('fine')}."
            + (f" Where a log-loss above 1 sits beside an AUC of 0.99 or more "
               f"({', '.join(sure_wrong)}), the classifier ranks the held-out frames right but "
               "is sure of many of them on the wrong side of p = 0.5."
               if sure_wrong else "")
        )  # fmt: skip
    z = {g: check["generators"][g]["distances"]["mean_abs_z"] for g in gens}
    w1 = {g: check["generators"][g]["distances"]["histogram_w1"] for g in gens}
    out.append(
        "**Appearance.** The statistics differ from the real frames' by "
        + ", ".join(f"{z[g]:.2f} standard deviations on average for `{g}`" for g in gens)
        + "; the grey-level histograms are "
        + ", ".join(f"{w1[g]:.3f} apart for `{g}`" for g in gens)
        + " (Wasserstein-1, grey levels of [0, 1])."
    )
    return out


def calibration_frame(record: dict) -> pd.DataFrame:
    """The fitted appearance: each changed parameter's first-generator and calibrated value, and
    the range it was searched in."""
    from lus_common.phantoms.appearance import V1
    from lus_common.phantoms.calibration import SEARCH

    rows = []
    for name, value in record["appearance"].items():
        r = SEARCH.get(name)
        searched = "" if r is None else f"{r.lo:g} to {r.hi:g}" + (" (log)" if r.log else "")
        rows.append({"parameter": name, "v1": getattr(V1, name), "calibrated": value,
                     "searched": searched or "set (not fitted)"})  # fmt: skip
    return pd.DataFrame(rows).set_index("parameter")


REFERENCE_CHECK = (
    Path(__file__).resolve().parents[2]
    / "book"
    / "reference_runs"
    / "phantom_check_lus_pleura_rib.json"
)


def side_by_side(
    size: int = 256, seed: int = 0, n: int = 3, real_dir=None
) -> tuple[list, list, bool]:
    """Frames for the chapter's comparison: ``n`` healthy convex frames of each generator and,
    when the real folder is there, ``n`` real frames of different clips at the same size.

    Returns:
        ``(panels, titles, real_shown)``; rows of ``n``: ``v1``, ``calibrated``, then real.
    """
    from lus_common.config.paths import data_dir
    from lus_common.data.lus_pleura_rib import load_lus_pleura_rib
    from lus_common.phantoms.lung import lung_ultrasound_phantom

    panels, titles = [], []
    for g in ("v1", "calibrated"):
        d = lung_ultrasound_phantom(n, n_patients=n, frames_per_video=1, image_size=size,
                                    probe="convex", diagnoses="healthy", seed=seed,
                                    appearance=g)  # fmt: skip
        panels += list(d.images)
        titles += [f"SYNTHETIC phantom, {g}"] * n
    root = Path(real_dir) if real_dir else data_dir() / "lus_pleura_rib"  # shown when present
    stems = sorted(p.stem for p in (root / "image").glob("*-V-frame0.jpg")) if root.is_dir() else []
    if stems:
        pick = [stems[int(i)] for i in np.linspace(0, len(stems) - 1, n)]
        real = load_lus_pleura_rib(root, image_size=size, only=pick)
        panels += list(real.images)
        titles += [f"REAL lus_pleura_rib {s}" for s in real.ids]
    return panels, titles, bool(stems)


def calibration_caption(record: dict) -> str:
    """How the calibration record was made, and its objective before and after."""
    start = record.get("start_from")
    refined = (
        f", refining the fit of {str(start['date'])[:10]} (`{start['command']}`), whose values "
        f"score {record['objective']['start']:.2f} under today's statistics"
        if start and record["objective"].get("start") is not None
        else ""
    )
    return (
        f"Fitted by `{record['command']}` in {record['seconds']:.0f} s ({record['evaluations']} "
        f"evaluations, {record['environment']['date'][:10]}{refined}) on {record['frames']} real "
        f"frames at {record['image_size']} px: objective {record['objective']['v1']:.1f} for the "
        f"first generator, {record['objective']['calibrated']:.2f} calibrated; the fan's overlap "
        f"with the real sector {record['sector']['iou']:.3f} (intersection over union)."
    )

"""Fit the lung phantom's appearance to real frames: ``lus phantom-calibrate --real <folder>``.

What is fitted is appearance only, never a label: the statistics of
:mod:`lus_common.phantoms.realism` (grey levels, speckle, depth profile, layer depth, sector,
shadows, A-lines), computed from the pixels of real frames and of phantom frames in the same way.

1. **Sector geometry.** The real frames' fan (:func:`~lus_common.phantoms.realism.sector_masks`,
   over all frames) against the fans that :func:`~lus_common.phantoms.bmode.sector_geometry`
   draws when the fan fills the frame: the ratio of probe radius to depth and the opening angle
   with the largest intersection over union, on a grid. The phantom's fans vary by +-0.01 and
   +-0.5 degrees around them: one device, as the real frames come from one.
2. **Rib width** (:func:`fit_rib_width`): the ribs' half-width (on a grid, from the start
   values' appearance) whose shadows are as wide as the real frames' (``shadow_width``, whole
   dark runs in the deep lung's lateral brightness: pixels, not masks).
3. **Everything else** (:data:`SEARCH`): pulse length, beam width, gain, dynamic range, grey map,
   speckle reduction (its width, and the share of the grain it removes near the probe and
   deep), the fan's edge fall-off, tissue texture and brightness, the lung's reverberation haze,
   its fall-off and its streaks, A-line brightness, how much it dims per video and how much each
   A-line widens, the rib's brightness, bone transmission, shadow edges and chest-wall
   thickness, the pleural line's brightness along its length, the muscle's bright fibres,
   the fat's brightness, the rib's height above the pleura and the pleura's specular lobe
   (how far from square on its line and echoes dim, and what the line keeps), the chest
   wall's anisotropy (the same for the whole wall's echo) and the rib cortex's specular lobe
   (the same for the bone's oval surface), each in a stated range; the pleura lies
   on a plane beneath a convex probe, and the wall's layers bend from the probe's face to it
   (fixed). The objective (:func:`objective`) is the mean squared standardised difference of
   the statistics
   (each capped at 10) plus the histogram and depth-profile distances in stated units. A Sobol
   sample of the ranges, then Powell's method from the best point, both on the same phantom
   frames (48 videos of two frames, one seed: common random numbers, so two candidates differ by
   their parameters alone).

The result is written to ``calibration.json`` beside this module (the fitted values, the
statistics before and after, the real data's fingerprint and the command), which the
``"calibrated"`` appearance reads (:mod:`lus_common.phantoms.appearance`).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from lus_common.phantoms import bmode, realism
from lus_common.phantoms.appearance import CALIBRATED_VERSION, CALIBRATION_FILE, V1, Appearance


@dataclass(frozen=True)
class Range:
    """A fitted parameter: searched in ``[lo, hi]`` (on a log scale when ``log``); drawn per video
    as ``value +- half`` when ``half`` (a range parameter of :class:`Appearance`)."""

    lo: float
    hi: float
    log: bool = False
    half: float = 0.0

    def value(self, u: float) -> float:
        """The parameter at ``u`` in [0, 1]."""
        u = float(np.clip(u, 0, 1))
        if self.log:
            return float(np.exp(np.log(self.lo) + u * (np.log(self.hi) - np.log(self.lo))))
        return self.lo + u * (self.hi - self.lo)

    def unit(self, value: float) -> float:
        """Inverse of :meth:`value`."""
        if self.log:
            return float((np.log(value) - np.log(self.lo)) / (np.log(self.hi) - np.log(self.lo)))
        return (value - self.lo) / (self.hi - self.lo)


SEARCH = {
    # searched first (Powell's method takes the directions in this order): the newest parameters
    # the rib cortex's specular lobe (degrees) and what its flanks keep
    "rib_specular_deg": Range(3.0, 40.0, log=True),
    "rib_specular_floor": Range(0.02, 1.0, log=True),
    # the probe's face: the coupling gel and lens above the skin (mm), and the skin's entry line
    "gel_mm": Range(0.0, 2.0),
    "skin_gain": Range(0.3, 10.0, log=True),
    # the chest wall's anisotropy: what it keeps where met obliquely (first: at the first
    # generator's 1 the lobe's width does nothing) and the lobe's width (degrees)
    "wall_specular_floor": Range(0.01, 1.0, log=True),
    "wall_specular_deg": Range(3.0, 40.0, log=True),
    # the pleura's specular lobe (degrees from square on) and what its line keeps off the lobe
    "specular_deg": Range(2.0, 40.0, log=True),
    "specular_floor": Range(0.05, 1.0, log=True),
    # a rib is about 1 cm deep and the pleura lies near its deep surface
    "rib_above_mm": Range(2.0, 10.0, half=1.5),
    "pleura_variation": Range(0.0, 1.5),
    "pleura_variation_mm": Range(0.5, 8.0),
    "wall_fibres": Range(0.0, 60.0),
    "fibre_share": Range(0.01, 0.3, log=True),
    "fat_gain": Range(0.03, 3.0, log=True),
    "pit_fill": Range(0.0, 1.0),
    "specks": Range(0.0, 30.0),
    "speck_density": Range(0.05, 3.0, log=True),
    "aline_fade": Range(0.01, 1.0, log=True),
    "smoothing_share_top": Range(0.0, 1.0),
    "smoothing_share_bottom": Range(0.0, 1.0),
    "lung_texture": Range(0.0, 1.5),
    # an A-line widens by about a pulse length per round trip at most
    "aline_spread_mm": Range(0.0, 0.5),
    "axial_scale": Range(0.08, 1.5),
    "lateral_mm_convex": Range(0.2, 1.5),
    "dynamic_range_db": Range(30.0, 75.0, half=4.0),
    "gain_db": Range(-18.0, 6.0, half=2.5),
    "gamma": Range(0.6, 2.2),
    "grey_floor": Range(0.0, 0.08),
    "edge_falloff_db": Range(0.0, 12.0),
    "texture": Range(0.0, 1.5),
    "lung_haze": Range(1e-3, 0.3, log=True),
    "haze_decay_mm": Range(3.0, 60.0),
    # A-lines stay visible (a labelled class of studies 1 and 5; the physics check finds them)
    "aline_gain": Range(0.05, 1.0, log=True),
    # rib shadows stay darker than the lung beside them: bone passes at most -20 dB two-way
    # (a fit up to 0.5 filled them in, brighter than the dark lung beside: 1.4x)
    "rib_transmission": Range(3e-3, 0.1, log=True),
    "shadow_edge_mm": Range(0.3, 6.0),
    "shadow_spread": Range(0.0, 0.2),
    # skin to pleura, per patient: about 1-2.5 cm in adults at the intercostal spaces (a wider range
    # let the first fit make a thick bright wall stand in for the lung's haze)
    "chest_wall_mm": Range(11.0, 24.0, half=4.0),
    "wall_gain": Range(0.5, 10.0, log=True),
    "rib_echo": Range(0.1, 3.0, log=True),
    "smoothing_px": Range(0.0, 1.5),
    "smoothing_deep_px": Range(0.0, 6.0),
}
# What the statistics showed missing, switched on, and the convex probe's depth and frequency
# (the fitted pulse and beam are in millimetres; their size in pixels follows from the depth).
FIXED = dict(
    baseband=True,
    # the pleura a plane beneath a convex probe (the chest's curvature is far wider than the
    # probe's), tilted by up to 5 degrees from square on (a hand-held probe): seen side by side
    # with real frames, not fitted (no statistic measures the line's shape across the fan)
    pleura_flatness=1.0,
    pleura_tilt_deg=5.0,
    # the chest wall's layers go from the arc of the probe's face at the skin to the pleura's
    # plane (real frames' fascia lie flat beneath the middle of the fan; not fitted either)
    wall_flatness=1.0,
    # the ribs' width (fitted to their shadows) and gaps of 14-24 mm measured where they are, on
    # the pleura's plane, not on the probe's face (physics, not fitted: on the face they were
    # 1.3-1.7x too wide in angle)
    ribs_along_pleura=True,
    fill_frame=True,
    min_axial_px=0.3,
    min_sigma_px=0.5,
    muscle_fascia=(1, 4),
    convex_depth_mm=(85.0, 105.0),
    convex_freq_mhz=(2.5, 4.5),
    render_size=256,
    # a linear probe's depth set to show the lung beneath the fitted (thicker) chest wall, with
    # its second and third A-lines (v1's 40-60 mm showed one beneath a 26 mm wall)
    linear_depth_mm=(65.0, 95.0),
)
# Units of the distances in the objective: a histogram 0.01 apart (Wasserstein-1, grey levels
# of [0, 1]) or depth profiles 0.02 apart (RMS) count as much as one standard deviation.
HISTOGRAM_UNIT, PROFILE_UNIT, Z_CAP = 0.01, 0.02, 10.0


def fit_sector(inside: np.ndarray, size: int) -> dict:
    """The fan that fills the frame and best matches the real frames' sector mask.

    Args:
        inside: (H, W) bool, the real sector (e.g. the mean of
            :func:`~lus_common.phantoms.realism.sector_masks` over the frames, above one half).
        size: the frames' side.

    Returns:
        dict with ``radius_over_depth``, ``angle_deg`` and ``iou``.
    """
    best = (-1.0, 0.0, 0.0)
    for ratio in np.linspace(0.2, 0.8, 31):
        for angle in np.linspace(40, 90, 51):
            g = bmode.sector_geometry(size, 50 * ratio, 50, angle, fill=True)
            iou = (g["inside"] & inside).sum() / max((g["inside"] | inside).sum(), 1)
            best = max(best, (float(iou), float(ratio), float(angle)))
    return {"iou": best[0], "radius_over_depth": best[1], "angle_deg": best[2]}


# The ribs' half-widths tried (mm, the middle of each video's range of +-RIB_HALF_SPREAD)
RIB_HALF_GRID = tuple(np.arange(4.0, 12.01, 0.5).round(1))
RIB_HALF_SPREAD = 1.25


def fit_rib_width(
    appearance: Appearance, real_width: float, size: int, seed: int = 0, grid=RIB_HALF_GRID
) -> dict:
    """The ribs' width whose shadows are as wide as the real frames', from the pixels alone.

    For each half-width of ``grid`` (each video's drawn within ``+-RIB_HALF_SPREAD`` mm of it),
    the mean ``shadow_width`` (:func:`~lus_common.phantoms.realism._shadow_width`: whole dark
    runs in the deep lung's lateral profile) of :func:`phantom_frames` of ``appearance`` with
    it; the one nearest ``real_width`` is kept.

    Returns:
        dict with ``rib_half_mm`` (the range), ``real`` (``real_width``), ``phantom`` (the kept
        one's width) and ``grid`` (``[half-width, mean width]`` per point).
    """
    tried = []
    for half in grid:
        a = replace(appearance, rib_half_mm=(half - RIB_HALF_SPREAD, half + RIB_HALF_SPREAD))
        table, _ = realism.frame_statistics(*phantom_frames(a, size, seed=seed))
        tried.append([float(half), float(table["shadow_width"].mean())])
    widths = np.array([w for _, w in tried])
    k = int(np.nanargmin(np.abs(widths - real_width)))
    half = tried[k][0]
    return {"rib_half_mm": [half - RIB_HALF_SPREAD, half + RIB_HALF_SPREAD],
            "real": float(real_width), "phantom": tried[k][1], "grid": tried}  # fmt: skip


def appearance_from(
    units: dict, sector: dict, base: Appearance = V1, ribs: dict | None = None
) -> Appearance:
    """The appearance of fitted unit values (one per :data:`SEARCH` entry), a sector fit and a
    rib width fit (:func:`fit_rib_width`; without it, ``base``'s ribs)."""
    values = {}
    for name, r in SEARCH.items():
        v = r.value(units[name])
        values[name] = (v - r.half, v + r.half) if r.half else v
    ratio, angle = sector["radius_over_depth"], sector["angle_deg"]
    return replace(
        base,
        name="calibrated",
        version=CALIBRATED_VERSION,
        **FIXED,
        **values,
        convex_radius_ratio=(ratio - 0.01, ratio + 0.01),
        convex_angle_deg=(angle - 0.5, angle + 0.5),
        **({"rib_half_mm": tuple(ribs["rib_half_mm"])} if ribs else {}),
    )


def _v1_unit(name: str) -> float:
    """The first generator's value of a searched parameter in unit coordinates (0.5 if it has
    none, or it lies outside the range)."""
    value, r = getattr(V1, name), SEARCH[name]
    value = np.mean(value) if isinstance(value, (tuple, list)) else value
    if value is None or not r.lo <= value <= r.hi:
        return 0.5
    return float(np.clip(r.unit(value), 0, 1))


def units_of(values: dict) -> dict:
    """Unit coordinates of appearance values (a record's ``appearance``; a range's middle for a
    range), clipped into today's :data:`SEARCH` ranges; a parameter the values lack takes the
    first generator's (:func:`_v1_unit`). So an earlier fit can start a refit after the
    ranges, or the parameters, have changed."""
    units = {}
    for name, r in SEARCH.items():
        if name not in values:
            units[name] = _v1_unit(name)
            continue
        v = values[name]
        v = float(np.mean(v)) if isinstance(v, (tuple, list)) else float(v)
        units[name] = float(np.clip(r.unit(float(np.clip(v, r.lo, r.hi))), 0, 1))
    return units


def start_values(pairs) -> dict:
    """Start values for a refit from ``(name, value)`` strings (``lus phantom-calibrate --start``):
    each a parameter of :data:`SEARCH`, a number inside its range, named once.

    Raises:
        ValueError: an unknown name, one named twice, a value that is not a number, or one
            outside the range.
    """
    out = {}
    for name, text in pairs:
        if name in out:
            raise ValueError(f"--start {name}: given twice")
        if name not in SEARCH:
            raise ValueError(
                f"--start {name}: not a searched parameter; one of: {', '.join(SEARCH)}"
            )
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"--start {name} {text!r}: not a number") from None
        r = SEARCH[name]
        if not r.lo <= value <= r.hi:
            raise ValueError(f"--start {name} {value:g}: outside its range [{r.lo:g}, {r.hi:g}]")
        out[name] = value
    return out


def phantom_frames(appearance: Appearance, size: int, n_videos: int = 48, frames: int = 2, seed=0):
    """Healthy convex-probe phantom frames (the real set is one healthy volunteer) and videos.

    Many short videos rather than a few long ones: gain, display range, chest wall and ribs are
    drawn per video, and a fit on few draws fits those draws (24 videos of 4 frames: an objective
    of 1.8 on the fitted seed, 2.5-3.9 on two others)."""
    d = realism.healthy_convex_phantom(appearance, n_videos, frames, size, seed)
    return d.images, list(d.meta["video"])


def objective(phantom: dict, real: dict) -> tuple[float, dict]:
    """The distance the fit minimises, and its parts.

    ``mean(min(z^2, 100))`` over the statistics of :data:`realism.STATISTICS` (100 for one
    that cannot be measured on the phantom frames), plus the
    histogram's Wasserstein-1 and the depth profiles' RMS difference, each in its unit squared.
    """
    table, distances = realism.compare_statistics(phantom, real)
    # a statistic the phantom frames do not have (NaN) counts as far off as the cap
    z2 = float(np.mean(np.minimum(np.nan_to_num(table["z"].to_numpy() ** 2, nan=Z_CAP**2),
                                  Z_CAP**2)))  # fmt: skip
    value = (
        z2
        + (distances["histogram_w1"] / HISTOGRAM_UNIT) ** 2
        + (distances["profile_rms"] / PROFILE_UNIT) ** 2
    )
    return value, {"mean_z2": z2, **distances}


def objectives_by_size(frames: tuple, real: dict, smaller: dict) -> dict:
    """:func:`objective` of phantom ``(images, groups)`` against ``real`` (a summary, key
    ``"main"``) and at each size of ``smaller`` (``{size: real summary}``, key ``str(size)``),
    the images resized to it as the generator resizes small images."""
    images, groups = frames
    return {"main": objective(realism.summarise(images, groups), real)[0],
            **_smaller_objectives(images, groups, smaller)}  # fmt: skip


def _smaller_objectives(images: np.ndarray, groups, smaller: dict) -> dict:
    """:func:`objectives_by_size` at the sizes of ``smaller`` alone."""
    out = {}
    for n, summary in smaller.items():
        small = np.rint(bmode.display_resize(images * 255, n)) / 255
        out[str(n)] = objective(realism.summarise(small, groups), summary)[0]
    return out


def calibrate(
    real_images: np.ndarray,
    real_groups,
    n_sobol: int = 64,
    max_evaluations: int = 400,
    seed: int = 0,
    progress: bool = True,
    start: dict | None = None,
    also: dict | None = None,
) -> dict:
    """Fit the calibrated appearance to real frames (see the module docstring).

    Args:
        real_images: (N, S, S) real convex-probe frames in [0, 1].
        real_groups: clip per frame.
        n_sobol: points of the initial Sobol sample (a power of 2; 0: none, e.g. when
            refining from ``start``).
        max_evaluations: function evaluations of Powell's method after it.
        seed: the Sobol scramble and the phantom frames' seed.
        progress: print the best objective as it improves.
        start: appearance values of an earlier fit (its record's ``appearance``), tried before
            the Sobol points so that a refit starts no worse than it (:func:`units_of`: clipped
            into today's ranges; a parameter it lacks starts at the first generator's value, or
            the middle of its range).
        also: ``{size: (images, groups)}``, the real frames at smaller display sizes (the size
            the networks see): the objective is then the mean of its value at ``real_images``'
            size and at each of these, the phantom frames resized to them as the generator
            resizes small images (:func:`~lus_common.phantoms.bmode.display_resize`).

    Returns:
        The record written by :func:`write_record`: ``appearance`` (the fitted values),
        ``units``, ``sector``, ``ribs`` (:func:`fit_rib_width`), ``objective`` before (``v1``)
        and after (``calibrated``) at the frames' own size, where the search started (``start``,
        the searched objective) and, with ``also``, the searched objective after (``searched``,
        the mean over the sizes) and each size's (``by_size``), and the statistics.
    """
    from scipy.optimize import minimize
    from scipy.stats import qmc

    t0 = time.perf_counter()
    size = real_images.shape[-1]
    real = realism.summarise(real_images, real_groups)
    smaller = {int(k): realism.summarise(*v) for k, v in (also or {}).items()}
    inside = realism.sector_masks(real_images, real_groups).mean(0) > 0.5
    sector = fit_sector(inside, size)
    names = list(SEARCH)
    first = units_of(start) if start is not None else {n: _v1_unit(n) for n in names}
    ribs = fit_rib_width(appearance_from(first, sector), real["mean"]["shadow_width"], size, seed)
    if progress:
        print(f"ribs: {ribs['rib_half_mm'][0]:.2f}-{ribs['rib_half_mm'][1]:.2f} mm half-width, "
              f"shadows {ribs['phantom']:.3f} of the width (real {ribs['real']:.3f})",
              file=sys.stderr, flush=True)  # fmt: skip
    cache: dict[tuple, float] = {}
    best = {"value": np.inf, "units": None}

    def evaluate(u: np.ndarray) -> float:
        key = tuple(np.round(np.clip(u, 0, 1), 6))
        if key not in cache:
            a = appearance_from(dict(zip(names, key)), sector, ribs=ribs)
            by_size = objectives_by_size(phantom_frames(a, size, seed=seed), real, smaller)
            cache[key] = float(np.mean(list(by_size.values())))
            if cache[key] < best["value"]:
                best.update(value=cache[key], units=np.array(key))
                if progress:
                    print(f"{len(cache):4d} evaluations: objective {cache[key]:.3f}",
                          file=sys.stderr, flush=True)  # fmt: skip
        return cache[key]

    start_value = None
    if start is not None:
        start_value = evaluate(np.array([first[n] for n in names]))
    if n_sobol:
        for u in qmc.Sobol(len(names), seed=seed).random(n_sobol):
            evaluate(u)
    if best["units"] is None:  # neither a start nor a sample: start at the first generator
        evaluate(np.array([_v1_unit(n) for n in names]))
    minimize(
        evaluate,
        best["units"],
        method="Powell",
        bounds=[(0, 1)] * len(names),
        options={"maxfev": max_evaluations, "xtol": 1e-3, "ftol": 1e-4},
    )
    units = dict(zip(names, best["units"].tolist()))
    fitted = appearance_from(units, sector, ribs=ribs)
    before = objective(realism.summarise(*phantom_frames(V1, size, seed=seed)), real)
    frames = phantom_frames(fitted, size, seed=seed)
    after = objective(realism.summarise(*frames), real)
    by_size = {str(size): after[0], **_smaller_objectives(*frames, smaller)}
    changed = {
        k: v
        for k, v in fitted.as_dict().items()
        if k not in ("name", "version") and getattr(V1, k) != v
    }
    return {
        "appearance": {k: list(v) if isinstance(v, tuple) else v for k, v in changed.items()},
        "units": units,
        "sector": sector,
        "ribs": ribs,
        "objective": {
            "v1": before[0],
            "start": start_value,
            "calibrated": after[0],
            **(
                {"searched": float(np.mean(list(by_size.values()))), "by_size": by_size}
                if smaller
                else {}
            ),
        },
        "parts": {"v1": before[1], "calibrated": after[1]},
        "evaluations": len(cache),
        "seconds": round(time.perf_counter() - t0, 1),
        "image_size": int(size),
        "frames": int(len(real_images)),
    }


def write_record(record: dict, real_fingerprint: str, command: str, path: Path = CALIBRATION_FILE):
    """Write the calibration record (with the real data's fingerprint and the command) as JSON,
    atomically (the package reads it at import)."""
    from lus_common.store.environment import environment_info
    from lus_common.store.results import write_json

    out = {
        "what": "appearance of the lung phantom fitted to real convex lung ultrasound "
        "(lus_common.phantoms.calibration); the 'calibrated' appearance reads 'appearance'",
        "command": command,
        "real_data": {"fingerprint": real_fingerprint, "frames": record["frames"]},
        **record,
        "environment": environment_info(),
    }
    return write_json(path, out)

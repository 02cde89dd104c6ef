"""Lung ultrasound B-mode phantom: anatomy, artifacts, videos and labels (papers 1, 2 and 5).

Every frame is formed by :mod:`.bmode` from an echogenicity map and a transmission map drawn in
beam space (rows = depth along the beam, columns = scan lines), for a linear probe (rectangular
image) or a convex probe (sector, scan-converted). The maps hold:

- **Chest wall**: skin, subcutaneous fat with thin septa, a fascia line, intercostal muscle.
- **Ribs**: a bright curved cortical surface (calibrated: specular, so mostly its top shows);
  bone passes about 0.1 % of the echo amplitude, so everything beneath it lies in a posterior
  acoustic shadow to the bottom of the image.
- **Pleural line**: a bright line about 0.5-0.8 mm thick a few millimetres below the rib surface;
  thickened, irregular and fragmented where the lung beneath is diseased.
- **A-lines**: reverberations between the transducer and the pleura (air reflects almost all of
  the beam), so they repeat the pleural line at integer multiples of its depth (2p, 3p, ...), each
  repeat weaker by a reflection factor, until they sink below the lung's background.
- **B-lines**: vertical hyperechoic ring-down bands from the pleura to the bottom of the image that
  do not fade with depth, and that erase the A-lines where they cross them.
- **Consolidations**: tissue-like (hepatised) hypoechoic regions under an irregular pleura, with
  an irregular deep border and bright air bronchograms.

**Raw linear-probe frames.** ``beam_shape=(960, 128)`` and ``frequency_mhz=5.2`` give paper 2's
Verasonics frames (depth samples x elements) unresized, at a fixed frequency.

**Videos.** Frames of one video share the anatomy and most of the speckle. The chest wall and ribs
move with small probe jitter; the pleura and all lung artifacts beneath it slide laterally as the
lung breathes (lung sliding); a quarter of each frame's speckle is redrawn (out-of-plane motion).
Every frame carries patient, video and frame ids, so splits can be patient- or video-wise.

**Diagnostic classes** (paper 5), drawn per patient, and the rules that generate them:

- ``healthy``: thin smooth pleura (irregularity <= 0.2 mm), A-lines under the whole pleura,
  0-2 isolated B-lines (normal in a healthy lung), no consolidation.
- ``COVID-19``: patchy interstitial disease: 3-10 B-lines, some confluent (wide), with spared
  segments that still show A-lines; pleura over diseased segments thickened (1.2-2.5 mm),
  irregular (0.4-1.2 mm) and fragmented; 0-2 small subpleural consolidations (2-6 mm wide).
- ``pneumonia`` (bacterial or other viral): one large lobar consolidation (16-30 mm wide,
  10-30 mm deep) with air bronchograms; a regular pleura elsewhere, with A-lines; 0-3 focal
  B-lines beside the consolidation.

**Labels**, all from the same maps, none drawn afterwards: binary structure masks (``pleura``,
``ribs``, ``alines``, ``blines``, ``consolidation``; only where the beam reaches, not in shadow;
and ``rib_body``, the whole rib cross-section under the probe, cortex and bone, as paper 2
annotates the rib);
paper 5's dense 7-class map (A-line, B-line, healthy pleural line, unhealthy pleural line, healthy
region, unhealthy region, background) and the sparse 4-class map derived from it exactly as the
paper derives it (:func:`dense_to_sparse`). A pleural segment is *unhealthy* where B-lines or a
consolidation lie beneath it; the region beneath a pleural segment takes its health.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage
from threadpoolctl import threadpool_limits

from lus_common.config.registry import lookup
from lus_common.data.sets import SegmentationSet
from lus_common.phantoms import bmode
from lus_common.phantoms.appearance import (
    DEFAULT_APPEARANCE,
    Appearance,
    resolve_appearance,
)

# "ribs": the bright 1 mm cortex; "rib_body": the whole rib cross-section beneath the probe (its
# cortex and the bone under it, which lies in its own shadow), the rib as paper 2 annotates it.
# "rib_shadow": everything beneath a rib that its bone shades (two-way transmission below one half),
# the rib shadow as real annotations (lus_pleura_rib) draw it.
STRUCTURES = ("pleura", "ribs", "alines", "blines", "consolidation", "rib_body", "rib_shadow")
DENSE_CLASSES = (
    "background",
    "A-line",
    "B-line",
    "healthy pleural line",
    "unhealthy pleural line",
    "healthy region",
    "unhealthy region",
)
SPARSE_CLASSES = ("background", "A-line", "B-line", "pleural line")
DIAGNOSES = ("healthy", "COVID-19", "pneumonia")
PROBES = ("linear", "convex")
TARGETS = STRUCTURES + (
    "artifacts",
)  # "artifacts": pleura, A-lines, B-lines, consolidation (paper 1)
# Paper 5: healthy + unhealthy pleural line -> pleural line; healthy + unhealthy region ->
# background.
DENSE_TO_SPARSE = np.array([0, 1, 2, 3, 3, 0, 0], dtype=np.uint8)
# The images' generator version is the appearance's (appearance.py: v1 is 1, calibrated 2); bump
# it there when the images change, so stored results are not reused.
# the rib's cross-section: 0.9 x its half-width deep (v1's ribs: 10-14 mm wide, 4.5-6.3 mm deep)
_RIB_DEPTH_OVER_HALF_WIDTH = 0.9

_BIT = {name: np.uint8(1 << i) for i, name in enumerate(STRUCTURES)}
# Echogenicity (backscattered power) relative to the healthy pleural line.
_ECHO = {
    "skin": 7e-3,
    "fat": 9e-5,
    "septum": 2e-3,
    "fascia": 7e-3,
    "muscle": 4.5e-4,
    "pleura": 1.0,
    "air": 2e-5,
    "sick_air": 5e-5,
    "bronchogram": 0.1,
}
_NOISE_AMPLITUDE = 10 ** (-105 / 20)  # receiver noise before TGC, relative to the pleura's echo
_FRAME_DECORRELATION = 0.25  # share of speckle amplitude redrawn every frame
# The calibrated generator takes each frame's redrawn share as a window of one wider field, this
# many scan lines on from the previous frame's (several speckle widths: 16 px at 256 against a
# lateral speckle of about 5 px): for a 16-frame video an eighth of the random numbers of a new
# field per frame.
_FRESH_STRIDE = 16


def dense_to_sparse(dense: np.ndarray) -> np.ndarray:
    """Sparse 4-class map from paper 5's dense 7-class map (merge pleura classes, regions to
    background)."""
    return DENSE_TO_SPARSE[dense]


def _smooth_noise(n: int, scale_px: float, rng: np.random.Generator) -> np.ndarray:
    """1-D Gaussian-filtered white noise of unit standard deviation."""
    x = ndimage.gaussian_filter1d(
        rng.standard_normal(n + 8 * int(scale_px) + 8), scale_px, mode="wrap"
    )
    x = x[4 * int(scale_px) + 4 :][:n]
    return (x - x.mean()) / (x.std() + 1e-12)


@dataclass(frozen=True)
class _Draw:
    """A random severity parameter: ``rng.<method>(*args)``, cast to int for counts."""

    method: str
    args: tuple
    cast: type = float

    def __call__(self, rng: np.random.Generator):
        value = getattr(rng, self.method)(*self.args)
        return self.cast(value)


def _uniform(lo: float, hi: float) -> _Draw:
    return _Draw("uniform", (lo, hi))


def _integers(lo: int, hi: int) -> _Draw:
    return _Draw("integers", (lo, hi), int)


def _choice(*values: int) -> _Draw:
    return _Draw("choice", (list(values),), int)


# Per-video disease parameters by the diagnostic rules of the module docstring: a column per
# diagnosis of DIAGNOSES; a value is fixed, or drawn (uniform, integers in [lo, hi), a choice),
# row by row in this order.
# fmt: off
SEVERITY = {
    #                           healthy                 COVID-19             pneumonia
    "n_blines":                (_choice(0, 0, 0, 1, 2), _integers(3, 11),    _integers(0, 4)),
    "wide_blines":             (0,                      _integers(0, 3),     0),
    "pleural_irregularity_mm": (_uniform(0.0, 0.2),     _uniform(0.4, 1.2),  _uniform(0.1, 0.3)),
    "sick_thickness_mm":       (0.8,                    _uniform(1.2, 2.5),  _uniform(1.0, 1.8)),
    "fragmentation":           (0.0,                    _uniform(0.2, 0.5),  _uniform(0.0, 0.2)),
    "consolidations":          (0,                      _choice(0, 0, 1, 2), 1),
    "consolidation_width_mm":  ((0, 0),                 (2.0, 6.0),          (16.0, 30.0)),
    "consolidation_depth_mm":  ((0, 0),                 (2.0, 8.0),          (10.0, 30.0)),
    "bronchograms":            (0,                      1,                   _integers(4, 12)),
}
# fmt: on


def _severity(diagnosis: str, rng: np.random.Generator, overrides: dict) -> dict:
    """Per-video disease parameters drawn from :data:`SEVERITY`, then ``overrides`` (not None)."""
    column = DIAGNOSES.index(lookup(DIAGNOSES, diagnosis, "diagnosis", error=ValueError))
    s = {}
    for name, values in SEVERITY.items():
        value = values[column]
        s[name] = value(rng) if isinstance(value, _Draw) else value
    unknown = set(overrides) - set(s)
    if unknown:
        raise ValueError(f"Unknown severity parameter(s) {sorted(unknown)}. Known: {sorted(s)}")
    s.update({k: v for k, v in overrides.items() if v is not None})
    return s


def _probe(
    size: int, probe: str, rng: np.random.Generator, a: Appearance
) -> tuple[float, float, float, dict | None]:
    """Imaging depth (mm), face width (mm; arc length for a convex probe), frequency (MHz), sector
    geometry."""
    if probe == "linear":
        return (
            rng.uniform(*a.linear_depth_mm),
            rng.uniform(*a.linear_width_mm),
            rng.uniform(*a.linear_freq_mhz),
            None,
        )
    depth_mm, freq = rng.uniform(*a.convex_depth_mm), rng.uniform(*a.convex_freq_mhz)
    ratio = a.convex_radius_ratio  # radius in mm, or as a share of the depth
    radius = rng.uniform(*a.convex_radius_mm) if ratio is None else rng.uniform(*ratio) * depth_mm
    angle = rng.uniform(*a.convex_angle_deg)
    return (
        depth_mm,
        radius * np.deg2rad(angle),
        freq,
        dict(bmode.sector_geometry(size, radius, depth_mm, angle, fill=a.fill_frame),
             radius_mm=float(radius)),
    )  # fmt: skip


def _log_normal_texture(
    shape: tuple, std: float, corr_mm: tuple, dz: float, ds: float, rng: np.random.Generator
) -> np.ndarray:
    """A tissue texture to multiply echogenicity by: log-normal with log standard deviation
    ``std`` and mean 1, correlated over ``corr_mm`` (axial, lateral; Gaussian, wrapping)."""
    grain = ndimage.gaussian_filter(
        rng.standard_normal(shape, dtype=np.float32),
        (corr_mm[0] / dz, corr_mm[1] / ds),
        mode="wrap",
    )
    grain *= np.float32(std / (grain.std() + 1e-12))
    return np.exp(grain - std**2 / 2)


def _chest_wall(
    z: np.ndarray,
    cols: int,
    chest_wall_mm: float,
    rng: np.random.Generator,
    a: Appearance,
    dz: float,
    ds: float,
    side: np.random.Generator,
    offset: np.ndarray | None = None,
) -> np.ndarray:
    """Echogenicity of skin, fat with septa, fascia and muscle down to the pleura (tissue frame),
    with the appearance's fascia layers in the muscle, its tissue texture and its bright fibres
    (drawn from ``side``, so switching them on leaves every other draw as it was).

    ``offset`` (mm per column, :func:`_pleural_plane`): how much deeper the pleura lies than
    ``chest_wall_mm``. With it and ``a.wall_flatness``, the layers beneath the skin are drawn at
    the tissue depth ``skin + (z - skin) * (chest_wall_mm - skin) / (chest_wall_mm - skin +
    wall_flatness * offset)``: a layer a share t of the way from the skin to the pleura lies t
    of the extra depth deeper, so the skin (its thickness kept) follows the probe's face and
    the deep layers the pleura's plane (the texture and fibres' noise fields are not warped)."""
    skin = rng.uniform(1.0, 2.0) + np.float32(a.gel_mm)  # the gel's depth, then the skin's
    if offset is not None and a.wall_flatness > 0:
        stretch = (chest_wall_mm - skin) / (
            chest_wall_mm - skin + np.float32(a.wall_flatness) * offset[None, :]
        )
        z = np.where(z < skin, z, skin + (z - skin) * stretch).astype(np.float32)
    fat = (
        skin
        + rng.uniform(0.25, 0.5) * (chest_wall_mm - skin)
        + 0.6 * _smooth_noise(cols, 40, rng)[None, :]
    )
    echo = np.full((len(z), cols), _ECHO["muscle"], np.float32)
    echo[np.broadcast_to(z < skin, echo.shape)] = _ECHO["skin"] * np.float32(a.skin_gain)
    if a.gel_mm > 0:  # no echo from the gel: the skin's entry line lies beneath a dark band
        echo[np.broadcast_to(z < a.gel_mm, echo.shape)] = 0.0
    in_fat = (z >= skin) & (z < fat)
    echo[in_fat] = _ECHO["fat"] * np.float32(a.fat_gain)
    for _ in range(int(rng.integers(1, 4))):  # thin connective-tissue septa in the fat
        d = (
            rng.uniform(skin + 0.5, chest_wall_mm * 0.5)
            + 0.5 * _smooth_noise(cols, 30, rng)[None, :]
        )
        echo[in_fat & (np.abs(z - d) < 0.3)] = _ECHO["septum"]
    echo[np.abs(z - fat) < 0.35] = _ECHO["fascia"]
    lo, hi = a.muscle_fascia
    for _ in range(int(rng.integers(lo, hi)) if hi > lo else 0):  # layers between muscles
        d = rng.uniform(fat.mean(), chest_wall_mm - 1.0) + 0.4 * _smooth_noise(cols, 30, rng)[None]
        echo[(z > fat) & (np.abs(z - d) < rng.uniform(0.15, 0.35))] = _ECHO["fascia"] * rng.uniform(
            0.2, 1.0
        )
    if a.texture > 0:  # fibres and lobules: log-normal echogenicity, long laterally
        echo *= _log_normal_texture((len(z), cols), a.texture, a.texture_mm, dz, ds, rng)
    if a.wall_fibres > 0:  # the muscle's bright perimysium: sparse short lines along the fibres
        field = ndimage.gaussian_filter(
            side.standard_normal((len(z), cols), dtype=np.float32),
            (a.fibre_mm[0] / dz, a.fibre_mm[1] / ds),
            mode="wrap",
        )
        cut = np.quantile(field[:: max(1, len(z) // 64), :: max(1, cols // 64)], 1 - a.fibre_share)
        echo *= 1 + np.float32(a.wall_fibres) * ((field > cut) & (z > fat))
    if a.wall_gain != 1.0:
        echo *= np.float32(a.wall_gain)
    return echo


# A pleura that is an arc around the probe (v1, or a linear probe): no plane, no lobes.
_NO_PLANE = {"offset": None, "lobe": None, "dim": None, "wall_dim": None, "along": None,
             "theta": None}  # fmt: skip


def _lobe(theta: np.ndarray, sigma_deg: float, floor: float) -> tuple[np.ndarray, np.ndarray]:
    """A specular lobe around the square-on beam: ``exp(-(theta / sigma)^2 / 2)`` (``theta`` in
    radians from square on), and what an echo keeps with it, ``floor + (1 - floor) * lobe``."""
    lobe = np.exp(-0.5 * (theta / np.deg2rad(sigma_deg)) ** 2).astype(np.float32)
    return lobe, floor + (1 - floor) * lobe


def _pleural_plane(
    s: np.ndarray, chest_wall_mm: float, geometry: dict | None, a: Appearance, side
) -> dict:
    """Where a convex probe's beams meet a flat pleura, per world column (``s``, arc length at
    the face).

    The pleura lies on a plane tangent to the arc ``chest_wall_mm`` beneath the face, where the
    beam at the angle ``tilt`` meets it (drawn per video from ``side`` within
    ``+-a.pleura_tilt_deg``; ``chest_wall_mm``, the video's ``pleural_depth_mm``, is the depth
    there). A beam at angle ``theta`` (``s / radius``) meets it
    ``(radius + chest_wall_mm) / cos(theta - tilt) - radius`` below the face: deeper towards
    the fan's edges. ``offset`` is ``a.pleura_flatness`` of that extra depth (0: the pleura an
    arc around the probe, as in ``v1``). The pleura reflects specularly: ``lobe`` is
    ``exp(-((theta - tilt) / specular_deg)^2 / 2)``, 1 where the beam meets it square on. A
    linear probe's beams are parallel: no offset, no lobe. The chest wall is anisotropic (its
    muscle fibres, fascia and septa lie along its layers and echo most when met square on):
    ``wall_dim`` dims the whole wall's echo, skin to pleura, away from the same beam.

    All three are laid on the world's columns. When the lung slides under the probe
    (:func:`_motion`: 0.5-2 mm) :func:`_render_video` moves each frame's lung columns to the depth
    of their scan line's plane (the plane's depth changes by about 1 mm per mm of slide at the
    fan's edges), so the line stays put; the lobe's brightness slides with the lung (by the
    slide: a few degrees of the fan), and so do the ribs' offsets with the probe's jitter (0.3 mm
    at most).

    Returns:
        dict with ``offset`` (mm, per column, or None for an arc: no flatness), ``lobe`` (per
        column, or None without a lobe) and ``dim`` (what the line and its haze keep per
        column, ``specular_floor + (1 - specular_floor) * lobe``, or None) and ``wall_dim``
        (what the chest wall's echo keeps per column: ``wall_specular_floor`` plus the rest of
        a lobe of ``wall_specular_deg`` around the same square-on beam, or None) and ``along``
        (with ``a.ribs_along_pleura``: where each column's beam meets the pleura, in mm along it
        from the square-on beam, or None) and ``theta`` (each column's beam's angle from square
        on to the plane, radians, or None).
    """
    out = dict(_NO_PLANE)
    if geometry is None or (
        max(a.pleura_flatness, a.specular_deg, a.wall_specular_deg) <= 0 and not a.ribs_along_pleura
    ):
        return out
    radius = geometry["radius_mm"]
    tilt = np.deg2rad(side.uniform(-a.pleura_tilt_deg, a.pleura_tilt_deg))
    theta = s[0].astype(np.float64) / radius - tilt
    out["theta"] = theta.astype(np.float32)
    if a.pleura_flatness > 0:
        plane = (radius + chest_wall_mm) / np.cos(theta) - radius - chest_wall_mm
        out["offset"] = (a.pleura_flatness * plane).astype(np.float32)
    if a.specular_deg > 0:
        out["lobe"], out["dim"] = _lobe(theta, a.specular_deg, a.specular_floor)
    if a.wall_specular_deg > 0:  # the wall's anisotropy: its layers parallel to the plane
        out["wall_dim"] = _lobe(theta, a.wall_specular_deg, a.wall_specular_floor)[1]
    if a.ribs_along_pleura:  # arc length on the arc, distance on the plane, from the square-on beam
        flat = a.pleura_flatness
        along = (radius + chest_wall_mm) * ((1 - flat) * theta + flat * np.tan(theta))
        out["along"] = along.astype(np.float32)
    return out


def _pleura(
    s: np.ndarray,
    ds: float,
    chest_wall_mm: float,
    sev: dict,
    diagnosis: str,
    rng: np.random.Generator,
    a: Appearance,
    side: np.random.Generator,
    plane: dict | None = None,
) -> dict:
    """The pleural line per column (depth, thickness, brightness) and which columns are diseased.

    A column is diseased ("sick") where B-lines or a consolidation lie beneath it; there the line is
    thicker, more irregular and, in COVID-19-like lungs, fragmented. With
    ``a.pleura_variation`` its brightness varies along its length (log-normal, correlated over
    ``a.pleura_variation_mm``): the angle at which the beam meets the rough pleura changes. That
    variation is drawn from ``side``, so switching it on leaves every other draw as it was.
    ``plane`` (:func:`_pleural_plane`) deepens the line towards the fan's edges and dims it
    where the beam meets it obliquely (down to ``a.specular_floor``).
    """
    cols, x = s.shape[1], s[0]
    depth = (chest_wall_mm + rng.uniform(-2e-3, 2e-3) * x**2 + rng.uniform(-0.04, 0.04) * x).astype(
        np.float32
    )
    plane = plane or _NO_PLANE
    if plane["offset"] is not None:
        depth = depth + plane["offset"]
    half = cols * ds / 2
    b_pos = rng.uniform(-half, half, sev["n_blines"])
    b_width = rng.uniform(0.5, 1.4, sev["n_blines"])  # half-width, mm
    b_width[: sev["wide_blines"]] = rng.uniform(2.5, 5.0, min(sev["wide_blines"], sev["n_blines"]))
    c_pos = rng.uniform(-0.6 * half, 0.6 * half, sev["consolidations"])
    c_width = rng.uniform(*sev["consolidation_width_mm"], sev["consolidations"]) / 2
    c_depth = rng.uniform(*sev["consolidation_depth_mm"], sev["consolidations"])
    if diagnosis == "pneumonia" and sev["n_blines"]:  # focal B-lines beside the consolidation
        b_pos = c_pos[0] + rng.choice([-1, 1], sev["n_blines"]) * (
            c_width[0] + rng.uniform(1, 6, sev["n_blines"])
        )
    bprof = np.zeros(cols, np.float32)
    for c, w in zip(b_pos, b_width):
        bprof = np.maximum(bprof, 1.0 / (1.0 + ((x - c) / w) ** 6))  # flat-topped, half at +-w
    cons_cols = np.zeros(cols, bool)
    for c, w in zip(c_pos, c_width):
        cons_cols |= np.abs(x - c) < w
    sick = (bprof > 0.05) | ndimage.binary_dilation(cons_cols, iterations=max(1, int(1.0 / ds)))
    sick_soft = ndimage.gaussian_filter1d(sick.astype(np.float32), 1.0 / ds)
    irregular = sev["pleural_irregularity_mm"] * (0.3 + 0.7 * sick_soft)
    depth = depth + irregular * _smooth_noise(cols, max(1.0, 0.8 / ds), rng)
    thick = 0.5 + rng.uniform(0.0, 0.3) + (sev["sick_thickness_mm"] - 0.65) * sick_soft
    echo = np.ones(cols, np.float32)
    if a.pleura_variation > 0:
        v, scale = a.pleura_variation, max(1.0, a.pleura_variation_mm / ds)
        echo *= np.exp(v * _smooth_noise(cols, scale, side) - v**2 / 2)
    if sev["fragmentation"] > 0:  # gaps in the diseased pleura
        gaps = _smooth_noise(cols, max(1.0, 0.6 / ds), rng) < -1.2 + 1.5 * sev["fragmentation"]
        echo = np.where(sick & gaps, 0.12, echo)
    echo = np.where(cons_cols, 0.5 * echo, echo)
    if plane["dim"] is not None:  # specular: dimmer where the beam meets it obliquely
        echo = echo * plane["dim"]
    return dict(
        lobe=plane["lobe"],
        dim=plane["dim"],
        depth=depth,
        thick=thick,
        echo=echo,
        sick=sick,
        bprof=bprof,
        c_pos=c_pos,
        c_width=c_width,
        c_depth=c_depth,
    )


def _lung(
    z: np.ndarray,
    s: np.ndarray,
    dz: float,
    ds: float,
    depth_mm: float,
    chest_wall_mm: float,
    pl: dict,
    sev: dict,
    rng: np.random.Generator,
    a: Appearance,
) -> dict:
    """Lung frame: the pleural line, then air with A-lines, B-lines and consolidations, and their
    labels."""
    size, cols = len(z), s.shape[1]
    p, thick, sick, bprof = pl["depth"], pl["thick"], pl["sick"], pl["bprof"]
    top, bottom = p - thick / 2, p + thick / 2
    support = z >= top[None, :]
    echo = np.where(sick[None, :], _ECHO["sick_air"], _ECHO["air"]).astype(
        np.float32
    ) * np.ones_like(z)
    bits = np.zeros((size, cols), np.uint8)
    pleura = support & (z <= bottom[None, :])
    echo = np.where(pleura, pl["echo"][None, :], echo)
    bits[pleura] |= _BIT["pleura"]
    # A-lines: reverberations between probe and pleura at k x its depth, weaker by `reflect` per
    # round trip.
    reflect = rng.uniform(0.45, 0.65)
    a_thick = np.minimum(thick, 1.0)
    healthy_cols = ~sick[None, :]
    a_echo = (1 - bprof)[None, :]
    # A-lines show where the beam meets the pleura square on; a slight tilt dims them (per video)
    fade = np.exp(rng.uniform(np.log(a.aline_fade), 0.0)) if a.aline_fade < 1 else 1.0
    lobe = pl.get("lobe")  # specular pleura: the k-th A-line met it k times (lobe ** k)
    for k in range(2, 12):
        power = reflect ** (2 * (k - 1)) * a.aline_gain * fade
        if lobe is not None:
            power = power * lobe**k
        # drawn and labelled while 4x brighter than the air and the haze around them
        floor = _ECHO["air"] + a.lung_haze * np.exp(-(k - 1) * chest_wall_mm / a.haze_decay_mm)
        seen = power >= 4 * floor
        if not np.any(seen) or k * chest_wall_mm > depth_mm + 2:
            break
        # each round trip blurs the echo further (pulse and rough pleura): a wider, fainter band
        width = a_thick + a.aline_spread_mm * (k - 1)
        band = (np.abs(z - k * p[None, :]) <= width[None, :] / 2) & healthy_cols
        if lobe is not None:  # only where it is bright enough
            band &= seen[None, :]
        echo = np.where(band, np.maximum(echo, power * (a_thick / width)[None, :] * a_echo), echo)
        bits[band] |= _BIT["alines"]
    # B-lines: ring-down from the pleura to the bottom, constant with depth.
    below = z > bottom[None, :]
    if a.lung_haze > 0:  # reverberation haze: multiple echoes between pleura, wall and probe
        haze = a.lung_haze * np.exp(-(z - bottom[None, :]) / a.haze_decay_mm)
        if pl.get("dim") is not None:  # echoes of the pleura: as specular as its line
            haze = haze * pl["dim"][None, :]
        echo = echo + np.where(below, haze, 0).astype(np.float32)
    if a.lung_texture > 0:  # the reverberations' streaks: log-normal, long laterally
        streaks = _log_normal_texture((size, cols), a.lung_texture, a.lung_texture_mm, dz, ds, rng)
        echo = np.where(below, echo * streaks, echo)
    echo = np.where(below, np.maximum(echo, rng.uniform(0.1, 0.3) * bprof[None, :]), echo)
    bits[below & (bprof[None, :] >= 0.5)] |= _BIT["blines"]
    # Consolidations: tissue-like texture with air bronchograms, an irregular deep border.
    cons = np.zeros((size, cols), bool)
    for c, w, h in zip(pl["c_pos"], pl["c_width"], pl["c_depth"]):
        u = np.clip((s[0] - c) / w, -1, 1)
        deep = bottom + h * np.sqrt(1 - u**2) * (
            1 + 0.25 * _smooth_noise(cols, max(1.0, 1.5 / ds), rng)
        )
        cons |= below & (z < deep[None, :]) & (np.abs(s[0] - c) < w)[None, :]
    if cons.any():
        texture = np.exp(
            0.5
            * ndimage.gaussian_filter(rng.standard_normal((size, cols)), (0.8 / dz, 0.8 / ds))
            / 0.1
        ).astype(np.float32)
        echo = np.where(cons, rng.uniform(3e-4, 1e-3) * np.clip(texture, 0.2, 5), echo)
        cz, cs = np.nonzero(cons)
        for i in rng.choice(len(cz), min(sev["bronchograms"], len(cz)), replace=False):
            r = rng.uniform(0.3, 0.7)
            dot = cons & (((z - z[cz[i], 0]) / r) ** 2 + ((s - s[0, cs[i]]) / (2.5 * r)) ** 2 < 1)
            echo = np.where(dot, _ECHO["bronchogram"], echo)
        bits[cons] |= _BIT["consolidation"]
        bits[cons] &= ~_BIT["blines"]
    dense = np.where(sick[None, :], 6, 5).astype(np.uint8) * support
    dense[pleura] = np.where(sick[None, :], 4, 3).astype(np.uint8).repeat(size, 0)[pleura]
    dense[(bits & _BIT["alines"]) > 0] = 1
    dense[(bits & _BIT["blines"]) > 0] = 2
    return dict(support=support, echo=echo, bits=bits, dense=dense, reflect=reflect)


def _ribs(
    z: np.ndarray,
    s: np.ndarray,
    ds: float,
    chest_wall_mm: float,
    probe: str,
    echo: np.ndarray,
    rng: np.random.Generator,
    a: Appearance,
    offset: np.ndarray | None = None,
    along: np.ndarray | None = None,
    theta: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rib cortex arcs and rib bodies (tissue frame) and the two-way transmission beneath them.

    ``offset`` (mm per column, :func:`_pleural_plane`): how much deeper the pleura lies than the
    chest wall's depth; the ribs lie on it as they lie on the pleura. ``along`` (mm per column,
    :func:`_pleural_plane`): where each beam meets the pleura, along it; the ribs' width and the
    gaps between them are laid out on it, at their own depth. Without it (``v1``, linear probes)
    they are laid out on the world's lateral axis, for a convex probe the arc of its face: there
    a rib ``(radius + depth) / radius`` (1.3-1.7) times too wide in angle, as its gap.

    With ``a.rib_specular_deg`` the cortex reflects specularly: its echo keeps
    :func:`_lobe` of the angle between the beam and its surface's normal (``theta``, the beam's
    angle from square on to the pleura, :func:`_pleural_plane`, 0 without it; plus the tilt of
    the rib's oval surface there), so its flanks dim and the rib shows as the short bright
    line across its top that real frames show, not as an arch.

    Bone passes ``a.rib_transmission`` of the amplitude. The shadow's edge is ``a.shadow_edge_mm``
    wide inside the rib's ends (``v1``) or, with ``a.shadow_spread``, centred on them and widening
    with depth as the beam's diffraction blurs it.

    Returns:
        ``(echogenicity with the cortex, structure bits, transmission)``.
    """
    rows, cols = len(z), s.shape[1]
    half = cols * ds / 2
    x = s[0] if along is None else along  # where the ribs are laid out (mm)
    transmission = np.ones((rows, cols), np.float32)
    bits = np.zeros((rows, cols), np.uint8)
    rib_half, gap = rng.uniform(*a.rib_half_mm), rng.uniform(14.0, 24.0)
    pitch = 2 * rib_half + gap
    if rng.random() < 0.85:  # otherwise the probe lies along an intercostal space: no rib in view
        first = rng.uniform(-pitch / 2, pitch / 2) + (pitch / 2 if probe == "linear" else 0)
        centres = first + pitch * np.arange(-4, 5)
        if along is None:
            seen = np.abs(centres) < half + rib_half
        else:
            seen = (centres > along.min() - rib_half) & (centres < along.max() + rib_half)
        for c in centres[seen]:
            u = (x - c) / rib_half
            on = np.abs(u) < 1
            curve = 1 - np.sqrt(1 - np.clip(u, -1, 1) ** 2)
            above = rng.uniform(*a.rib_above_mm)
            rise = rng.uniform(1.5, 3.0) * curve  # the surface's oval: deeper at the rib's ends
            surface = chest_wall_mm - above + rise
            if offset is not None:
                surface = surface + offset
            cortex = on[None, :] & (z >= surface[None, :]) & (z < surface[None, :] + 1.0)
            bright = a.rib_echo
            if a.rib_specular_deg > 0:  # specular bone: its flanks, met obliquely, dim
                slope = np.arctan(np.gradient(rise, x))  # the surface's tilt on the ribs' axis
                incidence = slope if theta is None else theta + slope
                bright = a.rib_echo * _lobe(incidence, a.rib_specular_deg,
                                            a.rib_specular_floor)[1][None, :]  # fmt: skip
            echo = np.where(cortex, bright, echo)
            bits[cortex] |= _BIT["ribs"]
            # the lower half of an oval beneath the surface (no random draw: images unchanged)
            body = surface + np.maximum(
                _RIB_DEPTH_OVER_HALF_WIDTH * rib_half * np.sqrt(1 - np.clip(u, -1, 1) ** 2), 1.0
            )
            bits[on[None, :] & (z >= surface[None, :]) & (z < body[None, :])] |= _BIT["rib_body"]
            if a.shadow_spread > 0:  # a penumbra centred on the rib's ends, widening with depth
                width = a.shadow_edge_mm + a.shadow_spread * np.maximum(z - surface[None, :], 0)
                edge = np.clip(0.5 - (np.abs(x - c) - rib_half)[None, :] / width, 0, 1)
            else:  # the first generator: a soft edge inside the rib's ends
                edge = np.clip((1 - np.abs(u)) / (a.shadow_edge_mm / rib_half), 0, 1)[None, :]
            shade = 1 - (1 - a.rib_transmission) * edge
            transmission = np.where(
                z >= surface[None, :] + 1.0, np.minimum(transmission, shade), transmission
            )
    return echo, bits, transmission


def _video_world(
    size: int,
    margin: int,
    probe: str,
    chest_wall_mm: float,
    diagnosis: str,
    rng: np.random.Generator,
    overrides: dict,
    rows: int | None = None,
    frequency_mhz: float | None = None,
    appearance: Appearance | None = None,
) -> dict:
    """Beam-space maps of one video, ``margin`` columns wider on each side for motion: ``size``
    scan lines of ``rows`` depth samples (default ``size``), at the probe's drawn frequency or
    ``frequency_mhz``, with ``appearance`` (default: the calibrated one)."""
    a = resolve_appearance(DEFAULT_APPEARANCE if appearance is None else appearance)
    depth_mm, width_mm, freq, geometry = _probe(size, probe, rng, a)
    freq = freq if frequency_mhz is None else float(frequency_mhz)  # the draw is kept: same images
    rows = size if rows is None else int(rows)
    dz, ds = depth_mm / rows, width_mm / size
    cols = size + 2 * margin
    z = ((np.arange(rows) + 0.5) * dz)[:, None].astype(np.float32)  # depth, mm
    s = ((np.arange(cols) - cols / 2 + 0.5) * ds)[None, :].astype(np.float32)  # lateral, mm
    sev = _severity(diagnosis, rng, overrides)
    # features added after the fourth version draw from their own streams (spawning draws no
    # number from ``rng``): switched off or on, the rest of the video is the same (the third
    # stream, version 6, moved the baseband speckle's stream in _render_video to the next child)
    side = rng.spawn(3)
    plane = _pleural_plane(s, chest_wall_mm, geometry, a, side[2])
    echo_t = _chest_wall(z, cols, chest_wall_mm, rng, a, dz, ds, side[0], plane["offset"])
    if plane["wall_dim"] is not None:  # anisotropic wall: dimmer where met obliquely
        echo_t *= plane["wall_dim"][None, :]
    pl = _pleura(s, ds, chest_wall_mm, sev, diagnosis, rng, a, side[1], plane)
    lung = _lung(z, s, dz, ds, depth_mm, chest_wall_mm, pl, sev, rng, a)
    where = (plane["offset"], plane["along"], plane["theta"])  # the ribs on the pleura's plane
    echo_t, bits_t, transmission = _ribs(z, s, ds, chest_wall_mm, probe, echo_t, rng, a, *where)
    if a.specks > 0:  # sparse strong reflectors (fibres, interfaces, reverberation dashes)
        p_speck = np.float32(a.speck_density * dz * ds)
        for echo in (echo_t, lung["echo"]):
            echo *= 1 + np.float32(a.specks) * (rng.random(echo.shape, np.float32) < p_speck)
    return dict(
        appearance=a,
        size=size,
        rows=rows,
        margin=margin,
        probe=probe,
        geometry=geometry,
        depth_mm=depth_mm,
        width_mm=width_mm,
        freq=freq,
        dz=dz,
        ds=ds,
        z=z[:, 0],
        echo_t=echo_t,
        bits_t=bits_t,
        transmission=transmission,
        support=lung["support"],
        echo_l=lung["echo"],
        bits_l=lung["bits"],
        dense_l=lung["dense"],
        severity=sev,
        pleural_depth_mm=float(chest_wall_mm),
        plane_offset=plane["offset"],
        reflect=lung["reflect"],
    )


def _motion(world: dict, n_frames: int, rng: np.random.Generator):
    """Per-frame first world column of the tissue (breathing jitter) and of the lung (sliding,
    less when diseased): two ``(frames,)`` offsets; a frame shows ``size`` columns from there."""
    margin, ds = world["margin"], world["ds"]
    f = np.arange(n_frames)
    phase = rng.uniform(0, 2 * np.pi, 3)
    jitter = rng.uniform(0.0, 0.3) * np.sin(2 * np.pi * f / 60 + phase[0])
    slide = rng.uniform(0.5, 2.0) * np.sin(2 * np.pi * f / 40 + phase[1])
    if world["severity"]["consolidations"] and world["severity"]["pleural_irregularity_mm"] > 0.3:
        slide *= 0.4  # diseased lung slides less
    o_t = np.clip(np.rint(margin + jitter / ds), 0, 2 * margin).astype(int)
    o_l = np.clip(np.rint(o_t + slide / ds), 0, 2 * margin).astype(int)
    return o_t, o_l


def _envelope(world: dict, trans, echo, scat, rng: np.random.Generator) -> np.ndarray:
    """The echo envelope of the frames: depth gains, receiver noise, PSF and speckle.

    Tissue attenuation, then TGC and overall gain, vary slowly with depth, so they are applied to
    the scatterer amplitudes before the (short) PSF; receiver noise enters after attenuation and
    before TGC, so TGC amplifies it at depth. ``trans`` is overwritten.
    """
    size, rows, ds, dz = world["size"], world["rows"], world["ds"], world["dz"]
    a = world["appearance"]
    att = bmode.attenuation_amplitude(
        world["z"], rng.uniform(*a.attenuation_db_cm_mhz), world["freq"]
    )
    gain = bmode.tgc_gain(world["z"], 0.5 * a.tgc_fraction, world["freq"], rng) * 10 ** (
        rng.uniform(*a.gain_db) / 20
    )
    g2 = ((att * gain) ** 2).astype(np.float32)[:, None]
    n2 = ((_NOISE_AMPLITUDE * gain) ** 2).astype(np.float32)[:, None]
    if a.edge_falloff_db > 0 and world["probe"] == "convex":  # element directivity at the edges
        x = (np.arange(size) + 0.5) / size * 2 - 1
        g2 = g2 * (10 ** (-a.edge_falloff_db * x**2 / 10)).astype(np.float32)[None, :]
    amp = trans
    amp *= trans
    amp *= echo
    amp *= g2
    amp += n2
    np.sqrt(amp, out=amp)
    axial_sigma = max(a.min_axial_px, a.axial_scale * 0.25 * 5.0 / world["freq"] / dz)  # 2 cycles
    lateral_mm = a.lateral_mm_linear if world["probe"] == "linear" else a.lateral_mm_convex
    lateral_sigma = max(a.min_sigma_px, lateral_mm / ds)
    spectrum = bmode.baseband_psf_spectrum if a.baseband else bmode.analytic_psf_spectrum
    psf = spectrum(bmode.padded_shape((rows, size)), axial_sigma, lateral_sigma)
    return bmode.envelope(amp, psf, rng, scatterers=scat)


def _speckle_reduction(
    image: np.ndarray,
    sigma_px: float,
    deep_px: float,
    blend: tuple = (0.0, 1.0),
    pit_fill: float = 0.0,
) -> np.ndarray:
    """The scanner's speckle reduction on the beam data (frames, depth, scan lines): a Gaussian of
    ``sigma_px``, then the image moved towards its local mean (that image filtered again by
    ``deep_px``, as matrix products: :func:`.bmode.gaussian_blur`; Gaussians compose, kernels cut
    at 3 sigma) by a share growing linearly with depth
    from ``blend[0]`` at the top to ``blend[1]`` at the bottom; then ``pit_fill`` of the way up
    to the local mean where it is darker.

    With the default ``blend`` the filter widens with depth to ``hypot(sigma_px, deep_px)``, as
    the beam widens beyond its focus and scanners filter the deep, weak echoes harder. A share
    below 1 lowers the speckle's contrast but keeps its grain, as averaging many speckle cells
    into one displayed pixel does (a real frame of 1124 x 820 pixels shown at 256) and as
    compounding and adaptive speckle filters do; a Gaussian alone also coarsens the grain.
    Filling the pits keeps bright specks and removes the dark holes of log-compressed speckle,
    as averaging echo intensities (compounding) does: real lung texture is skewed to the bright
    side, raw speckle to the dark."""
    if sigma_px > 0:
        near = ndimage.gaussian_filter(
            image, (0, sigma_px, sigma_px), output=np.float32, truncate=3.0
        )
    else:
        near = image.astype(np.float32)
    if deep_px > 0:
        step = bmode.gaussian_blur(near, deep_px)
        step -= near  # from the image to its local mean
        share = np.linspace(*blend, image.shape[1], dtype=np.float32)[None, :, None]
        if pit_fill > 0:  # up towards the local mean from what the share leaves below it
            pit = np.maximum(step * (1 - share), 0) * np.float32(pit_fill)
        step *= share
        near += step
        if pit_fill > 0:
            near += pit
    return np.rint(near, out=near).astype(np.uint8)


def _render_video(
    world: dict, n_frames: int, rng: np.random.Generator, keep_envelope: bool
) -> dict:
    """Frames of one video: motion, scatterers, PSF, envelope, TGC, log compression, scan
    conversion."""
    size, rows, margin = world["size"], world["rows"], world["margin"]
    first_t, first_l = _motion(world, n_frames, rng)
    # A flat pleura's depth belongs to the scan line's angle, not to the sliding lung: each
    # frame's lung columns are moved down by the plane's depth at their scan line less its
    # depth at the world column they come from (whole depth samples).
    src = None
    offset = world.get("plane_offset")
    if offset is not None:
        j = np.arange(size)
        shift = np.rint((offset[margin + j][None, :] - offset[first_l[:, None] + j]) / world["dz"])
        src = np.clip(np.arange(rows)[None, :, None] - shift[:, None, :].astype(int), 0, rows - 1)

    def take(a, offsets, lung=False):  # (rows, world cols) -> (frames, rows, size)
        out = np.empty((len(offsets), a.shape[0], size), a.dtype)
        for f, first in enumerate(offsets):
            window = a[:, first : first + size]
            out[f] = np.take_along_axis(window, src[f], 0) if lung and src is not None else window
        return out

    sel = take(world["support"], first_l, lung=True)

    def pick(lung, tissue, shifted=True):  # the lung frame beneath the pleura, the tissue above
        lung = take(lung, first_l, lung=shifted)
        for f, o_t in enumerate(first_t):
            np.copyto(lung[f], tissue[:, o_t : o_t + size], where=~sel[f])
        return lung

    trans = take(world["transmission"], first_t)
    visible = trans > 0.5
    echo = pick(world["echo_l"], world["echo_t"])
    bits = pick(world["bits_l"], world["bits_t"])
    bone = _BIT["ribs"] | _BIT["rib_body"]
    bits = np.where(visible, bits, (bits & bone) | _BIT["rib_shadow"])
    dense = np.where(sel & visible, take(world["dense_l"], first_l, lung=True), np.uint8(0))

    # Scatterers shared by the video (tissue and lung frames), a quarter redrawn per frame.
    a = world["appearance"]
    if a.baseband:  # complex (I + jQ) scatterers, from their own stream (the gains drawn after
        noise = rng.spawn(1)[0]  # them stay the same however the speckle is drawn)
        draw = lambda shape: bmode.complex_scatterers(noise, shape)  # noqa: E731
    else:
        draw = lambda shape: rng.standard_normal(shape, dtype=np.float32)  # noqa: E731
    world_t = draw((rows, size + 2 * margin))
    world_l = draw((rows, size + 2 * margin))
    eps = _FRAME_DECORRELATION
    scat = pick(world_l, world_t, shifted=False)  # speckle: no depth to keep
    scat *= np.float32(np.sqrt(1 - eps**2))
    if a.baseband:  # the redrawn share: windows of one wider field, _FRESH_STRIDE columns apart
        fresh = draw((rows, size + _FRESH_STRIDE * (n_frames - 1)))
        fresh *= np.float32(eps)
        for f in range(n_frames):
            scat[f] += fresh[:, f * _FRESH_STRIDE : f * _FRESH_STRIDE + size]
    else:  # the first generator: a new field per frame
        scat += np.float32(eps) * draw(scat.shape)

    env = _envelope(world, trans, echo, scat, rng)
    image = bmode.log_compress(env, 1.0, rng.uniform(*a.dynamic_range_db))
    if a.gamma != 1.0 or a.grey_floor > 0:  # the scanner's grey map
        grey = np.arange(256) / 255
        lut = np.rint(255 * (a.grey_floor + (1 - a.grey_floor) * grey**a.gamma))
        image = lut.astype(np.uint8)[image]
    if a.smoothing_px > 0 or a.smoothing_deep_px > 0:
        image = _speckle_reduction(
            image,
            a.smoothing_px,
            a.smoothing_deep_px,
            (a.smoothing_share_top, a.smoothing_share_bottom),
            a.pit_fill,
        )
    if world["probe"] == "convex":
        g = world["geometry"]
        image = bmode.scan_convert(image, g, order=1)
        bits, dense = bmode.scan_convert(bits, g, order=0), bmode.scan_convert(dense, g, order=0)
        if keep_envelope:
            env = bmode.scan_convert(env, g, order=1)
        spacing = g["spacing_yx_mm"]
    else:
        spacing = (world["dz"], world["ds"])
    return dict(
        image=image,
        bits=bits,
        dense=dense,
        envelope=env if keep_envelope else None,
        spacing=spacing,
    )


@bmode.without_huge_pages()
def lung_ultrasound_phantom(
    n_images: int,
    n_patients: int | None = None,
    frames_per_video: int = 16,
    image_size: int = 256,
    probe: str = "mixed",
    diagnoses=DIAGNOSES,
    target: str = "pleura",
    seed=0,
    keep_envelope: bool = False,
    id_prefix: str = "lus",
    beam_shape: tuple[int, int] | None = None,
    frequency_mhz: float | None = None,
    appearance: str | Appearance = DEFAULT_APPEARANCE,
    **severity,
) -> SegmentationSet:
    """Lung ultrasound videos of synthetic patients, with every label of papers 1, 2 and 5.

    Args:
        n_images: total number of frames.
        n_patients: number of patients (default: one per 4 videos, at least 2 when there are 2
            videos). Videos are dealt to patients in turn; a patient keeps one diagnosis and one
            chest-wall thickness.
        frames_per_video: frames of each video (the last video may be shorter).
        image_size: side of the square output images.
        probe: ``"linear"``, ``"convex"`` or ``"mixed"`` (drawn per video).
        diagnoses: the diagnostic classes to draw patients from (a name or a sequence of names of
            :data:`DIAGNOSES`), uniformly.
        target: the structure that becomes ``masks`` (one of :data:`TARGETS`; ``"artifacts"`` is
            the union of pleura, A-lines, B-lines and consolidation).
        seed: int seed or ``np.random.Generator``.
        keep_envelope: also keep the envelope before log compression in ``info["envelope"]``.
        id_prefix: the start of the patient, video and image ids (``<prefix>_p000_v0000_f000``);
            sets drawn by separate calls and then joined need different prefixes.
        beam_shape: ``(depth samples, scan lines)`` of raw linear-probe frames, e.g. paper 2's
            Verasonics ``(960, 128)``, instead of ``image_size`` square (linear probe only; the
            images are then of this shape, unresized).
        frequency_mhz: a fixed probe frequency (paper 2: 5.2 MHz) instead of the drawn one.
        appearance: ``"calibrated"`` (the default: fitted to real convex lung ultrasound), ``"v1"``
            (the first generator, bit for bit) or an :class:`Appearance`
            (:mod:`lus_common.phantoms.appearance`); its version is the set's generator version.
        **severity: fixed disease parameters overriding the diagnostic rules (``n_blines``,
            ``wide_blines``, ``pleural_irregularity_mm``, ``sick_thickness_mm``, ``fragmentation``,
            ``consolidations``, ``consolidation_width_mm``, ``consolidation_depth_mm``,
            ``bronchograms``).

    Returns:
        A synthetic :class:`SegmentationSet` with ``groups`` = patient ids, ``layers`` holding one
        binary mask per structure plus ``"dense"`` and ``"sparse"`` class maps, and ``meta`` with
        patient, video, frame, probe, diagnosis and severity per image.
    """
    lookup(TARGETS, target, "target", error=ValueError)
    lookup(PROBES + ("mixed",), probe, "probe", error=ValueError)
    diagnoses = (diagnoses,) if isinstance(diagnoses, str) else tuple(diagnoses)
    for d in diagnoses:
        lookup(DIAGNOSES, d, "diagnosis", error=ValueError)
    a = resolve_appearance(appearance)
    rng = bmode.as_generator(seed)
    size = int(image_size)
    rows = size
    if beam_shape is not None:
        if probe != "linear":
            raise ValueError(
                f"beam_shape is for raw linear-probe frames; probe is '{probe}' (use 'linear')."
            )
        rows, size = (int(n) for n in beam_shape)
    # formed at render x render, then resized to size as real frames are (a.render_size)
    render = max(size, a.render_size) if beam_shape is None else size
    patients, kinds, video_rngs = _deal_videos(
        rng, n_images, n_patients, frames_per_video, probe, diagnoses, a.chest_wall_mm
    )
    n_patients, n_videos = len(patients), len(kinds)
    shape = (n_images, rows, size)
    images = np.empty(shape, np.float32)
    layers = {name: np.empty(shape, np.uint8) for name in STRUCTURES + ("dense", "sparse")}
    masks = layers[target] if target != "artifacts" else np.empty(shape, np.uint8)
    envelopes = np.empty(shape, np.float32) if keep_envelope else None
    spacing = np.empty((n_images, 2))

    def make_video(v: int) -> list[dict]:
        pid, pat = v % n_patients, patients[v % n_patients]
        sl = slice(v * frames_per_video, min((v + 1) * frames_per_video, n_images))
        world = _video_world(
            render,
            max(4, render // 32),
            kinds[v],
            pat["chest_wall_mm"],
            pat["diagnosis"],
            video_rngs[v],
            severity,
            rows if render == size else render,
            frequency_mhz,
            a,
        )
        out = _render_video(world, sl.stop - sl.start, video_rngs[v], keep_envelope)
        if render != size:
            out = _display_resize(out, size, render)
        np.multiply(out["image"], np.float32(1 / 255), out=images[sl])
        _store_labels(out["bits"], out["dense"], {k: arr[sl] for k, arr in layers.items()})
        if target == "artifacts":
            any_bit = _BIT["pleura"] | _BIT["alines"] | _BIT["blines"] | _BIT["consolidation"]
            np.not_equal(out["bits"] & any_bit, 0, out=masks[sl], casting="unsafe")
        spacing[sl] = out["spacing"]
        if keep_envelope:
            envelopes[sl] = out["envelope"]
        return _video_rows(id_prefix, pid, v, kinds[v], pat["diagnosis"], world, sl.stop - sl.start)

    # numpy and scipy.fft release the GIL on whole arrays: videos render in parallel threads.
    with threadpool_limits(1), ThreadPoolExecutor(min(os.cpu_count() or 1, 8)) as pool:
        rows = [row for video in pool.map(make_video, range(n_videos)) for row in video]
    meta = pd.DataFrame(rows)
    ids = [f"{r['video']}_f{r['frame']:03d}" for r in rows]
    info = {"target": target, "probe": probe, "dense_classes": DENSE_CLASSES,
            "sparse_classes": SPARSE_CLASSES, "appearance": a.name}  # fmt: skip
    if keep_envelope:
        info["envelope"] = envelopes
    return SegmentationSet.phantom(
        images, masks, ids, "lung_ultrasound_phantom", a.version,
        groups=list(meta["patient"]), spacing_mm=spacing, info=info, layers=layers, meta=meta,
    )  # fmt: skip


def _display_resize(out: dict, size: int, render: int) -> dict:
    """One video's frames formed at ``render`` pixels, resized to ``size`` as the loaders resize
    real frames (antialiased bilinear, then 8 bits); labels by nearest neighbour."""
    image = np.rint(bmode.display_resize(out["image"], size))
    env = out["envelope"]
    return dict(
        image=np.clip(image, 0, 255).astype(np.uint8),
        bits=bmode.nearest_resize(out["bits"], size),
        dense=bmode.nearest_resize(out["dense"], size),
        envelope=None if env is None else bmode.display_resize(env, size),
        spacing=tuple(np.asarray(out["spacing"]) * render / size),
    )


def lung_patients_phantom(
    diagnoses: Sequence[str],
    images_per_patient: int,
    videos_per_patient: int = 1,
    image_size: int = 256,
    probe: str = "mixed",
    seed=0,
    id_prefix: str = "lus",
    **kwargs,
) -> SegmentationSet:
    """One synthetic patient per entry of ``diagnoses``, so the caller sets the classes exactly
    (paper 5's three COVID-19 patients and one healthy; its 188 / 477 / 49 videos, one patient
    each).

    Args:
        diagnoses: one diagnosis of :data:`DIAGNOSES` per patient.
        images_per_patient: frames of each patient.
        videos_per_patient: videos they are split into (paper 5: 2, the left and right lung).
        image_size: side of the square images.
        probe: as :func:`lung_ultrasound_phantom`.
        seed: int seed or ``np.random.Generator``; every patient draws from its own stream.
        id_prefix: start of the ids; patient ``k`` is ``<id_prefix><k>_p000`` (unique across
            the patients of a call; calls joined later need different prefixes).
        **kwargs: more arguments of :func:`lung_ultrasound_phantom` (``target``, severity).

    Returns:
        The patients' sets joined (:meth:`SegmentationSet.concat`), in the order of ``diagnoses``.
    """
    if not len(diagnoses):
        raise ValueError("diagnoses must name at least one patient.")
    rng = bmode.as_generator(seed)
    frames = -(-int(images_per_patient) // int(videos_per_patient))
    digits = len(str(len(diagnoses) - 1))
    sets = [
        lung_ultrasound_phantom(
            images_per_patient,
            1,
            frames,
            image_size,
            probe,
            diagnosis,
            seed=stream,
            id_prefix=f"{id_prefix}{k:0{digits}d}",
            **kwargs,
        )  # fmt: skip
        for k, (diagnosis, stream) in enumerate(zip(diagnoses, rng.spawn(len(diagnoses))))
    ]
    return SegmentationSet.concat(sets)


def _deal_videos(
    rng: np.random.Generator,
    n_images: int,
    n_patients: int | None,
    frames_per_video: int,
    probe: str,
    diagnoses: tuple,
    chest_wall_mm: tuple = (10.0, 22.0),
) -> tuple[list[dict], list[str], list[np.random.Generator]]:
    """The patients (diagnosis, chest-wall thickness), each video's probe and its own random
    stream (the same images with any thread count); videos go to patients in turn."""
    n_videos = -(-n_images // frames_per_video)
    n_patients = n_patients or min(n_videos, max(2, n_videos // 4))
    if n_patients > n_videos:
        raise ValueError(
            f"{n_patients} patients need at least as many videos; {n_images} images of "
            f"{frames_per_video} frames make {n_videos}. Lower frames_per_video."
        )
    patients = [
        dict(
            diagnosis=diagnoses[int(rng.integers(len(diagnoses)))],
            chest_wall_mm=rng.uniform(*chest_wall_mm),
        )
        for _ in range(n_patients)
    ]
    kinds = [probe if probe != "mixed" else PROBES[int(rng.integers(2))] for _ in range(n_videos)]
    return patients, kinds, rng.spawn(n_videos)


def _store_labels(bits: np.ndarray, dense: np.ndarray, layers: dict) -> None:
    """One video's structure masks (from its bit planes) and class maps, written into ``layers``
    (views of the set's arrays)."""
    plane = np.empty_like(bits)
    for i, name in enumerate(STRUCTURES):
        np.right_shift(bits, i, out=plane)
        np.bitwise_and(plane, 1, out=layers[name])
    layers["dense"][...] = dense
    layers["sparse"][...] = dense_to_sparse(dense)


def _video_rows(
    prefix: str, pid: int, v: int, probe: str, diagnosis: str, world: dict, n_frames: int
) -> list:
    """The ``meta`` rows of one video's frames: patient, video, frame, probe, diagnosis, depths
    and severity."""
    sev = world["severity"]
    video = dict(patient=f"{prefix}_p{pid:03d}", video=f"{prefix}_p{pid:03d}_v{v:04d}")
    return [
        {
            **video,
            "frame": f,
            "probe": probe,
            "diagnosis": diagnosis,
            "depth_mm": world["depth_mm"],
            "frequency_mhz": world["freq"],
            "pleural_depth_mm": world["pleural_depth_mm"],
            "n_blines": sev["n_blines"],
            "pleural_irregularity_mm": sev["pleural_irregularity_mm"],
            "consolidations": sev["consolidations"],
        }
        for f in range(n_frames)
    ]


def formation_steps(
    image_size: int = 256,
    probe: str = "linear",
    diagnosis: str = "COVID-19",
    seed=0,
    appearance: str | Appearance = DEFAULT_APPEARANCE,
) -> dict:
    """The intermediate maps of one frame's image formation, for figures.

    Returns:
        dict of beam-space ``echogenicity_db`` (10 log10 of echogenicity x two-way transmission),
        ``envelope`` (after PSF, envelope detection and TGC), ``b_mode`` (log compressed, scan
        converted for a convex probe, in [0, 1]) and ``dense`` (paper 5's classes).
    """
    rng = bmode.as_generator(seed)
    a = resolve_appearance(appearance)
    lo, hi = a.chest_wall_mm  # a typical chest wall: 2 mm inside the patients' range
    chest_wall_mm = rng.uniform(lo + 2, hi - 2)
    world = _video_world(int(image_size), 0, probe, chest_wall_mm, diagnosis, rng, {}, appearance=a)
    echo = np.where(world["support"], world["echo_l"], world["echo_t"]) * world["transmission"] ** 2
    out = _render_video(world, 1, rng, keep_envelope=True)
    return {
        "echogenicity_db": 10 * np.log10(echo + 1e-12),
        "envelope": out["envelope"][0],
        "b_mode": out["image"][0] / 255.0,
        "dense": out["dense"][0],
    }

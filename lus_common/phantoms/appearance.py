"""The lung phantom's appearance: probe geometry, pulse and beam, gains, display and the look of
tissue, shadows and lung, as one set of parameters (:class:`Appearance`).

Two generators are kept, so that one run can compare them (``lus phantom-check``):

- ``"v1"``: the first generator, bit for bit (generator version 1): a letterboxed fan, a 2-cycle
  pulse, a 55-65 dB display, pitch-black rib shadows with crisp edges, bright A-lines.
- ``"calibrated"`` (the default; generator version :data:`CALIBRATED_VERSION`): ``v1`` with its
  appearance parameters fitted to the appearance statistics of real convex lung ultrasound
  (:mod:`lus_common.phantoms.calibration`, record in ``calibration.json``), and what the statistics
  showed missing: the frame as scanners display it, baseband (IQ) speckle, tissue texture and
  fascia layers in the chest wall, a reverberation haze under the pleura that fades with depth,
  streaks in it, A-lines that dim per video (bright only where the beam meets the pleura square
  on) and that may widen repeat by repeat, shadows whose edges soften with depth and that bone
  lets more echo through, sparse strong reflectors, weaker scan lines at the fan's edges, a grey
  map (gamma and floor), speckle reduction after log compression that lowers the grain's
  contrast, grows with depth and may fill the speckle's dark pits, and images below 256 pixels
  formed at 256 and resized as real frames are; since version 5 also a pleural line whose
  brightness varies along its length, bright fibres (perimysium) in the muscle and the
  subcutaneous fat's own brightness; since version 6 a pleura that under a convex probe is a
  plane (deeper towards the fan's edges, the ribs on it), not an arc around the probe, and that
  reflects specularly: its line, its haze and its A-lines dim where the beam meets it
  obliquely, so that the A-lines lie beneath the fan's middle; since version 7 a chest wall
  whose layers bend from the probe's face (the skin) to the pleura's plane and that is
  anisotropic (its echo dims where the beam meets the plane obliquely, so that the wall, like
  the lung, is brightest beneath the fan's middle); since version 8 ribs whose width and gaps
  are laid out along the pleura, at their depth, rather than on the arc of the probe's face
  (where they spanned 1.3-1.7 times their angle); since version 9 the coupling gel and the
  probe's lens, which give no echo, above a brighter skin: the skin's entry line beneath a dark
  band at the sector's top edge, as real frames show it; since version 10 ribs as wide as the
  real frames' shadows say (fitted to their width from the pixels) whose cortex reflects
  specularly, so that mostly the top of its oval surface shows. Each is fitted; some end near
  zero (the record says which values it found).

A range ``(lo, hi)`` is drawn uniformly per video; a number is fixed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from lus_common.config.registry import lookup

CALIBRATION_FILE = Path(__file__).with_name("calibration.json")
# The calibrated generator's version, raised whenever its features or its record change (2: the
# first fits; 3: speckle reduction that keeps the grain, lung streaks, A-lines that widen; 4: the
# refit with the pit share statistic; 5: the pleura's brightness along its length, fibres in the
# muscle and the fat's brightness, fitted with statistics of the chest wall's texture and the
# pleural line; 6: the flat, specular pleura under a convex probe, fitted with the lung's
# brightness beneath the fan's middle; 7: the chest wall's layers bent to that plane and its
# muscle anisotropic, fitted with the wall's brightness across the fan and near the skin; 8: the
# ribs laid out along the pleura at their depth, and a refit; 9: the coupling gel and the lens
# above the skin's entry line, fitted with the brightness beneath the sector's top edge; 10: the
# ribs' width fitted (with the rib shadows' width from the pixels) and their cortex specular).
CALIBRATED_VERSION = 10


@dataclass(frozen=True)
class Appearance:
    """Appearance parameters of :func:`lus_common.phantoms.lung_ultrasound_phantom`.

    The defaults are the first generator's (``v1``); a feature whose parameter is at its default
    draws no random number, so ``v1`` images stay bit-identical.
    """

    name: str = "v1"
    version: int = 1  # the generator version stored with the images (run keys change with it)
    # Probe geometry. Linear: depth, face width (mm); convex: depth, radius, opening angle.
    linear_depth_mm: tuple = (40.0, 60.0)
    linear_width_mm: tuple = (38.0, 46.0)
    linear_freq_mhz: tuple = (5.0, 7.5)
    convex_depth_mm: tuple = (80.0, 120.0)
    convex_freq_mhz: tuple = (3.0, 4.5)
    convex_radius_mm: tuple = (40.0, 60.0)
    convex_angle_deg: tuple = (55.0, 70.0)
    convex_radius_ratio: tuple | None = None  # radius = this x depth (else convex_radius_mm)
    fill_frame: bool = False  # the frame as scanners show it (True), or the fan letterboxed
    # Images smaller than this are formed at this size, then resized as real frames are (PIL's
    # antialiased bilinear): a small image's pixel then averages the speckle it covers (0: form
    # every image at its own size).
    render_size: int = 0
    chest_wall_mm: tuple = (10.0, 22.0)  # per patient, skin to pleura
    # Pulse and beam: axial sigma = axial_scale x a 2-cycle pulse; lateral sigma in mm. baseband:
    # the echo is formed after IQ demodulation (complex scatterers, no carrier), so the pulse may
    # be shorter than the carrier's room on the pixel grid allows (v1: an analytic RF signal).
    baseband: bool = False
    axial_scale: float = 1.0
    lateral_mm_linear: float = 0.45
    lateral_mm_convex: float = 0.8
    min_sigma_px: float = 1.2  # the beam is never narrower than this many scan lines
    min_axial_px: float = 1.0  # nor the pulse shorter than this many depth samples
    # Gains and display.
    attenuation_db_cm_mhz: tuple = (0.4, 0.6)
    tgc_fraction: float = 1.0  # share of the nominal attenuation (0.5 dB/cm/MHz) TGC restores
    gain_db: tuple = (-2.0, 3.0)
    dynamic_range_db: tuple = (55.0, 65.0)
    gamma: float = 1.0  # grey map after log compression: out = floor + (1 - floor) in ** gamma
    grey_floor: float = 0.0  # the darkest grey inside the image (scanners rarely show black)
    smoothing_px: float = 0.0  # the scanner's speckle reduction: a Gaussian of this sigma (px)
    smoothing_deep_px: float = 0.0  # the local mean's extra smoothing (px) ...
    smoothing_share_top: float = 0.0  # ... and the image's share moved to it at the top
    smoothing_share_bottom: float = 1.0  # and at the bottom (1: the smoothing widens with depth)
    pit_fill: float = 0.0  # share of the way up to the local mean where darker (dark speckle)
    edge_falloff_db: float = 0.0  # convex: weaker scan lines at the fan's edges (dB at the edge)
    # Tissue.
    gel_mm: float = 0.0  # anechoic coupling gel and lens between the probe's face and the skin
    skin_gain: float = 1.0  # the skin's echogenicity (its entry line beneath the gel), x this
    wall_gain: float = 1.0  # echogenicity of skin, fat, septa, fascia and muscle, x this
    fat_gain: float = 1.0  # and the subcutaneous fat's, x this as well (hypoechoic or grey)
    texture: float = 0.0  # std of the log echogenicity of chest-wall texture (muscle fibres, fat)
    texture_mm: tuple = (0.25, 2.5)  # its correlation lengths, axial and lateral
    muscle_fascia: tuple = (0, 0)  # extra fascia lines in the muscle, [lo, hi)
    wall_fibres: float = 0.0  # bright lines in the muscle (perimysium): echo x (1 + this) ...
    fibre_share: float = 0.05  # ... over this share of it ...
    fibre_mm: tuple = (0.1, 1.2)  # ... in patches this long, axial and lateral (Gaussian sigma)
    specks: float = 0.0  # sparse strong reflectors in tissue and lung: echo x (1 + this) ...
    speck_density: float = 0.5  # ... at this many per mm^2
    # Lung.
    pleura_variation: float = 0.0  # log std of the pleural line's brightness along its length ...
    pleura_variation_mm: float = 2.5  # ... correlated over this (Gaussian sigma)
    # Convex: the pleura is a plane the fan's beams cross at their own angles, not an arc around
    # the probe. flatness: share of the way from the arc (0) to the plane (1), beneath the
    # probe's centre at the chest wall's depth, tilted per video by up to +-pleura_tilt_deg.
    pleura_flatness: float = 0.0
    pleura_tilt_deg: float = 0.0
    # Convex: the pleura reflects specularly. Where a beam meets it this far (Gaussian sigma,
    # degrees) from square on, its line, haze and A-lines dim (0: no lobe); the line keeps
    # specular_floor of its brightness however oblique the beam.
    specular_deg: float = 0.0
    specular_floor: float = 1.0
    # Convex: the chest wall's layers lie between the skin (an arc around the probe's face) and
    # the pleura's plane: at wall_flatness 1 a layer a share t of the way down the wall lies t of
    # the plane's extra depth deeper (0: arcs around the probe, as in v1). The wall is
    # anisotropic (muscle fibres, fascia, septa): where a beam meets the plane this far (Gaussian
    # sigma, degrees) from square on, the whole wall's echo dims (0: no lobe), to
    # wall_specular_floor of it however oblique the beam.
    wall_flatness: float = 0.0
    wall_specular_deg: float = 0.0
    wall_specular_floor: float = 1.0
    aline_gain: float = 1.0  # A-line brightness relative to the reverberation model
    aline_fade: float = 1.0  # per video, A-lines x a factor drawn log-uniformly in [this, 1]
    aline_spread_mm: float = 0.0  # each A-line this much thicker than the one before (mm)
    lung_haze: float = 0.0  # echogenicity of reverberation haze under the pleura (pleura = 1)
    haze_decay_mm: float = 10.0  # its fall-off length with depth below the pleura
    lung_texture: float = 0.0  # std of the log echogenicity of the lung's reverberation streaks
    lung_texture_mm: tuple = (0.5, 4.0)  # their correlation lengths, axial and lateral
    # Ribs.
    rib_echo: float = 3.0  # echogenicity of the rib's cortex (pleura = 1)
    rib_above_mm: tuple = (3.0, 6.0)  # the rib's surface above the pleura at its middle, per rib
    rib_half_mm: tuple = (5.0, 7.0)  # half the rib's width along the pleura, drawn per video
    # The rib's cortex reflects specularly: where a beam meets its curved surface this far
    # (Gaussian sigma, degrees) from square on, its echo dims (0: no lobe), to rib_specular_floor
    # of it however oblique (its flanks); the bone still shades what lies beneath
    rib_specular_deg: float = 0.0
    rib_specular_floor: float = 1.0
    # Convex: the ribs' width and gaps laid out along the pleura, at their depth (False, v1: on
    # the arc of the probe's face, so that a rib spans (radius + depth) / radius times its angle)
    ribs_along_pleura: bool = False
    rib_transmission: float = 1e-3  # two-way amplitude passed by bone (-60 dB)
    shadow_edge_mm: float = 0.6  # width of the shadow's soft edge at the rib
    shadow_spread: float = 0.0  # extra edge width per mm of depth below the rib (diffraction)

    def as_dict(self) -> dict:
        return asdict(self)


V1 = Appearance()


def _calibrated() -> Appearance:
    """The calibrated appearance: :data:`V1` with the fitted values of ``calibration.json``."""
    record = json.loads(CALIBRATION_FILE.read_text()) if CALIBRATION_FILE.is_file() else {}
    known = {f.name for f in fields(Appearance)}
    fitted = record.get("appearance", {})
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in fitted.items()}
    unknown = set(values) - known
    if unknown:
        raise ValueError(
            f"{CALIBRATION_FILE.name}: unknown appearance parameters {sorted(unknown)}"
        )
    return replace(V1, **{**values, "name": "calibrated", "version": CALIBRATED_VERSION})


APPEARANCES = {"v1": V1, "calibrated": _calibrated()}
DEFAULT_APPEARANCE = "calibrated"


def resolve_appearance(appearance) -> Appearance:
    """An :class:`Appearance` from a name of :data:`APPEARANCES` or an instance (kept as it is)."""
    if isinstance(appearance, Appearance):
        return appearance
    return lookup(APPEARANCES, appearance, "phantom appearance", error=ValueError)

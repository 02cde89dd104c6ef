"""Homomorphic wavelet despeckling (paper 2, Cheng & Lam 2021, eq. 1) and the measures to judge it.

Speckle is multiplicative, ``f = g * eta``; the log turns it additive, ``log f = log g + log eta``,
where wavelet shrinkage of the detail coefficients removes it; ``exp`` returns to amplitudes.

The decomposition is PyWavelets' ``wavedec2``. Speckle is correlated over the PSF (several pixels),
so its energy is not concentrated in the finest sub-band as white noise's is: the noise level is
estimated per level, from that level's diagonal sub-band by the median absolute deviation
(Johnstone & Silverman 1997), not once from the finest level as for white noise. Threshold rules:

- ``"BayesShrink"``: per sub-band ``T = sigma_noise^2 / sigma_signal`` (Chang, Yu & Vetterli 2000);
- ``"VisuShrink"``: the universal threshold ``sigma_noise * sqrt(2 ln n)`` (Donoho & Johnstone
  1994).

Defaults (sym4, 4 levels, VisuShrink, hard thresholding, cycle spinning over 4 x 4 shifts) were
chosen on the lung phantom, where they raise the speckle SNR of homogeneous regions by 1.6-2.3x
while the pleural line's 10-90 % edge width stays within 10 % (``tests/test_despeckle.py``). Soft
thresholding subtracts the threshold from the pleura's large coefficients too and widened that edge
by up to 40 %; cycle spinning (averaging over shifted transforms, Coifman & Donoho 1995) removes the
blocky artefacts hard thresholding leaves.
"""

from __future__ import annotations

import numpy as np
import pywt
from skimage.restoration import cycle_spin

from lus_common.config.registry import lookup

THRESHOLD_RULES = ("BayesShrink", "VisuShrink")


def homomorphic_despeckle(
    image: np.ndarray,
    wavelet: str = "sym4",
    levels: int = 4,
    rule: str = "VisuShrink",
    mode: str = "hard",
    shifts: int = 3,
    log_input: bool = False,
) -> np.ndarray:
    """Despeckle one image or a stack ``(N, H, W)`` by wavelet shrinkage in the log domain.

    Args:
        image: amplitude image(s) (an envelope, or a B-mode image in [0, 1]); non-negative.
        wavelet: PyWavelets name, e.g. ``"db1"``, ``"db4"``, ``"sym4"``.
        levels: decomposition levels.
        rule: threshold rule, one of :data:`THRESHOLD_RULES`.
        mode: ``"soft"`` or ``"hard"`` thresholding.
        shifts: cycle spinning: average over all shifts 0..``shifts`` along both axes (0: none).
        log_input: the input is already log-compressed (an 8-bit B-mode display); then the log and
            exp steps are skipped, since log compression already made the speckle additive.

    Returns:
        float32 array of ``image``'s shape.

    Raises:
        ValueError: an unknown rule, or negative amplitudes.
    """
    lookup(THRESHOLD_RULES, rule, "threshold rule", error=ValueError)
    image = np.asarray(image, dtype=np.float64)
    if image.ndim == 3:
        return np.stack(
            [
                homomorphic_despeckle(x, wavelet, levels, rule, mode, shifts, log_input)
                for x in image
            ]
        )

    def shrink(x):
        return shrink_details(x, wavelet, levels, rule, mode)

    def denoise(x):
        return (
            cycle_spin(x, shrink, max_shifts=shifts, channel_axis=None, workers=1)
            if shifts
            else shrink(x)
        )

    if log_input:
        return denoise(image).astype(np.float32)
    if (image < 0).any():
        raise ValueError(
            "Amplitudes must be non-negative; pass log_input=True for log-compressed images."
        )
    floor = max(float(image.max()) * 1e-6, 1e-12)  # keeps log finite in black (zero) pixels
    return (np.exp(denoise(np.log(image + floor))) - floor).clip(0).astype(np.float32)


def shrink_details(image: np.ndarray, wavelet: str, levels: int, rule: str, mode: str):
    """Wavelet shrinkage of the detail coefficients of a 2-D image, with a noise level per level.

    Args:
        image: 2-D float array (additive noise).
        wavelet, levels, rule, mode: as in :func:`homomorphic_despeckle`.

    Returns:
        The reconstructed image, of ``image``'s shape.
    """
    lookup(THRESHOLD_RULES, rule, "threshold rule", error=ValueError)
    levels = max(1, min(levels, pywt.dwtn_max_level(image.shape, wavelet)))  # small images: fewer
    coeffs = pywt.wavedec2(image, wavelet, level=levels, mode="symmetric")
    out = [coeffs[0]]
    for details in coeffs[1:]:
        sigma = np.median(np.abs(details[2])) / 0.6745  # this level's noise, from its diagonal band
        shrunk = []
        for band in details:
            if rule == "VisuShrink":
                t = sigma * np.sqrt(2 * np.log(image.size))
            else:
                signal = np.sqrt(max(np.mean(band**2) - sigma**2, 0.0))
                t = sigma**2 / signal if signal > 0 else np.abs(band).max()
            shrunk.append(pywt.threshold(band, t, mode=mode))
        out.append(tuple(shrunk))
    return pywt.waverec2(out, wavelet, mode="symmetric")[: image.shape[0], : image.shape[1]]


def speckle_snr(values: np.ndarray) -> float:
    """Speckle signal-to-noise ratio ``mean / std`` of a homogeneous region (1.91 for Rayleigh
    speckle)."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean() / values.std())


def edge_width(profile: np.ndarray) -> float:
    """10-90 % rise distance (pixels, interpolated) of a 1-D profile rising to its maximum.

    Args:
        profile: values across an edge, e.g. a column-averaged depth profile ending past the pleura.

    Returns:
        Width of the rise in pixels; smaller is sharper.
    """
    p = np.asarray(profile, dtype=np.float64)[: int(np.argmax(profile)) + 1]
    q = (p - p.min()) / (p.max() - p.min())

    def crossing(level):
        i = int(np.flatnonzero(q >= level)[0])
        return i if i == 0 else i - 1 + (level - q[i - 1]) / (q[i] - q[i - 1])

    return float(crossing(0.9) - crossing(0.1))

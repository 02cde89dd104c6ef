"""Homomorphic wavelet despeckling (paper 2) measured on the lung phantom."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from lus_common.despeckle import edge_width, homomorphic_despeckle, speckle_snr
from lus_common.phantoms import lung_ultrasound_phantom


def _regions(data, k):
    """Columns clear of ribs, and the pleura's top row in each."""
    ribs = ndimage.binary_dilation(data.layers["ribs"][k].any(0), iterations=int(3 / data.spacing_mm[k, 1]))
    clear = data.layers["pleura"][k].any(0) & ~ribs
    return clear, data.layers["pleura"][k][:, clear].argmax(0)


def _patch_snr(image, clear, top, dz, n=12):
    """Mean speckle SNR of n x n patches of the lung between the pleura and the first A-line."""
    t = int(np.median(top))
    snr = [speckle_snr(image[r:r + n, c:c + n])
           for r in range(int(t + 2 / dz), int(2 * t - 2 / dz) - n, n)
           for c in range(0, image.shape[1] - n, n) if clear[c:c + n].all()]
    return float(np.mean(snr))


def _pleura_profile(image, clear, top):
    """Depth profile across the pleura's upper edge, averaged over the clear columns."""
    cols = np.flatnonzero(clear)
    return np.mean([image[t - 8:t + 3, c] for c, t in zip(cols, top)], axis=0)


@pytest.mark.parametrize("seed", [1, 4])
def test_despeckling_raises_snr_and_keeps_the_pleural_edge(seed):
    d = lung_ultrasound_phantom(8, n_patients=2, frames_per_video=4, probe="linear", diagnoses="healthy",
                                seed=seed, keep_envelope=True, n_blines=0, pleural_irregularity_mm=0.0)
    gains, widths = [], []
    for k in (0, 4):
        env = d.info["envelope"][k]
        clean = homomorphic_despeckle(env)
        clear, top = _regions(d, k)
        dz = d.spacing_mm[k, 0]
        gains.append(_patch_snr(clean, clear, top, dz) / _patch_snr(env, clear, top, dz))
        widths.append(edge_width(_pleura_profile(clean, clear, top)) / edge_width(_pleura_profile(env, clear, top)))
    assert min(gains) >= 1.5
    np.testing.assert_allclose(widths, 1.0, atol=0.20)


def test_despeckling_options_and_errors():
    rng = np.random.default_rng(0)
    speckle = np.abs(rng.standard_normal((64, 64)) + 1j * rng.standard_normal((64, 64)))
    assert speckle_snr(speckle) == pytest.approx(1.91, rel=0.1)
    for rule in ("BayesShrink", "VisuShrink"):
        out = homomorphic_despeckle(speckle, wavelet="db2", levels=2, rule=rule, mode="soft", shifts=0)
        assert out.shape == speckle.shape and speckle_snr(out) > speckle_snr(speckle)
    stack = homomorphic_despeckle(np.stack([speckle, speckle]), shifts=1)
    np.testing.assert_allclose(stack[0], stack[1])
    log_image = homomorphic_despeckle(np.log(speckle), log_input=True, shifts=0)
    assert log_image.std() < np.log(speckle).std()
    with pytest.raises(ValueError, match="threshold rule"):
        homomorphic_despeckle(speckle, rule="SureShrink")
    with pytest.raises(ValueError, match="non-negative"):
        homomorphic_despeckle(speckle - 5)


def test_edge_width_of_known_ramps():
    assert edge_width([0, 0, 0, 1, 1]) == pytest.approx(0.8)
    assert edge_width([0, 0.25, 0.5, 0.75, 1.0]) == pytest.approx(3.2)

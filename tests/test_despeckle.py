"""Homomorphic wavelet despeckling (paper 2) measured on the lung phantom."""

from __future__ import annotations

import numpy as np
import pytest

from lus_common.data.despeckle import edge_width, homomorphic_despeckle, speckle_snr
from lus_common.phantoms import checks, lung_ultrasound_phantom


@pytest.mark.parametrize("seed", [1, 4])
def test_despeckling_raises_snr_and_keeps_the_pleural_edge(seed):
    d = lung_ultrasound_phantom(
        8,
        n_patients=2,
        frames_per_video=4,
        probe="linear",
        diagnoses="healthy",
        seed=seed,
        keep_envelope=True,
        n_blines=0,
        pleural_irregularity_mm=0.0,
        appearance="v1",  # the speckle the despeckling's settings were checked on
    )
    effects = [checks.despeckle_effect(d, k) for k in (0, 4)]
    gains = [e["snr_after"] / e["snr_before"] for e in effects]
    widths = [e["edge_after_px"] / e["edge_before_px"] for e in effects]
    assert min(gains) >= 1.5
    np.testing.assert_allclose(widths, 1.0, atol=0.20)


def test_despeckling_options_and_errors():
    rng = np.random.default_rng(0)
    speckle = np.abs(rng.standard_normal((64, 64)) + 1j * rng.standard_normal((64, 64)))
    assert speckle_snr(speckle) == pytest.approx(1.91, rel=0.1)
    for rule in ("BayesShrink", "VisuShrink"):
        out = homomorphic_despeckle(
            speckle, wavelet="db2", levels=2, rule=rule, mode="soft", shifts=0
        )
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

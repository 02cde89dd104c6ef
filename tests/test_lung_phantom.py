"""The lung ultrasound phantom: physics checks with numbers, labels, videos, diagnoses."""

from __future__ import annotations

import numpy as np
import pytest

from lus_common.data.despeckle import speckle_snr
from lus_common.data.sets import split_by_group
from lus_common.phantoms import (
    DENSE_CLASSES,
    RAYLEIGH_MEAN_OVER_STD,
    SPARSE_CLASSES,
    STRUCTURES,
    bmode,
    checks,
    dense_to_sparse,
    lung_ultrasound_phantom,
)


@pytest.fixture(scope="module")
def healthy_linear():
    """Healthy lungs on a linear probe with a smooth pleura, envelopes kept; the calibrated look
    with tissue of one echogenicity (no texture), where speckle is fully developed, and A-lines at
    full strength."""
    return lung_ultrasound_phantom(
        12,
        n_patients=3,
        frames_per_video=4,
        image_size=256,
        probe="linear",
        diagnoses="healthy",
        seed=11,
        keep_envelope=True,
        n_blines=0,
        pleural_irregularity_mm=0.0,
        appearance=checks.square_on(checks.homogeneous("calibrated")),
    )


def test_rayleigh_speckle_in_the_chest_wall(healthy_linear):
    ratios = [
        speckle_snr(checks.chest_wall_speckle(healthy_linear, k))
        for k in range(len(healthy_linear))
    ]
    assert RAYLEIGH_MEAN_OVER_STD == pytest.approx(1.913, abs=1e-3)
    assert np.mean(ratios) == pytest.approx(RAYLEIGH_MEAN_OVER_STD, rel=0.10)


def test_envelope_of_uniform_scatterers_is_rayleigh():
    psf = bmode.analytic_psf_spectrum(bmode.padded_shape((256, 256)), 1.3, 2.8)
    env = bmode.envelope(np.ones((4, 256, 256), np.float32), psf, np.random.default_rng(0))
    assert env.mean() / env.std() == pytest.approx(RAYLEIGH_MEAN_OVER_STD, rel=0.05)
    assert np.mean(env**2) == pytest.approx(1.0, rel=0.05)  # the PSF is normalised to unit power


def test_gaussian_blur_as_matrix_products_equals_scipys_filter():
    from scipy import ndimage

    rng = np.random.default_rng(4)
    frames = rng.integers(0, 256, (3, 70, 50)).astype(np.float32)
    for sigma in (0.7, 2.5, 6.0):  # 6: wider than a third of the 50 columns, mirrored edges
        ref = ndimage.gaussian_filter(frames, (0, sigma, sigma), truncate=3.0)
        np.testing.assert_allclose(bmode.gaussian_blur(frames, sigma), ref, atol=2e-3)
    k = bmode.gaussian_matrix(50, 6.0)
    assert k.shape == (50, 50) and not k.flags.writeable
    np.testing.assert_allclose(k.sum(axis=0), 1.0, rtol=1e-5)  # each impulse keeps its mass


def test_without_huge_pages_switches_numpys_advice_off_and_restores_it():
    setter = np._core.multiarray._set_madvise_hugepage
    before = setter(True)
    try:
        with bmode.without_huge_pages():
            assert setter(False) is False  # off inside
        assert setter(True) is True  # the caller's setting back
    finally:
        setter(before)


def test_a_lines_at_integer_multiples_of_the_pleural_depth(healthy_linear):
    errors = checks.a_line_depth_errors(healthy_linear)
    assert len(errors.get(2, [])) > 50 and len(errors.get(3, [])) > 20
    for n, e in errors.items():
        if len(e) >= 10:
            assert abs(np.median(e)) <= 2, (n, np.median(e))


def test_a_lines_dim_per_video_and_are_labelled_only_where_they_show():
    """``aline_fade``: each video's A-lines x a factor drawn in [fade, 1]. An A-line is drawn and
    labelled only while 4x brighter than the air and the haze at its depth: at full strength the
    second one always is (0.05 x reflect^2 >= 0.01 against 4 x 0.0012), dimmed 100-fold never."""
    from dataclasses import replace

    from lus_common.phantoms.appearance import APPEARANCES

    look = replace(APPEARANCES["calibrated"], aline_gain=0.05, lung_haze=0.01, haze_decay_mm=9.0,
                   chest_wall_mm=(18.0, 22.0))  # fmt: skip
    kw = dict(n_patients=16, frames_per_video=1, image_size=128, probe="linear",
              diagnoses="healthy", seed=4, n_blines=0)  # fmt: skip
    shown = {}
    for fade in (1.0, 0.01):
        d = lung_ultrasound_phantom(16, appearance=replace(look, aline_fade=fade), **kw)
        shown[fade] = d.layers["alines"].reshape(16, -1).any(1)
    assert shown[1.0].all()
    assert shown[0.01].any() and not shown[0.01].all()
    dim = replace(look, aline_gain=0.05 * 0.01)  # every video at the faintest: none labelled
    d = lung_ultrasound_phantom(16, appearance=dim, **kw)
    assert not d.layers["alines"].any()


def test_specks_brighten_a_share_of_the_echo_map_given_by_their_density():
    """``specks``: each echo sample is a strong reflector with probability density x its area
    (mm^2), its echogenicity x (1 + specks); nothing else of the video changes."""
    from dataclasses import replace

    from lus_common.phantoms.appearance import APPEARANCES
    from lus_common.phantoms.lung import _video_world

    plain = replace(APPEARANCES["calibrated"], specks=0.0)
    worlds = [_video_world(256, 8, "linear", 20.0, "healthy", np.random.default_rng(7), {},
                           appearance=replace(plain, specks=s, speck_density=0.5))
              for s in (0.0, 9.0)]  # fmt: skip
    base, speckled = worlds
    for key in ("echo_t", "echo_l"):
        lit = base[key] > 0  # the coupling gel gives no echo to brighten
        ratio = speckled[key][lit] / base[key][lit]
        assert set(np.unique(np.round(ratio, 4))) <= {1.0, 10.0}
        share = (ratio > 5).mean()
        assert share == pytest.approx(0.5 * base["dz"] * base["ds"], rel=0.1)
    np.testing.assert_array_equal(speckled["bits_l"], base["bits_l"])  # labels unchanged


def test_each_a_line_is_wider_than_the_one_before_by_the_spread():
    """With ``aline_spread_mm``, the n-th A-line's label is spread x (n - 2) mm thicker than the
    second's: the label follows the echo it marks."""
    from dataclasses import replace

    from lus_common.phantoms.appearance import APPEARANCES

    spread = 0.6
    look = replace(APPEARANCES["calibrated"], aline_spread_mm=spread, aline_gain=1.0)
    d = lung_ultrasound_phantom(2, n_patients=2, frames_per_video=1, image_size=256,
                                probe="linear", diagnoses="healthy", seed=3, n_blines=0,
                                pleural_irregularity_mm=0.0, appearance=look)  # fmt: skip
    growth = []
    for k in range(len(d)):
        dz = d.spacing_mm[k, 0]
        for c in range(0, 256, 16):
            col = d.layers["alines"][k][:, c].astype(int)
            starts, ends = np.flatnonzero(np.diff(col) == 1), np.flatnonzero(np.diff(col) == -1)
            runs = (ends - starts[: len(ends)]) * dz  # mm, the 2nd, 3rd, ... A-line
            growth += list(np.diff(runs))
    assert len(growth) >= 20
    assert np.median(growth) == pytest.approx(spread, abs=0.6 * d.spacing_mm[:, 0].max())


@pytest.mark.parametrize("appearance", ["v1", "calibrated"])
def test_rib_shadow_is_dark(appearance):
    d = lung_ultrasound_phantom(
        16, n_patients=4, frames_per_video=4, probe="linear", seed=5, appearance=appearance
    )
    ratios = checks.rib_shadow_ratios(d)
    assert len(ratios) >= 5
    if appearance == "v1":  # the first generator's idealised, pitch-black shadows
        assert max(ratios) < 0.30
    else:  # calibrated: filled in and soft-edged as in real frames, darker than beside on the
        # whole; bone passes -20 dB, so beside a dark lung (A-lines dimmed, no haze left) one
        # video's shadow is as bright as the lung (1.19 here, a COVID-19 video)
        assert np.median(ratios) < 0.8 and np.mean(ratios) < 0.9 and max(ratios) < 1.5


def test_b_lines_do_not_fade_with_depth():
    """The first generator, whose TGC restores every depth: B-lines keep their brightness."""
    d = lung_ultrasound_phantom(
        16, n_patients=4, frames_per_video=4, probe="linear", diagnoses="COVID-19", seed=7,
        appearance="v1",
    )  # fmt: skip
    ratios = checks.b_line_depth_ratios(d)
    assert len(ratios) >= 5
    np.testing.assert_allclose(ratios, 1.0, atol=0.20)


def test_calibrated_b_lines_reach_the_bottom():
    """Calibrated: a narrower display shows the TGC's error as some fall-off, but B-lines still
    stand out from the lung beside them at the bottom of the image."""
    d = lung_ultrasound_phantom(
        16, n_patients=4, frames_per_video=4, probe="linear", diagnoses="COVID-19", seed=7
    )
    size, contrast = d.images.shape[1], []
    for k in range(len(d)):
        bl = d.layers["blines"][k].astype(bool)
        lung = (d.layers["dense"][k] > 0) & ~bl & ~d.layers["rib_shadow"][k].astype(bool)
        bottom = np.arange(size)[:, None] >= size - size // 10
        if (bl & bottom).sum() > 50 and (lung & bottom).sum() > 50:
            contrast.append(d.images[k][bl & bottom].mean() / d.images[k][lung & bottom].mean())
    assert len(contrast) >= 5 and min(contrast) > 1.5


def test_same_seed_same_images_and_different_seeds_differ():
    a = lung_ultrasound_phantom(20, frames_per_video=8, image_size=128, seed=3)
    b = lung_ultrasound_phantom(20, frames_per_video=8, image_size=128, seed=3)
    c = lung_ultrasound_phantom(20, frames_per_video=8, image_size=128, seed=4)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.layers["dense"], b.layers["dense"])
    assert np.abs(a.images - c.images).mean() > 0.05


def test_labels_are_consistent_with_paper_5():
    d = lung_ultrasound_phantom(48, frames_per_video=8, image_size=128, seed=2)
    dense, sparse = d.layers["dense"], d.layers["sparse"]
    assert len(DENSE_CLASSES) == 7 and len(SPARSE_CLASSES) == 4
    assert set(np.unique(dense)) <= set(range(7)) and set(np.unique(dense)) >= {0, 1, 3, 5}
    # Sparse labels: pleura classes merged, healthy and unhealthy regions into background.
    np.testing.assert_array_equal(sparse, dense_to_sparse(dense))
    np.testing.assert_array_equal(sparse == 3, np.isin(dense, (3, 4)))
    np.testing.assert_array_equal(sparse == 0, np.isin(dense, (0, 5, 6)))
    # The structure masks and the dense classes come from the same maps.
    np.testing.assert_array_equal(d.layers["alines"] == 1, dense == 1)
    np.testing.assert_array_equal(d.layers["blines"] == 1, dense == 2)
    np.testing.assert_array_equal(d.layers["pleura"] == 1, np.isin(dense, (3, 4)))
    assert not (d.layers["consolidation"].astype(bool) & ~np.isin(dense, (6,))).any()
    assert not (d.layers["ribs"].astype(bool) & (dense != 0)).any()
    np.testing.assert_array_equal(d.masks, d.layers["pleura"])
    assert d.synthetic and d.label == "SYNTHETIC phantom"
    assert set(STRUCTURES) <= set(d.layers)


def test_diagnoses_follow_their_rules():
    d = lung_ultrasound_phantom(96, n_patients=12, frames_per_video=4, image_size=128, seed=9)
    per_video = d.meta.groupby("video").first()
    assert set(per_video["diagnosis"]) == {"healthy", "COVID-19", "pneumonia"}
    healthy = per_video[per_video["diagnosis"] == "healthy"]
    covid = per_video[per_video["diagnosis"] == "COVID-19"]
    pneu = per_video[per_video["diagnosis"] == "pneumonia"]
    assert (healthy["n_blines"] <= 2).all() and (healthy["consolidations"] == 0).all()
    assert (covid["n_blines"] >= 3).all()
    assert (pneu["consolidations"] == 1).all()
    cons = d.layers["consolidation"].reshape(len(d), -1).sum(1)
    is_healthy = (d.meta["diagnosis"] == "healthy").to_numpy()
    assert (
        cons[is_healthy].sum() == 0
        and cons[(d.meta["diagnosis"] == "pneumonia").to_numpy()].mean() > 100
    )
    # Unhealthy pleura (B-lines or consolidation beneath) is rarer in healthy lungs.
    unhealthy = (d.layers["dense"] == 4).reshape(len(d), -1).sum(1)
    assert unhealthy[is_healthy].mean() < 0.5 * unhealthy[~is_healthy].mean()


def test_videos_share_anatomy_and_ids_allow_patient_and_video_splits():
    d = lung_ultrasound_phantom(
        64, n_patients=4, frames_per_video=8, image_size=128, probe="linear", seed=1
    )
    m = d.meta
    assert m.groupby("video")["patient"].nunique().max() == 1
    assert (m.groupby("video")["frame"].apply(list) == [list(range(8))] * 8).all()
    same = np.corrcoef(d.images[0].ravel(), d.images[1].ravel())[0, 1]
    other = np.corrcoef(d.images[0].ravel(), d.images[8].ravel())[0, 1]
    assert same > 0.5 > other
    # Frames differ (lung sliding, redrawn speckle) but not entirely.
    assert 0 < np.abs(d.images[0] - d.images[1]).mean() < np.abs(d.images[0] - d.images[8]).mean()
    train, test = split_by_group(d.groups, 0.25, seed=0)
    assert not set(m["patient"][train]) & set(m["patient"][test])
    train, test = split_by_group(m["video"], 0.25, seed=0)
    assert not set(m["video"][train]) & set(m["video"][test])


@pytest.mark.parametrize("appearance", ["v1", "calibrated"])
def test_convex_probe_is_a_sector_with_black_corners(appearance):
    d = lung_ultrasound_phantom(
        4, frames_per_video=4, n_patients=1, image_size=128, probe="convex", seed=0,
        appearance=appearance,
    )  # fmt: skip
    assert (d.images[:, 0, :8] == 0).all() and (d.images[:, -1, :4] == 0).all()  # outside the fan
    assert d.images[:, 64, 64].min() > 0
    assert (d.layers["dense"][:, 0, :8] == 0).all()
    square = np.allclose(d.spacing_mm[:, 0], d.spacing_mm[:, 1])
    # v1 letterboxes the fan with square pixels; the calibrated frame is the scanner's, squeezed
    assert square == (appearance == "v1")
    if appearance == "calibrated":
        assert (d.images[:, 0, 64] > 0).all()  # depth 0 of the centre line is the top row
        assert d.images[0, :, :2].any()  # the fan's deep corners reach the sides


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match="Unknown target"):
        lung_ultrasound_phantom(4, target="heart")
    with pytest.raises(ValueError, match="Unknown diagnosis"):
        lung_ultrasound_phantom(4, diagnoses="flu")
    with pytest.raises(ValueError, match="Unknown severity"):
        lung_ultrasound_phantom(4, n_consolidations=2)
    with pytest.raises(ValueError, match="patients"):
        lung_ultrasound_phantom(16, n_patients=5, frames_per_video=8)


def test_paper_1_sized_set_is_possible():
    """5,131 frames of 30 COVID-19 patients: timing goes to `lus bench`, here the shape and ids."""
    d = lung_ultrasound_phantom(
        5131,
        n_patients=30,
        frames_per_video=40,
        image_size=64,
        diagnoses="COVID-19",
        target="artifacts",
        seed=0,
    )
    assert len(d) == 5131 and d.meta["patient"].nunique() == 30
    assert d.masks.mean() > 0.02


def test_dense_to_sparse_merge_rule_on_a_hand_built_map():
    """Paper 5: healthy and unhealthy pleural line -> pleural line; healthy and unhealthy region ->
    background; A-line, B-line and background stay."""
    dense = np.array([[0, 1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1, 0]], np.uint8)[None]
    sparse = dense_to_sparse(dense)
    names = [[SPARSE_CLASSES[k] for k in row] for row in sparse[0]]
    assert names[0] == ["background", "A-line", "B-line", "pleural line", "pleural line",
                        "background", "background"]  # fmt: skip
    assert names[1] == names[0][::-1] and sparse.shape == dense.shape
    assert [DENSE_CLASSES[k] for k in (3, 4, 5, 6)] == [
        "healthy pleural line", "unhealthy pleural line", "healthy region", "unhealthy region"
    ]  # fmt: skip

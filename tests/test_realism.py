"""How real is the lung phantom: the appearance statistics, the calibrated generator beside the
first one, the domain classifier and the sim-to-real check."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import ndimage

from lus_common.phantoms import bmode, calibration, lung_ultrasound_phantom, realism
from lus_common.phantoms.appearance import APPEARANCES, CALIBRATION_FILE, V1, resolve_appearance


def test_v1_is_the_first_generator_bit_for_bit():
    """Numbers of the generator before the appearance parameters existed (commit 0214443, same
    call): the first generator is kept, so its stored runs stay valid."""
    recorded = {
        "linear": (0.42759437753649365, 0.23513942453721842, 672, 93800, 208),
        "convex": (0.15959736842346217, 0.2518853923800754, 68, 45911, 120),
    }
    for probe, (mean, std, pleura, dense, rib_body) in recorded.items():
        d = lung_ultrasound_phantom(
            8, frames_per_video=4, image_size=64, probe=probe, seed=5, appearance="v1"
        )
        assert d.images.astype(np.float64).mean() == pytest.approx(mean, rel=1e-6)
        assert d.images.astype(np.float64).std() == pytest.approx(std, rel=1e-6)
        assert int(d.layers["pleura"].sum()) == pleura
        assert int(d.layers["rib_body"].sum()) == rib_body
        assert int(d.layers["dense"].astype(np.int64).sum()) == dense
        assert d.info["version"] == 1 and d.info["appearance"] == "v1"


def test_calibrated_is_the_default_and_a_new_version():
    d = lung_ultrasound_phantom(4, frames_per_video=4, image_size=64, probe="convex", seed=5)
    assert d.info["appearance"] == "calibrated" and d.info["version"] == 10
    v1 = lung_ultrasound_phantom(4, frames_per_video=4, image_size=64, probe="convex", seed=5,
                                 appearance="v1")  # fmt: skip
    assert d.fingerprint() != v1.fingerprint()  # stored runs of the old images are not reused
    with pytest.raises(ValueError, match="Unknown phantom appearance"):
        lung_ultrasound_phantom(4, appearance="v3")


def test_calibration_record_is_what_the_calibrated_appearance_uses():
    record = json.loads(CALIBRATION_FILE.read_text())
    cal = APPEARANCES["calibrated"]
    for name, value in record["appearance"].items():
        got = getattr(cal, name)
        assert (list(got) if isinstance(got, tuple) else got) == value, name
        assert getattr(V1, name) != got, name  # only what the fit changed is recorded
    assert record["objective"]["calibrated"] < record["objective"]["v1"]
    # the fitted values lie inside the stated search ranges
    for name, r in calibration.SEARCH.items():
        assert 0.0 <= record["units"][name] <= 1.0
        value = getattr(cal, name)
        centre = np.mean(value) if isinstance(value, tuple) else value
        assert r.lo - 1e-9 <= centre <= r.hi + 1e-9, name


def test_an_earlier_fit_starts_a_refit_in_todays_ranges():
    """A record's values become unit coordinates of today's search: a range by its middle, a
    value outside a range clipped to its end, a parameter the record lacks at the first
    generator's value; and back to the same values."""
    r = calibration.SEARCH
    values = {"chest_wall_mm": [r["chest_wall_mm"].hi + 2, r["chest_wall_mm"].hi + 12],
              "gamma": 1.3, "rib_transmission": 0.01}  # fmt: skip
    units = calibration.units_of(values)
    assert set(units) == set(r)
    assert units["chest_wall_mm"] == 1.0  # the middle (hi + 7) clipped to hi
    assert r["gamma"].value(units["gamma"]) == pytest.approx(1.3)
    assert r["rib_transmission"].value(units["rib_transmission"]) == pytest.approx(0.01)  # log
    assert r["dynamic_range_db"].value(units["dynamic_range_db"]) == pytest.approx(60.0)  # v1's


def test_peaks_are_found_between_rows():
    """The physics check's A-line and pleura depths: a sampled parabola's vertex, exactly."""
    from lus_common.phantoms.checks import _peak

    rows = np.arange(12.0)
    assert _peak(-((rows - 5.3) ** 2)) == pytest.approx(5.3)
    assert _peak(-((rows - 7.5) ** 2)) == pytest.approx(7.5)
    assert _peak(rows) == 11.0  # at an end: the end itself


def test_a_filled_fan_touches_the_frame_and_has_non_square_pixels():
    g = bmode.sector_geometry(128, 45.0, 95.0, 60.0, fill=True)
    inside = g["inside"]
    assert inside[:, :2].any() and inside[:, -2:].any()  # the deep corners reach the sides
    assert inside[-2, 64] and not inside[-2, 0]  # the deepest arc at the bottom
    # a flat top at depth 0 of the centre line, as wide as the fan there: 2 R tan(half angle)
    half = np.deg2rad(30)
    dy, dx = g["spacing_yx_mm"]
    assert inside[0].sum() * dx == pytest.approx(2 * 45 * np.tan(half), abs=2 * dx)
    assert dx == pytest.approx(2 * 140 * np.sin(half) / 128)
    assert dy == pytest.approx(95 / 128)
    letterbox = bmode.sector_geometry(128, 45.0, 95.0, 60.0)
    assert letterbox["spacing_yx_mm"][0] == letterbox["spacing_yx_mm"][1]
    assert inside.mean() > letterbox["inside"].mean() + 0.1


def test_sector_masks_recover_the_fan():
    d = lung_ultrasound_phantom(8, n_patients=2, frames_per_video=4, image_size=128,
                                probe="convex", seed=1)  # fmt: skip
    inside = realism.sector_masks(d.images, d.meta["video"])
    assert resolve_appearance("calibrated").fill_frame
    for k in (0, 4):
        found = inside[k]
        # the true fan: wherever the frames of this video are not zero-filled by scan conversion
        lit = (d.images[d.meta["video"] == d.meta["video"][k]] > 0).any(0)
        assert (found & lit).sum() / (found | lit).sum() > 0.95
    linear = np.random.default_rng(0).uniform(0.1, 1, (3, 32, 40))
    assert realism.sector_masks(linear, ["a", "a", "b"]).all()


def test_statistics_measure_known_images():
    rng = np.random.default_rng(0)
    n, h, w = 6, 128, 128
    flat = np.full((n, h, w), 0.3, np.float32)
    flat[:, 40:43] = 0.9  # a bright layer at 40/128 of the depth
    noise = ndimage.gaussian_filter(rng.standard_normal((n, h, w)), (0, 3.0, 1.0))
    images = np.clip(flat + 0.1 * noise / noise.std(), 0.01, 1).astype(np.float32)
    table, arrays = realism.frame_statistics(images, ["v"] * n)
    assert table["sector_fraction"].min() == 1.0
    assert table["layer_depth"].mean() == pytest.approx(41.5 / 127, abs=1 / 60)
    # speckle size: texture three times longer axially (rows) than laterally, and white noise
    texture = np.clip(0.3 + 0.1 * noise / noise.std(), 0.01, 1).astype(np.float32)
    t, _ = realism.frame_statistics(texture, ["v"] * n)
    assert t["speckle_axial_px"].mean() > 2 * t["speckle_lateral_px"].mean()
    white = np.clip(0.3 + 0.1 * rng.standard_normal((n, h, w)), 0.01, 1).astype(np.float32)
    t, _ = realism.frame_statistics(white, ["v"] * n)
    assert t["speckle_axial_px"].max() < 2 and t["speckle_lateral_px"].max() < 2
    # fine texture over brightness: white noise of std 0.1 on 0.3, less the share a Gaussian of
    # sigma 2 keeps (std x sqrt(1 - 2 g(0) + sum g^2) = x 0.970), in both lung bands
    for band in realism.LUNG_BANDS:
        assert t[f"fine_cv_{band}"].mean() == pytest.approx(0.1 * 0.970 / 0.3, rel=0.03)
    assert arrays["histogram"].shape == (n, realism.HIST_BINS)
    np.testing.assert_allclose(arrays["histogram"].sum(1), 1.0)
    # the same frames compare as equal; brighter ones by their shift
    same = realism.summarise(images, ["v"] * n)
    table, dist = realism.compare_statistics(same, same)
    assert np.abs(table["z"]).max() == 0 and dist["histogram_w1"] == 0
    brighter = realism.summarise(np.clip(images + 0.1, 0, 1), ["v"] * n)
    table, dist = realism.compare_statistics(brighter, same)
    assert table.loc["grey_mean", "phantom"] - table.loc["grey_mean", "real"] == pytest.approx(
        0.1, abs=0.01
    )
    assert dist["histogram_w1"] == pytest.approx(0.1, abs=0.02)


def test_aline_ripple_measures_bands_in_the_depth_profile():
    """A grey of 0.5 with bands of amplitude 0.1 every 12 rows: the ripple is the bands' std
    (0.1 / sqrt(2), less the 0.949 a depth bin of 256 / 120 rows keeps of them) over the mean."""
    rows = np.arange(256, dtype=np.float32)[None, :, None]
    flat = np.full((2, 256, 128), 0.5, np.float32)
    banded = flat + 0.1 * np.cos(2 * np.pi * rows / 12) * np.ones_like(flat)
    t, _ = realism.frame_statistics(banded, ["v"] * 2)
    keep = np.sinc((256 / 120) / 12)  # a bin's average of a cosine
    assert t["aline_ripple"].mean() == pytest.approx(0.1 * keep / np.sqrt(2) / 0.5, rel=0.05)
    t, _ = realism.frame_statistics(flat, ["v"] * 2)
    assert t["aline_ripple"].max() == pytest.approx(0.0, abs=1e-6)


def test_grain_and_skew_of_the_lung_texture():
    """Grain: white noise is all fine detail, noise smoothed along one axis has little along that
    axis. Skew: sparse bright specks on a flat ground skew the fine texture right, sparse dark
    pits left, by the same amount; the pits are counted as pits."""
    rng = np.random.default_rng(2)
    n, h, w = 2, 192, 128
    noise = rng.standard_normal((n, h, w)).astype(np.float32)
    white = 0.3 + 0.05 * noise
    streaks = 0.3 + 0.05 * ndimage.gaussian_filter(noise, (0, 0, 3.0)) / 0.1  # long laterally
    g_white, _ = realism.frame_statistics(white, ["v"] * n)
    g_streak, _ = realism.frame_statistics(streaks.astype(np.float32), ["v"] * n)
    assert g_white["grain_axial"].mean() > 2 and g_white["grain_lateral"].mean() > 2
    assert g_streak["grain_lateral"].mean() < 0.5 < 2 < g_streak["grain_axial"].mean()
    specks = rng.random((n, h, w)) < 0.01
    bright = np.where(specks, 0.6, 0.3).astype(np.float32)
    dark = np.where(specks, 0.05, 0.3).astype(np.float32)  # lit: the sector is found
    t_bright, _ = realism.frame_statistics(bright, ["v"] * n)
    t_dark, _ = realism.frame_statistics(dark, ["v"] * n)
    assert t_bright["fine_skew"].mean() > 5
    assert t_dark["fine_skew"].mean() == pytest.approx(-t_bright["fine_skew"].mean(), rel=0.15)
    # pits: every dark speck (0.05 on 0.3) is below half its local mean, and only they are
    assert t_dark["pit_share"].mean() == pytest.approx(specks.mean(), rel=0.2)
    assert t_bright["pit_share"].max() == 0


def test_brightest_layer_is_the_pleura_or_the_ribs_just_above_it():
    d = lung_ultrasound_phantom(24, n_patients=6, frames_per_video=4, image_size=128,
                                probe="convex", diagnoses="healthy", seed=2)  # fmt: skip
    table, _ = realism.frame_statistics(d.images, d.meta["video"])
    inside = realism.sector_masks(d.images, d.meta["video"])
    truth = [
        np.nanmedian(realism.depth_fraction(inside[k])[d.layers["pleura"][k] > 0])
        for k in range(len(d))
    ]
    # the rib's surface lies 3-6 mm above the pleura: within 0.08 of the depth
    assert np.nanmedian(np.abs(table["layer_depth"] - np.array(truth))) < 0.05
    assert (table["layer_depth"] <= np.array(truth) + 0.05).mean() > 0.8


def test_rib_shadow_label_lies_under_ribs_and_is_dark():
    d = lung_ultrasound_phantom(16, n_patients=4, frames_per_video=4, image_size=128,
                                probe="linear", seed=5)  # fmt: skip
    shadow, bone = d.layers["rib_shadow"].astype(bool), d.layers["rib_body"].astype(bool)
    with_rib = bone.reshape(len(d), -1).any(1)
    assert with_rib.sum() >= 8
    assert not (shadow & d.layers["pleura"].astype(bool)).any()  # the pleura is not seen there
    ratios = []
    for k in np.flatnonzero(with_rib):
        cols = shadow[k].any(0)
        assert (bone[k].any(0) <= ndimage.binary_dilation(cols, iterations=3)).all()
        below = np.arange(128)[:, None] > np.flatnonzero(bone[k].any(1)).max()
        beside = ~shadow[k] & below & ~ndimage.binary_dilation(shadow[k], iterations=4)
        ratios.append(d.images[k][shadow[k] & below].mean() / d.images[k][beside].mean())
    # filled in and soft-edged (calibrated), yet darker than beside on the whole; beside a dark
    # lung (A-lines dimmed) one video's shadow is about as bright (1.06 here, a COVID-19 video)
    assert np.median(ratios) < 0.8 and np.mean(ratios) < 0.9 and max(ratios) < 1.5


def test_thicken_grows_band_labels_to_the_annotated_thickness():
    m = np.zeros((1, 20, 6), np.uint8)
    m[0, 9:11] = 1
    assert realism.label_thickness_px(m) == 2
    t = realism.thicken(m, 6.0)
    assert realism.label_thickness_px(t) == 6 and (t >= m).all()
    assert (realism.thicken(m, 1.0) == m).all()


def test_domain_classifier_tells_obvious_domains_apart():
    d = lung_ultrasound_phantom(48, n_patients=6, frames_per_video=8, image_size=48,
                                probe="convex", seed=3)  # fmt: skip
    groups = list(d.meta["video"])
    other = 1 - d.images  # the same frames, inverted: nothing alike
    p = dict(realism.CHECK_PROFILES["smoke"], domain_epochs=3)
    out = realism.domain_auc(d.images, groups, other, groups, p, "cpu")
    assert out["auc"] > 0.9
    assert out["frames"] == {"phantom": 48, "real": 48}


def test_domain_classifier_over_seeds_is_the_mean_of_each_seeds_run():
    d = lung_ultrasound_phantom(24, n_patients=4, frames_per_video=6, image_size=32,
                                probe="convex", seed=3)  # fmt: skip
    groups = list(d.meta["video"])
    other = np.clip(d.images * 1.6, 0, 1)  # brighter: close enough that seeds differ
    p = dict(realism.CHECK_PROFILES["smoke"], domain_epochs=2, seed=4)
    out = realism.domain_auc(d.images, groups, other, groups, p, "cpu", seeds=2)
    each = [realism.domain_auc(d.images, groups, other, groups, {**p, "seed": s}, "cpu")
            for s in (4, 5)]  # fmt: skip
    assert out["seeds"] == 2 and out["auc_seeds"] == [e["auc"] for e in each]
    assert out["auc"] == pytest.approx(np.mean(out["auc_seeds"]))
    assert out["log_loss"] == pytest.approx(np.mean([e["log_loss"] for e in each]))
    assert out["auc_folds"] == each[0]["auc_folds"] + each[1]["auc_folds"]
    assert out["auc_by_epoch"] == pytest.approx(
        np.mean([e["auc_by_epoch"] for e in each], 0), abs=1e-4
    )
    assert "seeds" not in each[0]  # one seed: the result as before


def test_auc_texts_keep_a_near_one_mean_apart_from_one():
    assert realism.auc_text({"auc": 0.99963}) == "0.9996"
    assert realism.auc_text({"auc": 1.0}) == "1.000" and realism.auc_text({"auc": 0.98}) == "0.980"
    three = {"auc": 0.99953, "seeds": 3, "auc_seeds": [0.9989, 0.9997, 1.0]}
    assert realism.spread_text(three) == "mean of 3 classifier seeds: 0.999, 0.9997, 1.000"
    assert realism.spread_text({"auc_folds": [0.4, 0.6]}) == "folds: 0.40, 0.60"


def test_domain_classifier_by_depth_finds_the_band_that_differs():
    d = lung_ultrasound_phantom(48, n_patients=6, frames_per_video=8, image_size=48,
                                probe="convex", seed=3)  # fmt: skip
    groups = list(d.meta["video"])
    other = d.images.copy()
    other[:, 32:] = 1 - other[:, 32:]  # only the bottom third differs
    p = dict(realism.CHECK_PROFILES["smoke"], domain_epochs=3)
    out = realism.domain_auc_by_depth(d.images, groups, other, groups, p, "cpu")
    assert [out[b]["rows"] for b in ("top", "middle", "bottom")] == [[0, 15], [16, 31], [32, 47]]
    assert out["bottom"]["auc"] > 0.9
    assert out["bottom"]["auc"] > max(out["top"]["auc"], out["middle"]["auc"]) + 0.2


def test_scale_views_keep_one_scale():
    rows, cols = np.indices((64, 64))
    checker = ((rows + cols) % 2 * 0.2 + 0.4)[None].astype(np.float32)  # finest detail only
    ramp = np.linspace(0, 1, 64, dtype=np.float32)[None, None].repeat(64, 1)  # layout only
    fan = np.ones((64, 64), bool)
    assert np.allclose(realism.scale_view(checker, "coarse", fan), 0.5)  # 4 x 4 px block means
    coarse = realism.scale_view(ramp, "coarse", fan)[0]
    assert np.allclose(coarse[:, :4], ramp[0, 0, :4].mean()) and len(np.unique(coarse)) == 16
    fine = realism.scale_view(checker, "fine", fan)[0]
    assert np.abs(fine[20:44, 20:44] - 0.5).mean() == pytest.approx(0.1, abs=0.01)
    # a ramp has no texture: its fine view is 0.5 away from the frame's edges
    assert np.abs(realism.scale_view(ramp, "fine", fan)[0, 20:44, 20:44] - 0.5).max() < 1e-3
    # frames stay apart: two constant frames keep their own block means and no texture
    two = np.stack([np.full((64, 64), 0.2), np.full((64, 64), 0.8)]).astype(np.float32)
    assert np.allclose(realism.scale_view(two, "coarse", fan), two)
    assert np.allclose(realism.scale_view(two, "fine", fan), 0.5, atol=1e-5)
    # outside the fan shrunk by 2 sigma (2 x 1.6 px: 4 erosions) all is 0.5
    fine = realism.scale_view(checker, "fine", rows < 40)[0]
    assert np.allclose(fine[36:], 0.5) and not np.allclose(fine[34], 0.5)
    with pytest.raises(ValueError, match="Known scale views"):
        realism.scale_view(checker, "medium", fan)
    with pytest.raises(ValueError, match="16 x 16 blocks"):
        realism.scale_view(np.zeros((1, 60, 60), np.float32), "coarse", fan)


def test_domain_classifier_by_scale_finds_the_scale_that_differs():
    d = lung_ultrasound_phantom(48, n_patients=6, frames_per_video=8, image_size=64,
                                probe="convex", seed=3)  # fmt: skip
    groups = list(d.meta["video"])
    rows, cols = np.indices((64, 64))
    other = d.images + ((rows + cols) % 2 - 0.5) * 0.4 * (d.images > 0)  # a fine checker added
    p = dict(realism.CHECK_PROFILES["smoke"], domain_epochs=3)
    out = realism.domain_auc_by_scale(d.images, groups, other, groups, p, "cpu")
    assert out["fine"]["auc"] > 0.9
    assert out["fine"]["auc"] > out["coarse"]["auc"] + 0.2


def test_sim_to_real_trains_each_seed_on_its_own_phantom_draw(monkeypatch):
    drawn, trained = {}, []

    def draw(seed):
        drawn[seed] = realism.healthy_convex_phantom("calibrated", 2, 3, 64, seed)
        return drawn[seed]

    train = realism._train_segmenter

    def spy(images, masks, p, seed, device):
        trained.append((seed, images, masks))
        return train(images, masks, p, seed, device)

    monkeypatch.setattr(realism, "_train_segmenter", spy)
    real = realism.healthy_convex_phantom("calibrated", 2, 3, 64, 99)  # stands in: same names
    p = dict(realism.CHECK_PROFILES["smoke"], seg_seeds=2, seg_epochs=1, seed=5)
    out = realism.sim_to_real(draw, real, ("rib_shadow",), p, "cpu")
    assert [s for s, *_ in trained] == [5, 6] == sorted(drawn)
    assert all(images is drawn[s].images for s, images, _ in trained)  # each seed its own draw
    # the labels as the annotators draw them: the central space's two ribs, no other
    for s, _, masks in trained:
        central = realism.central_space(drawn[s].layers)["rib_shadow"]
        np.testing.assert_array_equal(masks[:, 0], central)
    assert out["central"] is True
    assert not np.array_equal(drawn[5].images, drawn[6].images)
    assert out["phantom_per_seed"] is True and len(out["rib_shadow"]["dice_seeds"]) == 2
    assert out["rib_shadow"]["dice"] == pytest.approx(np.mean(out["rib_shadow"]["dice_seeds"]))
    fixed = realism.sim_to_real(drawn[5], real, ("rib_shadow",), dict(p, seg_seeds=2), "cpu")
    assert fixed["phantom_per_seed"] is False
    assert all(images is drawn[5].images for _, images, _ in trained[2:])  # the same frames twice
    every = realism.sim_to_real(drawn[5], real, ("rib_shadow",), dict(p, seg_seeds=1), "cpu",
                                central=False)  # fmt: skip
    np.testing.assert_array_equal(trained[-1][2][:, 0], drawn[5].layers["rib_shadow"])
    assert every["central"] is False
    assert drawn[5].layers["rib_shadow"].sum() > trained[2][2].sum()  # some rib was left out


def test_calibrated_phantom_is_closer_to_real_frames(real_pleura_rib):
    from lus_common.data.lus_pleura_rib import load_lus_pleura_rib

    real = load_lus_pleura_rib(real_pleura_rib, image_size=256)
    summary = realism.summarise(real.images, real.groups)
    scores = {}
    for name in ("v1", "calibrated"):
        images, videos = calibration.phantom_frames(APPEARANCES[name], 256, seed=7)
        scores[name] = calibration.objective(realism.summarise(images, videos), summary)
    assert scores["calibrated"][0] < 0.2 * scores["v1"][0]  # other frames than the fit's seed
    assert scores["calibrated"][1]["mean_abs_z"] < 0.4 * scores["v1"][1]["mean_abs_z"]
    assert scores["calibrated"][1]["histogram_w1"] < 0.5 * scores["v1"][1]["histogram_w1"]
    record = json.loads(CALIBRATION_FILE.read_text())
    assert record["real_data"]["fingerprint"] == real.fingerprint()


def test_fit_sector_finds_a_drawn_fan():
    g = bmode.sector_geometry(96, 0.4 * 90, 90, 64, fill=True)
    fit = calibration.fit_sector(g["inside"], 96)
    assert fit["radius_over_depth"] == pytest.approx(0.4, abs=0.021)
    assert fit["angle_deg"] == pytest.approx(64, abs=1.01)
    assert fit["iou"] > 0.98


def test_phantom_check_command_prints_one_json_line(real_pleura_rib, real_pocus, tmp_path, capsys):
    from lus_common.app.cli import main

    out = tmp_path / "check.json"
    code = main(["phantom-check", "--real", str(real_pleura_rib), "--profile", "smoke",
                 "--other-real", str(real_pocus), "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    line = json.loads(lines[0])
    for g in ("v1", "calibrated"):
        assert 0.0 <= line[g]["domain_auc"] <= 1.0
        assert set(line[g]["sim_to_real_dice"]) == {"pleural_line", "rib_shadow"}
        assert set(line[g]["domain_auc_by_depth"]) == {"top", "middle", "bottom"}
        assert set(line[g]["domain_auc_by_scale"]) == {"coarse", "fine"}
    assert set(line["real_to_real_dice"]) == {"pleural_line", "rib_shadow"}
    doc = realism.read_check(out)
    assert doc["real"]["frames"] == 156 and doc["real"]["clips"] == 12
    assert doc["params"]["labels"] == "central"
    assert doc["command"].startswith("lus phantom-check --real")
    assert {r["statistic"] for r in doc["statistics"]} == set(realism.STATISTICS)
    assert set(realism.STATISTICS) <= set(realism.STAT_LABELS)  # every row of the table named
    # every real frame with the structure is scored once, held out, by the ceiling
    assert doc["ceiling"]["rib_shadow"]["frames"] == 148
    assert doc["generators"]["calibrated"]["sim_to_real"]["pleural_line"]["frames"] == 156
    # the other real source: as many healthy convex POCUS clips and frames per clip as the real set
    other = doc["other_real"]
    assert other["clips"] == 12 and other["frames"] <= 156
    assert 0.0 <= line["other_real"]["domain_auc"] <= 1.0
    assert set(realism.domain_curves(doc)) == {"v1", "calibrated", "other real", "real halves"}
    # the null reference: the volunteer's left-side clips against the right-side ones
    same = doc["same_source"]
    assert same["split"] == "left-side clips vs right-side clips"
    assert same["clips"] == [6, 6] and same["frames"] == [78, 78]
    assert line["same_source"]["domain_auc"] == pytest.approx(same["domain"]["auc"], abs=1e-4)
    bands = realism.depth_bands_frame(doc)
    assert len(bands) == 9 and bands["domain AUC"].between(0, 1).all()
    scales = realism.scale_views_frame(doc)
    assert len(scales) == 6 and scales["domain AUC"].between(0, 1).all()
    assert len(realism.scores_frame(doc)) == 4
    found = realism.findings(doc)
    assert any(f.startswith("**Where it tells.**") for f in found)
    assert any(f.startswith("**Two real sources.**") for f in found)
    assert any(f.startswith("**One source, two halves.**") for f in found)
    assert any(f.startswith("**Layout or texture.**") for f in found)
    # where the rib shadows lie: the real masks and each generator's labels, measured alike
    assert doc["real"]["shadow_layout"]["frames"] == 156
    assert doc["real"]["shadow_layout"]["per_frame"] > 1
    assert all(doc["generators"][g]["shadow_layout"]["frames"] > 0 for g in ("v1", "calibrated"))
    assert any(f.startswith("**Where the ribs lie.**") for f in found)


def test_parse_changes_reads_appearance_fields():
    assert realism.parse_changes("specks=30, speck_density=0.23") == {
        "specks": 30.0, "speck_density": 0.23}  # fmt: skip
    assert realism.parse_changes("gain_db=-1:9.5") == {"gain_db": (-1.0, 9.5)}
    with pytest.raises(ValueError, match="not an appearance field; one of: .*aline_gain"):
        realism.parse_changes("sparkle=1")
    with pytest.raises(ValueError, match="write NAME=VALUE"):
        realism.parse_changes("specks")
    with pytest.raises(ValueError, match="not a number"):
        realism.parse_changes("specks=lots")
    with pytest.raises(ValueError, match="gain_db takes LO:HI"):
        realism.parse_changes("gain_db=3")
    with pytest.raises(ValueError, match="specks takes one number"):
        realism.parse_changes("specks=1:2")


def test_phantom_ablate_scores_each_variant_on_the_same_draws(real_pleura_rib, tmp_path, capsys):
    """``lus phantom-ablate``: the base appearance and each variant, one JSON line each; a variant
    that changes nothing scores as the base (same phantom draws, folds and seeds)."""
    from lus_common.app.cli import main

    out = tmp_path / "ablate.json"
    code = main(["phantom-ablate", "--real", str(real_pleura_rib), "--profile", "smoke",
                 "--variant", "specks=0", "--variant", "specks=30,speck_density=0.5",
                 "--seeds", "2", "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert [x["variant"] for x in lines] == ["base", "specks=0", "specks=30,speck_density=0.5"]
    assert lines[2]["changes"] == {"specks": 30.0, "speck_density": 0.5}
    assert all(len(x["auc_seeds"]) == 2 and 0 <= x["auc"] <= 1 for x in lines)
    doc = json.loads(out.read_text())
    assert doc["base"] == "calibrated" and doc["params"]["domain_seeds"] == 2
    assert doc["command"].startswith("lus phantom-ablate --real")
    same = {"base": lines[0]} | {x["variant"]: x for x in lines[1:]}
    if resolve_appearance("calibrated").specks == 0:  # specks=0 changes nothing
        assert same["specks=0"]["auc_seeds"] == same["base"]["auc_seeds"]
    assert main(["phantom-ablate", "--real", str(real_pleura_rib), "--variant", "glow=1"]) == 2
    assert "not an appearance field" in capsys.readouterr().err


def test_phantom_check_labels_all_keeps_every_rib(real_pleura_rib, tmp_path, capsys):
    """``--labels all``: the sim-to-real U-Net learns every rib and space the phantom shows, and
    the record and its caption say which labels it learnt."""
    from lus_common.app.cli import main

    out = tmp_path / "check.json"
    code = main(["phantom-check", "--real", str(real_pleura_rib), "--profile", "smoke",
                 "--generators", "calibrated", "--other-real", "none", "--labels", "all",
                 "--structure", "rib_shadow", "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 0
    doc = realism.read_check(out)
    assert doc["params"]["labels"] == "all"
    assert doc["generators"]["calibrated"]["sim_to_real"]["central"] is False
    assert "annotators" not in realism.check_caption(doc)
    assert "annotators label" in realism.check_caption(
        dict(doc, params={**doc["params"], "labels": "central"})
    )
    assert json.loads(capsys.readouterr().out)["calibrated"]["version"] == 10


def test_same_source_halves_split_by_side_else_alternate_clips():
    sides = [f"din-0{k}-{s}-{c}" for k in (1, 2) for s in "LR" for c in (1, 2) for _ in range(3)]
    first, split = realism.same_source_halves(sides)
    assert split == "left-side clips vs right-side clips"
    assert first.sum() == 12 and all(("-L-" in g) == f for g, f in zip(sides, first, strict=True))
    plain = [f"clip{k}" for k in range(5) for _ in range(2)]
    first, split = realism.same_source_halves(plain)
    assert split.startswith("alternate")
    assert first.tolist() == [True, True, False, False] * 2 + [True, True]  # clips 0, 2, 4
    with pytest.raises(ValueError, match="at least 4"):
        realism.same_source_halves(["a", "b", "c"])


def test_other_real_source_is_skipped_and_said_so_without_pocus(empty_data_dir):
    out = realism._other_real_domain("auto", None, 12, 13, {}, "cpu")
    assert "pocus" in out["skipped"] and "LUS_DATA_DIR" in out["skipped"]
    assert realism._other_real_domain(None, None, 12, 13, {}, "cpu") == {"skipped": "not asked for"}
    with pytest.raises(FileNotFoundError, match="not a POCUS folder"):  # the loader says what to do
        realism.other_real_frames(empty_data_dir, 12, 13, 64)
    # "auto" looks beside the real folder first (here an empty pocus/: the loader says so)
    beside = empty_data_dir.parent / "elsewhere"
    (beside / "lus_pleura_rib").mkdir(parents=True)
    (beside / "pocus").mkdir()
    real = SimpleNamespace(info={"root": str(beside / "lus_pleura_rib")})
    with pytest.raises(FileNotFoundError, match="elsewhere/pocus is not a POCUS folder"):
        realism._other_real_domain("auto", real, 12, 13, {"size": 64}, "cpu")


def test_phantom_calibrate_refines_the_current_record(real_pleura_rib, tmp_path, capsys,
                                                      monkeypatch):  # fmt: skip
    """``lus phantom-calibrate`` without ``--fresh`` starts from the package's record (its values
    in today's ranges), never ends worse than that start on the same frames, and says which
    record it refined; the package's record stays as it is."""
    from lus_common.app.cli import main

    before = CALIBRATION_FILE.read_text()
    out = tmp_path / "calibration.json"
    starts, fit = [], calibration.calibrate
    monkeypatch.setattr(calibration, "calibrate",
                        lambda *a, **k: starts.append(k["start"]) or fit(*a, **k))  # fmt: skip
    code = main(["phantom-calibrate", "--real", str(real_pleura_rib), "--size", "64",
                 "--sobol", "0", "--evaluations", "3", "--out", str(out), "--quiet",
                 "--start", "wall_gain", "2.0"])  # fmt: skip
    assert code == 0 and CALIBRATION_FILE.read_text() == before
    printed = json.loads(capsys.readouterr().out)
    record, package = json.loads(out.read_text()), json.loads(before)
    assert printed["objective"] == record["objective"]
    assert record["objective"]["calibrated"] <= record["objective"]["start"]
    assert record["objective"]["calibrated"] < record["objective"]["v1"]
    assert record["start_from"]["command"] == package["command"]
    assert record["start_from"]["objective"] == package["objective"]["calibrated"]
    assert record["image_size"] == 64 and record["frames"] == 156
    assert set(record["units"]) == set(calibration.SEARCH)
    assert record["start_from"]["start_values"] == {"wall_gain": 2.0}
    package_values = json.loads(before)["appearance"]
    assert starts == [{**package_values, "wall_gain": 2.0}]  # the record's values, one moved


def test_phantom_calibrate_also_fits_a_smaller_size(real_pleura_rib, tmp_path, capsys):
    """``--also-size 32`` beside ``--size 64``: the search minimises the mean of the objective at
    both sizes (``searched``, never above where it started) and the record holds each."""
    from lus_common.app.cli import main

    out = tmp_path / "calibration.json"
    code = main(["phantom-calibrate", "--real", str(real_pleura_rib), "--size", "64",
                 "--also-size", "32", "--sobol", "0", "--evaluations", "2", "--out", str(out),
                 "--quiet"])  # fmt: skip
    assert code == 0
    objective = json.loads(out.read_text())["objective"]
    assert set(objective["by_size"]) == {"64", "32"}
    assert objective["by_size"]["64"] == objective["calibrated"]
    assert objective["searched"] == pytest.approx(np.mean(list(objective["by_size"].values())))
    assert objective["searched"] <= objective["start"] + 1e-9
    capsys.readouterr()


def test_start_values_are_searched_parameters_in_their_ranges():
    """``--start NAME VALUE``: a number inside the parameter's search range, else a clear error."""
    assert calibration.start_values([("fat_gain", "0.5"), ("gain_db", "-3")]) == {
        "fat_gain": 0.5, "gain_db": -3.0}  # fmt: skip
    with pytest.raises(ValueError, match="searched parameter; one of: rib_specular_deg, rib_spec"):
        calibration.start_values([("fat_gian", "0.5")])
    with pytest.raises(ValueError, match="'half': not a number"):
        calibration.start_values([("fat_gain", "half")])
    with pytest.raises(ValueError, match=r"outside its range \[0.5, 10\]"):
        calibration.start_values([("wall_gain", "30")])
    with pytest.raises(ValueError, match="fat_gain: given twice"):
        calibration.start_values([("fat_gain", "0.5"), ("fat_gain", "1.0")])


def test_phantom_check_explains_a_missing_folder(tmp_path, capsys):
    from lus_common.app.cli import main

    assert main(["phantom-check", "--real", str(tmp_path / "nowhere"), "--profile", "smoke"]) == 2
    assert "lus_pleura_rib" in capsys.readouterr().err


def test_display_resize_is_pils_bilinear_and_nearest():
    from PIL import Image

    rng = np.random.default_rng(0)
    frame = rng.uniform(0, 255, (82, 112)).astype(np.float32)
    pil = np.asarray(Image.fromarray(frame, mode="F").resize((32, 32), Image.BILINEAR))
    np.testing.assert_allclose(bmode.display_resize(frame, 32), pil, atol=1e-3)
    labels = rng.integers(0, 7, (82, 112)).astype(np.uint8)
    pil = np.asarray(Image.fromarray(labels).resize((32, 32), Image.NEAREST))
    np.testing.assert_array_equal(bmode.nearest_resize(labels, 32), pil)


def test_small_calibrated_images_are_the_large_ones_resized():
    """The calibrated generator forms images below 256 px at 256 px and resizes them as the
    loaders resize real frames: a 64 px set is its 256 px twin, resized."""
    kw = dict(n_patients=1, frames_per_video=2, probe="convex", seed=4)
    big = lung_ultrasound_phantom(2, image_size=256, **kw)
    small = lung_ultrasound_phantom(2, image_size=64, **kw)
    expected = np.rint(bmode.display_resize(big.images * 255, 64)) / 255
    np.testing.assert_allclose(small.images, expected, atol=1.5 / 255)
    np.testing.assert_array_equal(
        small.layers["dense"], bmode.nearest_resize(big.layers["dense"], 64)
    )
    np.testing.assert_allclose(small.spacing_mm, big.spacing_mm * 4)
    direct = lung_ultrasound_phantom(
        2, image_size=64, appearance=replace(APPEARANCES["calibrated"], render_size=0), **kw
    )
    assert not np.allclose(direct.images, small.images)  # render_size=0: formed at 64 px


def test_speckle_reduction_widens_with_depth():
    """The deep speckle reduction leaves the top as the plain filter does and smooths the bottom
    harder; without it, the filter is a plain Gaussian (cut at 3 sigma)."""
    from lus_common.phantoms.lung import _speckle_reduction

    rng = np.random.default_rng(0)
    beam = rng.integers(60, 200, (2, 200, 128)).astype(np.uint8)  # frames, depth, scan lines
    plain = np.rint(ndimage.gaussian_filter(beam.astype(np.float32), (0, 0.8, 0.8), truncate=3))
    np.testing.assert_array_equal(_speckle_reduction(beam, 0.8, 0.0), plain.astype(np.uint8))
    deep = _speckle_reduction(beam, 0.8, 3.0).astype(np.float32)
    np.testing.assert_array_equal(deep[:, 0], plain[:, 0])  # no extra smoothing at the top
    top, bottom = deep[:, 5:25].std(), deep[:, -25:-5].std()
    # near the bottom, about a Gaussian of sigma hypot(0.8, 3) = 3.1, which keeps 1 / (2 sqrt(pi)
    # sigma) = 0.091 of white noise's std; near the top about sigma 0.8's share (0.35 continuous)
    assert bottom / beam.std() == pytest.approx(0.091, abs=0.015)
    assert top / beam.std() > 0.3


def test_pit_fill_lifts_only_what_is_darker_than_the_local_mean():
    from lus_common.phantoms.lung import _speckle_reduction

    rng = np.random.default_rng(3)
    beam = rng.integers(20, 230, (2, 100, 80)).astype(np.uint8)
    plain = _speckle_reduction(beam, 0.5, 3.0, (0.3, 0.3)).astype(np.float32)
    filled = _speckle_reduction(beam, 0.5, 3.0, (0.3, 0.3), pit_fill=1.0).astype(np.float32)
    near = ndimage.gaussian_filter(beam.astype(np.float32), (0, 0.5, 0.5), truncate=3)
    local = ndimage.gaussian_filter(near, (0, 3.0, 3.0), truncate=3)
    assert (filled >= plain).all()
    assert (filled >= np.rint(local) - 1).all()  # every pit filled up to the local mean
    above = plain > local + 1
    np.testing.assert_array_equal(filled[above], plain[above])  # bright pixels kept as they were


def test_speckle_reduction_shares_blend_the_two_filters():
    """A share below 1 moves the image only part of the way to its local mean: the result is the
    weighted mean of the plain and the wider filter (Gaussians compose), so the grain's contrast
    falls but its size does not grow as much."""
    from lus_common.phantoms.lung import _speckle_reduction

    rng = np.random.default_rng(1)
    beam = rng.integers(60, 200, (2, 120, 96)).astype(np.uint8)
    f = beam.astype(np.float32)
    plain = ndimage.gaussian_filter(f, (0, 0.8, 0.8), truncate=3)
    wide = ndimage.gaussian_filter(plain, (0, 2.0, 2.0), truncate=3)
    np.testing.assert_array_equal(
        _speckle_reduction(beam, 0.8, 2.0, (0.0, 0.0)), np.rint(plain).astype(np.uint8)
    )
    half = _speckle_reduction(beam, 0.8, 2.0, (0.6, 0.6)).astype(np.float32)
    assert np.abs(half - (0.4 * plain + 0.6 * wide)).max() <= 0.5 + 1e-4  # rounding only
    # share 0.6 at the top, 1 at the bottom
    ramp = _speckle_reduction(beam, 0.8, 2.0, (0.6, 1.0)).astype(np.float32)
    assert np.abs(ramp[:, 0] - half[:, 0]).max() <= 1
    assert np.abs(ramp[:, -1] - np.rint(wide[:, -1])).max() <= 1


def test_pleura_and_chest_wall_statistics_measure_a_known_frame():
    """A line at a third of the depth, 0.9 over half of the middle scan lines and 0.45 over the
    other half, on a grey of 0.2: its peaks' coefficient of variation is 0.225 / 0.675 = 1/3 and
    its brighter half over the grey beneath it 0.9 / (0.2 + 0.01). Sparse bright specks above it
    skew the chest wall's fine texture right, sparse dark pits left."""
    rng = np.random.default_rng(4)
    n, h, w = 2, 192, 128
    frames = np.full((n, h, w), 0.2, np.float32)
    frames[:, 60:63, : w // 2] = 0.9
    frames[:, 60:63, w // 2 :] = 0.45
    specks = (rng.random((n, h, w)) < 0.01) & (np.arange(h)[None, :, None] < 50)
    bright = np.where(specks, 0.6, frames).astype(np.float32)
    dark = np.where(specks, 0.05, frames).astype(np.float32)
    t, _ = realism.frame_statistics(bright, ["v"] * n)
    assert t["pleura_cv"].mean() == pytest.approx(1 / 3, rel=0.02)
    assert t["pleura_contrast"].mean() == pytest.approx(0.9 / 0.21, rel=0.02)
    assert t["wall_skew"].mean() > 3
    t_dark, _ = realism.frame_statistics(dark, ["v"] * n)
    assert t_dark["wall_skew"].mean() < -3
    t_flat, _ = realism.frame_statistics(frames, ["v"] * n)
    assert t_flat["wall_fine_cv"].max() == pytest.approx(0.0, abs=1e-4)  # float32 rounding
    assert t["wall_fine_cv"].mean() > 0.05


def _assert_same_labels_other_images(on: dict, off: dict) -> None:
    """Calibrated convex videos with a feature switched on and off (the appearance's fields
    ``on`` / ``off``): the same labels, other images."""
    d_on, d_off = (lung_ultrasound_phantom(4, frames_per_video=2, image_size=64, probe="convex",
                                           seed=3, appearance=replace(APPEARANCES["calibrated"],
                                                                      **x))
                   for x in (on, off))  # fmt: skip
    for name in ("pleura", "ribs", "rib_shadow", "alines"):
        np.testing.assert_array_equal(d_on.layers[name], d_off.layers[name])
    assert not np.array_equal(d_on.images, d_off.images)


def test_pleura_variation_and_wall_fibres_draw_from_their_own_streams():
    """The pleura's brightness along its length has exactly the stated log standard deviation
    (mean 1); the fibres brighten the stated share of the muscle by the stated factor. Neither
    draws a number from the video's own stream, so switching them on leaves the rest of the
    video as it was: the same labels."""
    from lus_common.phantoms.lung import _chest_wall, _pleura, _severity

    a = replace(V1, pleura_variation=0.8, pleura_variation_mm=2.0, wall_fibres=9.0,
                fibre_share=0.1)  # fmt: skip
    s = ((np.arange(3000) - 1500) * 0.1)[None, :].astype(np.float32)
    rng, side = np.random.default_rng(0), np.random.default_rng(1)
    sev = _severity("healthy", rng, {})
    state = rng.bit_generator.state
    varied = _pleura(s, 0.1, 20.0, sev, "healthy", rng, a, side)
    after = rng.bit_generator.state
    rng.bit_generator.state = state
    plain = _pleura(s, 0.1, 20.0, sev, "healthy", rng, V1, side)
    assert rng.bit_generator.state == after  # the main stream moved the same way
    np.testing.assert_array_equal(varied["depth"], plain["depth"])
    ratio = np.log(varied["echo"] / plain["echo"])
    assert ratio.std() == pytest.approx(0.8, rel=1e-3)
    assert ratio.mean() == pytest.approx(-(0.8**2) / 2, abs=1e-3)
    z = ((np.arange(300) + 0.5) * 0.1)[:, None].astype(np.float32)
    state = rng.bit_generator.state
    fibres = _chest_wall(z, 400, 25.0, rng, a, 0.1, 0.1, side)
    rng.bit_generator.state = state
    wall = _chest_wall(z, 400, 25.0, rng, V1, 0.1, 0.1, side)
    factor = fibres / wall
    muscle = z[:, 0] > 14.0  # below the fat (at most 2 + 0.5 x 23 mm)
    assert set(np.round(np.unique(factor), 4)) == {1.0, 10.0}
    assert (factor[muscle] > 1).mean() == pytest.approx(0.1, rel=0.15)
    assert (factor[z[:, 0] < 1.0] > 1).sum() == 0  # not in the skin
    _assert_same_labels_other_images(
        dict(pleura_variation=1.0, wall_fibres=20.0), dict(pleura_variation=0.0, wall_fibres=0.0)
    )


def test_central_space_keeps_the_space_beneath_the_centre_and_its_two_ribs():
    """Three rib shadows (columns 5-14, 40-49, 80-89 of 100) and pleura in the three spaces
    (20-34, 55-74, 92-97): the space beneath the centre (column 49.5) is 55-74, the pixel of
    it nearest the centre column 55, so the shadows around it (means 44.5 and 84.5) stay and the
    first goes, with the pleura outside 44.5-84.5. With the centre beneath a rib, the pleura
    nearest the centre decides. The rib cortex above the kept shadows stays. Without pleura,
    nothing is kept; without ribs, all the pleura."""
    pleura = np.zeros((4, 30, 100), np.uint8)
    shadow = np.zeros((4, 30, 100), np.uint8)
    for k in range(3):
        shadow[k, 12:, 5:15] = shadow[k, 12:, 40:50] = shadow[k, 12:, 80:90] = 1
        pleura[k, 10, 20:35] = pleura[k, 10, 92:98] = 1
    pleura[0, 10, 55:75] = 1
    pleura[2] = 0
    pleura[3, 10, 30:70] = 1  # no ribs
    ribs = np.zeros_like(shadow)
    ribs[:, 11, :] = shadow[:, 12, :]  # the cortex above each shadow
    out = realism.central_space({"pleura": pleura, "rib_shadow": shadow, "ribs": ribs})
    p, s = out["pleura"], out["rib_shadow"]
    assert p.dtype == pleura.dtype and s.shape == shadow.shape
    np.testing.assert_array_equal(out["ribs"][:, 11], s[:, 12])
    np.testing.assert_array_equal(np.flatnonzero(p[0].any(0)), np.arange(55, 75))
    np.testing.assert_array_equal(np.flatnonzero(s[0].any(0)), np.r_[40:50, 80:90])
    # frame 1: no pleura beneath the centre; 20-34 is nearer (34 from 49.5) than 92-97
    np.testing.assert_array_equal(np.flatnonzero(p[1].any(0)), np.arange(20, 35))
    np.testing.assert_array_equal(np.flatnonzero(s[1].any(0)), np.r_[5:15, 40:50])
    assert not p[2].any() and not s[2].any()
    np.testing.assert_array_equal(p[3], pleura[3])


def test_shadow_layout_measures_whole_shadows_and_their_spacing():
    """Two frames of 100 columns, a fan over columns 10-89 on the measured row: one frame with
    shadows over 20-29 and 60-69 (10 wide, centres 40 apart) and one cut by the fan's edge
    (10-19, not whole) beside one over 50-55: 2 shadows per frame, the whole ones 10, 10 and 6
    wide (median 10), one pair of whole neighbours, 40 apart."""
    masks = np.zeros((2, 50, 100), np.uint8)
    inside = np.zeros((2, 50, 100), bool)
    inside[:, :, 10:90] = True
    masks[0, :, 20:30] = masks[0, :, 60:70] = 1
    masks[1, :, 10:20] = masks[1, :, 50:56] = 1
    out = realism.shadow_layout(masks, inside, row=0.6)
    assert out["row"] == 30 and out["per_frame"] == 2.0
    assert out["shadows_whole"] == 3 and out["width_px"] == 10.0 and out["pairs"] == 1
    assert out["gap_px"] == 40.0 and out["gap_share"] == pytest.approx(0.4)
    none = realism.shadow_layout(np.zeros_like(masks), inside)
    assert none["per_frame"] == 0 and none["width_px"] is None and none["gap_share"] is None


def test_findings_say_when_the_seeds_do_not_settle_the_better_generator():
    check = realism.read_check(realism.REFERENCE_CHECK)
    sims = {g: check["generators"][g]["sim_to_real"]["rib_shadow"] for g in ("v1", "calibrated")}
    sims["v1"].update(dice=0.2, dice_seeds=[0.1, 0.2, 0.3])
    sims["calibrated"].update(dice=0.5, dice_seeds=[0.4, 0.5, 0.6])
    rib = next(f for f in realism.findings(check) if f.startswith("**Rib shadow.**"))
    assert "(`calibrated`) reaches" in rib and "overlap" not in rib
    sims["v1"].update(dice_seeds=[0.0, 0.15, 0.45])  # its best draw beats calibrated's worst
    rib = next(f for f in realism.findings(check) if f.startswith("**Rib shadow.**"))
    assert "ranges overlap (`calibrated` 0.400-0.600, `v1` 0.000-0.450): 3 seeds" in rib


def test_findings_read_the_same_source_reference():
    """The real set's two halves near 0.5: the classifier sees nothing where there is nothing
    to see; far from it: its AUCs are upper bounds. Recorded without it: no sentence."""
    check = realism.read_check(realism.REFERENCE_CHECK)
    check.pop("same_source", None)
    assert not any(f.startswith("**One source") for f in realism.findings(check))
    domain = {"auc": 0.52, "auc_folds": [0.4, 0.6, 0.56], "auc_by_epoch": [0.6, 0.52],
              "log_loss": 0.9}  # fmt: skip
    check["same_source"] = {"split": "left-side clips vs right-side clips", "clips": [6, 6],
                            "frames": [78, 78], "domain": domain}  # fmt: skip
    same = next(f for f in realism.findings(check) if f.startswith("**One source"))
    assert "halves apart (left-side clips vs right-side clips: 6 and 6 clips" in same
    assert "AUC of 0.520 (folds: 0.40, 0.60, 0.56)" in same and "where there is none" in same
    assert "real halves" in realism.domain_curves(check)
    domain["auc"] = 0.7
    same = next(f for f in realism.findings(check) if f.startswith("**One source"))
    assert "differ to it somewhat" in same and "upper bounds" not in same
    domain["auc"] = 0.9
    same = next(f for f in realism.findings(check) if f.startswith("**One source"))
    assert "upper bounds" in same


def test_a_flat_pleura_lies_deeper_towards_the_fan_edges_and_reflects_specularly():
    """A convex probe of radius 40 mm over a plane 20 mm beneath its centre: a beam 30 degrees
    off the axis meets it 60 / cos(30) - 60 = 9.28 mm deeper; a beam one lobe width
    (specular_deg) off square on keeps exp(-1/2) of the specular echo. A linear probe's
    parallel beams see neither."""
    from lus_common.phantoms.lung import _pleural_plane

    a = replace(V1, pleura_flatness=1.0, specular_deg=6.0)
    theta = np.deg2rad([0.0, 6.0, 30.0])
    s = (40.0 * theta)[None, :].astype(np.float32)  # arc length at the face
    plane = _pleural_plane(s, 20.0, {"radius_mm": 40.0}, a, np.random.default_rng(0))
    expected = [0.0, 60 / np.cos(theta[1]) - 60, 9.2820]
    np.testing.assert_allclose(plane["offset"], expected, atol=1e-3)
    assert plane["lobe"][0] == pytest.approx(1.0) and plane["lobe"][1] == pytest.approx(
        np.exp(-0.5), rel=1e-5
    )
    half = _pleural_plane(s, 20.0, {"radius_mm": 40.0}, replace(a, pleura_flatness=0.5),
                          np.random.default_rng(0))  # fmt: skip
    np.testing.assert_allclose(half["offset"], plane["offset"] / 2, rtol=1e-6)
    linear = _pleural_plane(s, 20.0, None, a, np.random.default_rng(0))
    assert linear["offset"] is None and linear["lobe"] is None
    assert _pleural_plane(s, 20.0, {"radius_mm": 40.0}, V1, None)["lobe"] is None  # v1: no draw
    # tilted: the plane is nearest, and the lobe brightest, on the same beam, at the tilt
    s = (40.0 * np.deg2rad(np.linspace(-30, 30, 601)))[None, :].astype(np.float32)
    tilted = _pleural_plane(s, 20.0, {"radius_mm": 40.0}, replace(a, pleura_tilt_deg=8.0),
                            np.random.default_rng(3))  # fmt: skip
    tilt = np.random.default_rng(3).uniform(-8.0, 8.0)
    assert abs(tilt) > 1
    assert np.linspace(-30, 30, 601)[np.argmax(tilted["lobe"])] == pytest.approx(tilt, abs=0.1)
    assert np.argmin(tilted["offset"]) == np.argmax(tilted["lobe"])


def test_a_flat_specular_pleura_in_the_convex_phantom():
    """In the images: the pleura's label bends (a parabola fitted to its top row, column by
    column) a fraction of what the arc around the probe bends, and the A-lines are labelled only
    near the beams that meet the pleura square on (the middle of the fan), while the arc's
    A-lines span the fan."""
    base = replace(APPEARANCES["calibrated"], specular_deg=0.0, pleura_flatness=0.0)
    flat = replace(base, pleura_flatness=1.0, specular_deg=5.0, specular_floor=0.3)
    kw = dict(frames_per_video=1, image_size=128, probe="convex", seed=2, n_blines=0,
              diagnoses="healthy")  # fmt: skip

    def bend(d):  # mean curvature (rows per column squared) of the pleura's top row
        out = []
        for frame in d.layers["pleura"].astype(bool):
            cols = np.flatnonzero(frame.any(0))
            if np.ptp(cols) >= 24:
                out.append(np.polyfit(cols, frame[:, cols].argmax(0), 2)[0])
        assert len(out) >= 3
        return float(np.mean(out))

    def outer_alines(d):  # share of the A-line label in the outer quarters of the frame
        a = d.layers["alines"].sum((0, 1))
        return (a[:32].sum() + a[96:].sum()) / max(a.sum(), 1)

    d_arc, d_flat = (lung_ultrasound_phantom(8, appearance=x, **kw) for x in (base, flat))
    # the arc around the probe's apex is deepest beneath the centre: its rows bend down there
    assert bend(d_arc) < -0.005 and abs(bend(d_flat)) < 0.3 * abs(bend(d_arc))
    assert outer_alines(d_flat) < 0.1 < outer_alines(d_arc)


def test_centre_share_measures_a_bright_middle():
    """The lung lit evenly: 1. The middle fifth twice as bright as the rest: 2."""
    frames = np.full((2, 128, 128), 0.3, np.float32)
    frames[:, 20:22] = 0.9  # the brightest layer, the pleura
    t, _ = realism.frame_statistics(frames, ["v"] * 2)
    assert t["centre_share"].mean() == pytest.approx(1.0, abs=1e-4)
    column = frames.copy()
    middle = np.abs(np.arange(128) + 0.5 - 64) <= 12.8
    column[:, 25:, middle] = 0.6
    t, _ = realism.frame_statistics(column, ["v"] * 2)
    assert t["centre_share"].mean() == pytest.approx(2.0, rel=1e-3)
    # black beside the middle: nothing to compare it with
    black = np.where(middle[None, :], 0.6, 0.0).astype(np.float32).repeat(128, 0)
    inside, frac = np.ones((128, 128), bool), np.repeat(np.linspace(0, 1, 128)[:, None], 128, 1)
    assert np.isnan(realism._centre_share(black, inside, frac, 0.1))
    assert realism._centre_share(black + 0.3, inside, frac, 0.1) == pytest.approx(3.0, rel=1e-5)


def test_the_chest_wall_bends_to_the_plane_and_dims_off_square():
    """With wall_flatness 1 a layer t of the way from the skin to a 20 mm deep pleura lies t of
    the plane's extra depth deeper: where the pleura is 10 mm deeper, the fascia beneath the fat
    moves from f to skin + (f - skin) (30 - skin) / (20 - skin), and the skin keeps its
    thickness (same draws); the wall's anisotropy keeps wall_specular_floor plus exp(-1/2) of
    the rest one lobe width off square on, and the first generator has no lobe."""
    from lus_common.phantoms.lung import _ECHO, _chest_wall, _pleural_plane

    a = replace(V1, wall_flatness=1.0)  # no texture, fibres or muscle fascia: layers alone
    dz = 0.05
    z = ((np.arange(600) + 0.5) * dz)[:, None].astype(np.float32)
    offset = np.array([0.0, 10.0], np.float32)

    def skin_rows(wall):  # the skin's rows from the top
        return np.argmax(wall != _ECHO["skin"], axis=0)

    def fascia_depth(wall):  # mean depth of the fascia line beneath the fat (skin's echo)
        below = (wall == _ECHO["fascia"]) & (np.arange(len(z))[:, None] > skin_rows(wall) + 5)
        return (below * z).sum(0) / below.sum(0)

    draw = [np.random.default_rng(4) for _ in range(4)]
    bent = _chest_wall(z, 2, 20.0, draw[0], a, dz, 0.5, draw[1], offset)
    arcs = _chest_wall(z, 2, 20.0, draw[2], replace(a, wall_flatness=0.0), dz, 0.5, draw[3], offset)
    skin = np.random.default_rng(4).uniform(1.0, 2.0)  # the first draw: the skin's thickness
    assert list(skin_rows(bent)) == list(skin_rows(arcs))
    assert skin_rows(arcs)[0] == skin_rows(arcs)[1] == pytest.approx(skin / dz, abs=1)
    np.testing.assert_array_equal(bent[:, 0], arcs[:, 0])  # no extra depth: as drawn
    f = fascia_depth(arcs)[1]
    assert 5.0 < f < 12.0  # a quarter to a half of the wall beneath the skin
    expected = skin + (f - skin) * (30.0 - skin) / (20.0 - skin)
    assert fascia_depth(bent)[1] == pytest.approx(expected, abs=2 * dz)
    # the anisotropic wall: one lobe width (10 degrees) off square on
    theta = np.deg2rad([0.0, 10.0])
    s = (40.0 * theta)[None, :].astype(np.float32)
    aniso = replace(V1, wall_specular_deg=10.0, wall_specular_floor=0.2)
    plane = _pleural_plane(s, 20.0, {"radius_mm": 40.0}, aniso, np.random.default_rng(0))
    np.testing.assert_allclose(plane["wall_dim"], [1.0, 0.2 + 0.8 * np.exp(-0.5)], rtol=1e-5)
    assert plane["offset"] is None and plane["lobe"] is None  # the pleura still an arc
    assert _pleural_plane(s, 20.0, {"radius_mm": 40.0}, V1, None)["wall_dim"] is None


def test_ribs_are_laid_out_along_the_pleura_at_their_depth():
    """A convex probe of radius 40 mm over a plane 20 mm beneath its centre: the beam 30 degrees
    off square on meets it 60 tan(30) = 34.64 mm along it (on an arc at that depth 60 pi / 6 =
    31.42 mm). A rib 2 x rib_half wide (the first draw) spans that many mm of the plane with
    ``ribs_along_pleura``; laid out on the face's arc (v1) it spans 60 / 40 times as much at
    the pleura's depth, 1.5 times its angle."""
    from lus_common.phantoms.lung import _BIT, _pleural_plane, _ribs

    theta = np.deg2rad([0.0, 30.0])
    s = (40.0 * theta)[None, :].astype(np.float32)  # arc length at the face
    a = replace(V1, pleura_flatness=1.0, ribs_along_pleura=True)
    plane = _pleural_plane(s, 20.0, {"radius_mm": 40.0}, a, np.random.default_rng(0))
    np.testing.assert_allclose(plane["along"], [0.0, 34.641], atol=1e-3)
    arc = _pleural_plane(s, 20.0, {"radius_mm": 40.0}, replace(a, pleura_flatness=0.0),
                         np.random.default_rng(0))  # fmt: skip
    np.testing.assert_allclose(arc["along"], [0.0, 31.416], atol=1e-3)
    assert _pleural_plane(s, 20.0, {"radius_mm": 40.0}, V1, None)["along"] is None
    # the ribs' widths, in mm along the plane, from their cortex's columns
    dz, cols = 0.1, 1201  # 60 mm deep: the plane lies 18 mm deeper 40 degrees off the axis
    z = ((np.arange(600) + 0.5) * dz)[:, None].astype(np.float32)
    ds = 40.0 * np.deg2rad(80.0) / cols  # an 80-degree world, 0.047 mm per column at the face
    s = ((np.arange(cols) - cols / 2 + 0.5) * ds)[None, :].astype(np.float32)
    plane = _pleural_plane(s, 20.0, {"radius_mm": 40.0}, a, np.random.default_rng(0))
    echo = np.ones((len(z), cols), np.float32)
    widths = {}
    for name, along in (("plane", plane["along"]), ("face", None)):
        seed = 3 if name == "plane" else 5  # both draw a rib in view and two in full
        rib_half = np.random.default_rng(seed).uniform(5.0, 7.0)
        bits = _ribs(z, s, ds, 20.0, "convex", echo, np.random.default_rng(seed), a,
                     plane["offset"], along)[1]  # fmt: skip
        runs, n = ndimage.label((bits & _BIT["ribs"]).any(0))
        whole = [np.flatnonzero(runs == k) for k in range(1, n + 1)]
        whole = [c for c in whole if c[0] > 0 and c[-1] < cols - 1]
        assert len(whole) >= 1
        widths[name] = [(plane["along"][c[-1]] - plane["along"][c[0]]) / (2 * rib_half)
                        for c in whole]  # fmt: skip
    np.testing.assert_allclose(widths["plane"], 1.0, atol=0.02)
    # on the face's arc: 60 / 40 wider in angle, more towards the fan's edges on the plane
    assert min(widths["face"]) > 1.45, widths


def test_wall_statistics_take_rows_across_a_fan():
    """A filled convex frame lit evenly across, chest wall above a flat bright line and dark lung
    beneath it: the wall's middle over its flanks is 1. Its flank columns start at the fan's
    slanted edge, deep in the image, so measured down each column (:func:`depth_fraction`) the
    flanks would reach into the lung."""
    inside = bmode.sector_geometry(128, 0.4 * 95, 95, 60, fill=True)["inside"]
    rows = np.arange(128)[:, None]
    frame = np.where(rows < 40, 0.5, 0.1) + np.where((rows >= 40) & (rows < 42), 0.8, 0.0)
    frames = np.repeat((frame * inside)[None].astype(np.float32), 2, 0)
    t, _ = realism.frame_statistics(frames, ["v"] * 2)
    assert t["wall_centre_share"].mean() == pytest.approx(1.0, abs=0.01)
    assert t["near_mean"].mean() == pytest.approx(0.5, abs=0.01)
    depth = realism.centre_line_depth(inside)
    assert np.nanmin(depth) == 0 and np.nanmax(depth) == pytest.approx(1)
    assert np.isnan(depth[~inside]).all()
    frac = realism.depth_fraction(inside)  # down each column: the flanks' wall is lung
    u = np.abs(realism.across_fan(inside))
    flank = inside & (frac > 0.02) & (frac < 0.85 * 40 / 127) & (u >= 0.6) & (u <= 0.9)
    assert (frames[0][flank] < 0.2).mean() > 0.3


def test_an_anisotropic_wall_is_brightest_beneath_the_middle_of_the_fan():
    """In the images: the chest wall's middle over its flanks (``wall_centre_share``) rises when
    the muscle dims off square on, and the lung beneath it (``centre_share``) barely moves."""
    base = replace(APPEARANCES["calibrated"], wall_specular_deg=0.0, wall_specular_floor=1.0)
    aniso = replace(base, wall_specular_deg=8.0, wall_specular_floor=0.1)
    kw = dict(frames_per_video=2, image_size=128, probe="convex", seed=2, n_blines=0,
              diagnoses="healthy")  # fmt: skip
    stats = {}
    for name, a in (("even", base), ("aniso", aniso)):
        d = lung_ultrasound_phantom(12, appearance=a, **kw)
        stats[name] = realism.frame_statistics(d.images, d.meta["video"])[0].mean()
    assert stats["aniso"]["wall_centre_share"] > stats["even"]["wall_centre_share"] + 0.3
    assert stats["aniso"]["centre_share"] == pytest.approx(stats["even"]["centre_share"], rel=0.1)


def test_wall_statistics_measure_the_wall_across_the_fan_and_near_the_skin():
    """A rectangle's rows run from -1 to 1 across it. A wall twice as bright in the middle fifth
    of its rows as on their flanks: ``wall_centre_share`` 2; ``near_mean`` the grey of the
    middle half between the skin and half the brightest layer's depth."""
    inside = np.zeros((64, 64), bool)
    inside[:, 12:52] = True
    u = realism.across_fan(inside)
    assert u[5, 12] == pytest.approx(-1) and u[5, 51] == pytest.approx(1)
    assert np.isnan(u[5, 3]) and np.nanmax(np.abs(u)) == pytest.approx(1)
    frames = np.full((2, 128, 128), 0.3, np.float32)
    frames[:, 60:62] = 0.9  # the brightest layer (the pleura) at about 48 % of the depth
    middle = np.abs(np.arange(128) - 63.5) <= 0.2 * 64
    frames[:, :60, middle] = 0.6
    t, _ = realism.frame_statistics(frames, ["v"] * 2)
    assert t["wall_centre_share"].mean() == pytest.approx(2.0, rel=1e-3)
    half = np.abs(np.arange(128) - 63.5) <= 32  # the near field's middle half: 0.6 and 0.3
    near = (0.6 * middle.sum() + 0.3 * (half.sum() - middle.sum())) / half.sum()
    assert t["near_mean"].mean() == pytest.approx(near, rel=1e-3)
    frac = np.repeat(np.linspace(0, 1, 128)[:, None], 128, 1)
    black = np.where(middle[None, :], 0.6, 0.0).astype(np.float32).repeat(128, 0)
    full = np.ones((128, 128), bool)
    assert np.isnan(realism._wall_statistics(black, full, frac, realism.across_fan(full))[
        "wall_centre_share"])  # fmt: skip


def test_a_flat_pleura_stays_put_while_the_lung_slides(monkeypatch):
    """The lung slides under the probe, the plane beneath it does not: across a breathing cycle
    the pleura's label keeps its row (within one) at every column where it is seen in every
    frame, out to the fan's flanks where the plane's depth changes fastest. Without moving the
    lung's columns to their scan line's plane depth it bobs by several rows there."""
    from lus_common.phantoms import lung

    kw = dict(frames_per_video=40, image_size=128, probe="convex", seed=5, n_blines=0,
              diagnoses="healthy", appearance="calibrated")  # fmt: skip

    def bob(d):  # largest range of the pleura's top row over the frames it is seen in
        pleura = d.layers["pleura"].astype(bool)  # outer thirds, columns seen in half the frames
        outer = (pleura.any(1).mean(0) >= 0.5) & (np.abs(np.arange(128) - 63.5) > 21)
        assert outer.sum() >= 3
        top = np.where(pleura.any(1), pleura.argmax(1), -1)[:, outer]
        return max(int(np.ptp(c[c >= 0])) for c in top.T)

    assert bob(lung_ultrasound_phantom(40, **kw)) <= 1
    world = lung._video_world
    monkeypatch.setattr(lung, "_video_world", lambda *a, **k: {**world(*a, **k),
                                                                "plane_offset": None})  # fmt: skip
    assert bob(lung_ultrasound_phantom(40, **kw)) >= 3


def test_entry_rise_measures_the_line_beneath_the_top_edge():
    """A frame whose first row is 0.2 grey, its second 0.6 (the skin's entry line) and the rest
    0.3: the entry line's brightest row over the first is 3; a frame brightest at its top edge
    gives 1."""
    n, h, w = 2, 128, 96
    frames = np.full((n, h, w), 0.3, np.float32)
    frames[:, 0], frames[:, 1] = 0.2, 0.6
    t, _ = realism.frame_statistics(frames, ["v"] * n)
    assert t["entry_rise"].to_numpy() == pytest.approx([3.0, 3.0])
    frames[:, 0] = 0.9
    t, _ = realism.frame_statistics(frames, ["v"] * n)
    assert t["entry_rise"].to_numpy() == pytest.approx([1.0, 1.0])
    cols, top = realism.entry_lines(np.ones((h, w), bool))
    assert (cols[0], cols[-1], top.max()) == (24, 71, 0)  # the middle half of the columns


def test_the_gel_is_dark_above_a_brighter_skin_and_draws_nothing():
    """The coupling gel gives no echo down to gel_mm, the skin beneath it is skin_gain times as
    bright, and neither draws a random number: the labels stay those of the video without them."""
    from lus_common.phantoms.lung import _chest_wall

    z = ((np.arange(300) + 0.5) * 0.1)[:, None].astype(np.float32)
    a = replace(V1, gel_mm=0.8, skin_gain=4.0)
    rng, side = np.random.default_rng(0), np.random.default_rng(1)
    state = rng.bit_generator.state
    gel = _chest_wall(z, 50, 25.0, rng, a, 0.1, 0.1, side)
    after = rng.bit_generator.state
    rng.bit_generator.state = state
    plain = _chest_wall(z, 50, 25.0, rng, V1, 0.1, 0.1, side)
    assert rng.bit_generator.state == after
    assert (gel[z[:, 0] < 0.8] == 0).all()
    skin = (z[:, 0] > 0.8) & (z[:, 0] < 1.8)  # the skin is 1-2 mm thick beneath the gel
    np.testing.assert_allclose(gel[skin], 4.0 * plain[z[:, 0] < 1.0][0, 0])
    _assert_same_labels_other_images(
        dict(gel_mm=1.2, skin_gain=6.0), dict(gel_mm=0.0, skin_gain=1.0)
    )


def test_shadow_width_measures_whole_dark_runs_from_the_pixels():
    """A lateral profile of bright lung (1.0) with one shadow 30 columns wide (0.1) in the middle
    and a dark edge of 20 columns: the shadow counts, at 30 / 256 of the frame's width (a
    symmetric step crosses half its height where it steps, however it is smoothed); the edge,
    with no lung beyond it, does not. No whole shadow: NaN."""
    profile = np.ones(200)
    profile[90:120] = 0.1
    profile[:20] = 0.1
    assert realism._shadow_width(profile, 256) == pytest.approx(30 / 256, abs=1e-9)
    edge_only = np.ones(200)
    edge_only[:20] = 0.1
    assert np.isnan(realism._shadow_width(edge_only, 256))
    two = profile.copy()
    two[150:160] = 0.1  # a second shadow of 10 columns: their mean, 20
    assert realism._shadow_width(two, 256) == pytest.approx(20 / 256, abs=1e-9)


def test_rib_width_and_specular_cortex():
    """``rib_half_mm`` sets the ribs' width (a linear probe: the cortex spans 2 x rib_half mm of
    the lateral axis); with ``rib_specular_deg`` the cortex keeps its full echo where its oval
    surface faces the beam (its middle) and dims to ``rib_specular_floor`` of it on its flanks,
    where the surface is steep; without it (v1), the whole cortex echoes alike."""
    from lus_common.phantoms.lung import _BIT, _ribs

    dz, ds, cols = 0.05, 0.05, 1201  # 60 mm wide, 30 mm deep
    z = ((np.arange(600) + 0.5) * dz)[:, None].astype(np.float32)
    s = ((np.arange(cols) - cols / 2 + 0.5) * ds)[None, :].astype(np.float32)
    echo = np.ones((len(z), cols), np.float32)
    widths = {}
    for half in (5.0, 9.0):
        a = replace(V1, rib_half_mm=(half, half), rib_echo=3.0)
        seed = 0  # its third draw, 0.04, puts ribs in view
        bits = _ribs(z, s, ds, 15.0, "linear", echo, np.random.default_rng(seed), a)[1]
        runs, n = ndimage.label((bits & _BIT["ribs"]).any(0))
        whole = [c for c in (np.flatnonzero(runs == k) for k in range(1, n + 1))
                 if c[0] > 0 and c[-1] < cols - 1]  # fmt: skip
        assert whole, half
        widths[half] = np.median([len(c) * ds for c in whole])
    assert widths[5.0] == pytest.approx(10.0, abs=0.15)
    assert widths[9.0] == pytest.approx(18.0, abs=0.15)
    # the cortex's echo along one rib: flat without the lobe, full in the middle with it
    for specular in (0.0, 6.0):
        a = replace(V1, rib_half_mm=(9.0, 9.0), rib_echo=3.0, rib_specular_deg=specular,
                    rib_specular_floor=0.05)  # fmt: skip
        out, bits = _ribs(z, s, ds, 15.0, "linear", echo, np.random.default_rng(seed), a)[:2]
        cortex = (bits & _BIT["ribs"]) > 0
        peak = np.where(cortex, out, 0).max(0)  # per column, the cortex's echo
        runs, n = ndimage.label(cortex.any(0))
        c = next(c for c in (np.flatnonzero(runs == k) for k in range(1, n + 1))
                 if c[0] > 0 and c[-1] < cols - 1)  # fmt: skip
        middle, flank = peak[c[len(c) // 2]], peak[c[2]]
        if specular:
            assert middle == pytest.approx(3.0, rel=0.01)
            assert flank == pytest.approx(3.0 * 0.05, rel=0.05)
        else:
            assert middle == flank == 3.0


def test_fit_rib_width_finds_the_ribs_that_cast_the_real_shadows():
    """Frames of a phantom whose ribs are 16 mm wide (half-width 8 +- 1.25 mm) stand in for the
    real ones: of half-widths 5, 8 and 11 mm, the fit picks 8, and its shadows are as wide as
    the target's (the same frames: the same seed); wider ribs cast wider shadows."""
    base = replace(APPEARANCES["calibrated"], rib_half_mm=(6.75, 9.25))
    target = realism.frame_statistics(*calibration.phantom_frames(base, 96))[0]
    width = target["shadow_width"].mean()
    fit = calibration.fit_rib_width(base, width, 96, grid=(5.0, 8.0, 11.0))
    assert fit["rib_half_mm"] == [6.75, 9.25]
    assert fit["phantom"] == pytest.approx(width, abs=1e-12)
    widths = [w for _, w in fit["grid"]]
    assert widths[0] < widths[1] < widths[2]


def test_objectives_by_size_score_the_frames_as_the_generator_makes_them_smaller(real_pleura_rib):
    """``--also-size 128``: the 256 px phantom frames resized to 128 px score as the generator's
    own 128 px frames (formed at 256 px and resized the same way) against the real frames
    loaded at 128 px; the main size scores as :func:`objective` does."""
    from lus_common.data.lus_pleura_rib import load_lus_pleura_rib

    a = APPEARANCES["calibrated"]
    real = {n: load_lus_pleura_rib(real_pleura_rib, image_size=n) for n in (256, 128)}
    summary = {n: realism.summarise(r.images, r.groups) for n, r in real.items()}
    frames = calibration.phantom_frames(a, 256, n_videos=12)
    by_size = calibration.objectives_by_size(frames, summary[256], {128: summary[128]})
    assert by_size["main"] == calibration.objective(realism.summarise(*frames), summary[256])[0]
    small = calibration.phantom_frames(a, 128, n_videos=12)
    direct = calibration.objective(realism.summarise(*small), summary[128])[0]
    assert by_size["128"] == pytest.approx(direct, rel=0.02)
    assert by_size["128"] != pytest.approx(by_size["main"], rel=0.02)  # another size, another fit

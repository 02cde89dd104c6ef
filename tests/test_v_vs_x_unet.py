"""Study 2 (Cheng & Lam 2021): the two U-Nets against the paper's parameter counts, the authors'
loss and augmentation, the boundary measures, the linear-probe phantom and its rib target, the
lus_pleura_rib loader, the folds (grouped and leaky), and the study end to end."""

import json

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch

from lus_common.app import runner
from lus_common.data.lus_pleura_rib import load_lus_pleura_rib
from lus_common.evaluation.boundary import boundary_scores, roughness
from lus_common.models.keras_unets import create_keras_model, keras, set_frozen
from lus_common.phantoms.lung import lung_ultrasound_phantom
from lus_common.studies import s2_v_vs_x_unet as s2
from lus_common.training.keras_augment import Augmentation, augment_batch
from tests.conftest import real_data_root


def test_v_and_x_unet_have_the_papers_parameter_counts():
    v, info = create_keras_model("v_unet", 32, "none")
    assert v.count_params() == 28_804_545  # paper 2, section 3.1.1
    assert info.used == "none/random"
    assert set_frozen(v, "encoder") == 14_714_688  # keras.applications VGG16 without top
    x, info = create_keras_model("x_unet", 32, None)
    assert x.count_params() == 31_031_745  # section 3.1.2
    assert info.used == "none (from scratch)"
    assert set_frozen(x, "bottleneck") == 14_157_824  # section 3.2: the bottleneck block
    assert not any("norm" in layer.name for layer in x.layers + v.layers)  # no batch norm
    assert x.input_shape[-1] == v.input_shape[-1] == 3


def test_frozen_bottleneck_does_not_move_and_the_rest_does():
    k = keras()
    model, _ = create_keras_model("x_unet", 32, None, seed=1)
    set_frozen(model, "bottleneck")
    model.compile(optimizer=k.optimizers.Adam(1e-3), loss=s2.dice_coef_loss)
    before = {layer.name: [np.array(w) for w in layer.get_weights()] for layer in model.layers}
    rng = np.random.default_rng(0)
    x = rng.random((2, 32, 32, 3), dtype=np.float32)
    y = (rng.random((2, 32, 32, 1)) > 0.5).astype(np.float32)
    model.fit(x, y, batch_size=2, epochs=1, verbose=0)
    for layer in model.layers:
        for w0, w1 in zip(before[layer.name], layer.get_weights()):
            moved = not np.array_equal(w0, np.asarray(w1))
            assert moved == (not layer.name.startswith("bottleneck_")), layer.name
    set_frozen(model, None)
    assert all(layer.trainable for layer in model.layers)


def test_dice_coef_is_the_authors_smoothed_soft_dice():
    y = np.array([[1, 1, 0, 0]], np.float32)
    p = np.array([[1, 0, 1, 0]], np.float32)
    ops = keras().ops
    # (2 * 1 + 1) / (2 + 2 + 1)
    assert float(ops.convert_to_numpy(s2.dice_coef(y, p))) == pytest.approx(0.6)
    assert float(ops.convert_to_numpy(s2.dice_coef_loss(y, y))) == pytest.approx(-1.0)


def test_augmentation_moves_the_mask_with_the_image():
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    mask = np.zeros((6, 32, 32, 1), np.float32)
    mask[:, 8:20, 4:14] = 1
    image = np.repeat(mask, 3, -1) * 0.8 + 0.1 * rng.random((6, 32, 32, 3), dtype=np.float32)
    none = Augmentation(0, 0, 0, 0, 0, False)
    same_x, same_y = augment_batch(image, mask, none, gen)
    np.testing.assert_allclose(same_x, image, atol=1e-5)
    np.testing.assert_array_equal(same_y, mask)
    flip_x, flip_y = augment_batch(image, mask, Augmentation(0, 0, 0, 0, 0, True), gen)
    flipped = [np.array_equal(flip_y[i], mask[i, :, ::-1]) for i in range(6)]
    kept = [np.array_equal(flip_y[i], mask[i]) for i in range(6)]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)
    big = Augmentation(20, 0.2, 0.2, 10, 0.2, True)
    ax, ay = augment_batch(image, mask, big, gen)
    assert set(np.unique(ay)) <= {0.0, 1.0}
    # the bright object is where the mask went
    inside = ax[..., 0][ay[..., 0] > 0].mean()
    outside = ax[..., 0][ay[..., 0] == 0].mean()
    assert inside > 0.8 and outside < 0.2
    assert not np.array_equal(ay, mask)


def _disk(r=30, shift=0, size=128):
    yy, xx = np.mgrid[:size, :size]
    return ((yy - 64) ** 2 + (xx - 64 - shift) ** 2) < r**2


def test_boundary_scores_of_known_shapes():
    disk = _disk()
    yy, xx = np.mgrid[:128, :128]
    angle, radius = np.arctan2(yy - 64, xx - 64), np.hypot(yy - 64, xx - 64)
    jagged = radius < 30 + 4 * np.sign(np.sin(12 * angle))
    assert roughness(disk) == pytest.approx(1.0, abs=0.02)
    assert roughness(jagged) > 1.15
    outlier = disk.copy()
    outlier[2:5, 2:5] = True
    pred = np.stack([disk, _disk(shift=5), outlier, np.zeros_like(disk)])
    truth = np.stack([disk, disk, disk, disk])
    s = boundary_scores(pred, truth)
    assert s.loc[0, "hd95"] == 0 and s.loc[0, "asd"] == 0
    assert s.loc[1, "hd95"] == pytest.approx(5.0, abs=0.01)  # a 5-pixel shift
    assert 2.0 < s.loc[1, "asd"] < 5.0  # the sides moved less than the front and back
    assert list(s["components_pred"]) == [1, 1, 2, 0]
    assert list(s["extra_components"]) == [0, 0, 1, 0]
    # an outlier of under 5 % of the boundary pixels leaves HD95 alone but not the mean distance
    assert s.loc[2, "hd95"] == 0 and s.loc[2, "asd"] > 1
    assert np.isnan(s.loc[3, "hd95"]) and s.loc[3, "empty_pred"] and np.isnan(s.loc[3, "roughness"])


def test_linear_probe_phantom_raw_frames_and_the_rib_body():
    d = lung_ultrasound_phantom(
        8, n_patients=1, frames_per_video=4, probe="linear", diagnoses="healthy",
        target="rib_body", beam_shape=(960, 128), frequency_mhz=5.2, seed=4,
    )  # fmt: skip
    assert d.images.shape == d.masks.shape == (8, 960, 128)
    assert set(d.meta["frequency_mhz"]) == {5.2}
    body, cortex = d.layers["rib_body"].astype(bool), d.layers["ribs"].astype(bool)
    assert (cortex <= body).all()  # the cortex is part of the rib
    assert body.any()
    # per scan line, the cortex is about 1 mm thick, the rib body (half-width 5-7 mm) over 4 mm
    depth = d.spacing_mm[0, 0]
    assert cortex.sum(1).max() * depth < 1.3
    assert body.sum(1).max() * depth > 4.0
    with pytest.raises(ValueError, match="linear"):
        lung_ultrasound_phantom(2, probe="convex", beam_shape=(96, 32))


def _jpeg(path, array):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).convert("RGB").save(path, quality=95)


def test_lus_pleura_rib_loader_on_files_in_the_real_layout(tmp_path):
    root = tmp_path / "lus_pleura_rib"
    mask = np.zeros((40, 60), np.uint8)
    mask[10:16, 20:40] = 255
    for clip in ("din-01-L-1", "din-02-R-2"):
        for f in (0, 1, 10):
            stem = f"{clip}-V-frame{f}"
            _jpeg(root / "image" / f"{stem}.jpg", np.full((40, 60), 90))
            _jpeg(root / "mask" / "pleural_line" / f"{stem}-pleural_line.jpg", mask)
            if clip == "din-01-L-1":
                _jpeg(root / "mask" / "rib_line" / f"{stem}-rib_line.jpg", mask)
    d = load_lus_pleura_rib(root, target="rib_line", image_size=32)
    assert len(d) == 6 and not d.synthetic and d.images.shape == (6, 32, 32)
    assert d.groups == ["din-01-L-1"] * 3 + ["din-02-R-2"] * 3
    assert list(d.meta["frame"]) == [0, 1, 10, 0, 1, 10]  # numeric frame order
    assert d.masks[:3].any((1, 2)).all() and not d.masks[3:].any()  # no file: empty mask
    assert d.info["frames_with"] == {"rib_line": 3, "rib_shadow": 0, "pleural_line": 6}
    with pytest.raises(ValueError, match="Unknown lus_pleura_rib structure"):
        load_lus_pleura_rib(root, target="ribs")
    _jpeg(root / "mask" / "rib_line" / "din-02-R-2-V-frame0-rib_line.jpg", np.zeros((20, 20)))
    with pytest.raises(ValueError, match="every mask must have its image's size"):
        load_lus_pleura_rib(root)
    _jpeg(root / "image" / "frame7.jpg", np.zeros((40, 60)))
    with pytest.raises(ValueError, match="Unexpected file name"):
        load_lus_pleura_rib(root)
    with pytest.raises(FileNotFoundError, match="No frames"):
        load_lus_pleura_rib(tmp_path / "nothing")


@pytest.mark.realdata
def test_lus_pleura_rib_real_frames():
    root = real_data_root()
    if root is None or not (root / "lus_pleura_rib").is_dir():
        pytest.skip("lus_pleura_rib not present")
    d = load_lus_pleura_rib(root / "lus_pleura_rib", image_size=64)
    assert len(d) == 156 and len(set(d.groups)) == 12
    assert d.info["frames_with"] == {"rib_line": 133, "rib_shadow": 148, "pleural_line": 156}


def test_sizes_and_folds_grouped_against_the_authors_leaky_kfold():
    p = s2.study_params("smoke")
    prep = s2.prepare(p)
    n_base = sum(g in prep["base_videos"] for g in prep["data"].groups)
    sizes = {s: len(s2.arm_images(prep, s, True)["ids"]) for s in ("200", "400", "600")}
    assert sizes == {"200": n_base, "400": 2 * n_base, "600": 2 * len(prep["data"])}
    images = s2.arm_images(prep, "400", True)
    np.testing.assert_array_equal(images["x"][n_base], images["x"][0][:, ::-1])  # flips follow
    grouped = s2.leak_counts(prep, images, "grouped", p["folds"], p["fold_seed"])
    leaky = s2.leak_counts(prep, images, "leaky", p["folds"], p["fold_seed"])
    assert grouped["test images"].sum() == leaky["test images"].sum() == 2 * n_base
    assert grouped.iloc[:, 3:].to_numpy().sum() == 0  # no flip, no video across the split
    assert leaky["with its flip (or original) in training"].sum() > 0
    assert leaky["with frames of its video in training"].sum() > 0
    # every fold holds base videos
    assert {prep["fold_of"][v] for v in prep["base_videos"]} == set(range(p["folds"]))


def test_study_params_refuse_bad_values():
    with pytest.raises(ValueError, match="Unknown arm 'v_unet_800'"):
        s2.study_params("smoke", arms=["v_unet_800"])
    with pytest.raises(ValueError, match="multiple of 16"):
        s2.study_params("smoke", image_size=40)
    with pytest.raises(ValueError, match="Unknown data_source value"):
        s2.study_params("smoke", data_source="xpie")
    assert s2.study_params("smoke", data_source="lus_pleura_rib")["target"] == "rib_line"
    assert s2.study_params("smoke")["target"] == "rib_body"


def test_packed_masks_round_trip():
    probs = np.random.default_rng(0).random((3, 17, 19))
    np.testing.assert_array_equal(s2.unpack_masks(s2.pack_masks(probs)), probs > 0.5)


def test_study_smoke_end_to_end_and_reruns_reuse_every_run():
    p = s2.study_params("smoke", device="cpu")
    prep = s2.prepare(p)
    out = s2.run_study(p, prep, progress=False)
    runs = out["runs"]
    assert len(runs) == len(s2.jobs(p)) == p["folds"] * (5 + 1 + 1)
    assert set(runs["scheme"]) == {"grouped", "leaky"} and set(runs["despeckle"]) == {True, False}
    v = runs[runs["arm"] == "v_unet_400"]
    assert v["tl_frozen_params"].eq(14_714_688).all() and v["ft_frozen_params"].eq(0).all()
    x = runs[runs["arm"] == "x_bb_400"]
    assert x["ft_frozen_params"].eq(14_157_824).all()
    # frozen parts do not move, trained ones do
    assert x["ft_bottleneck_change"].eq(0).all() and (x["ft_rest_change"] > 0).all()
    assert v["tl_encoder_change"].eq(0).all() and (v["ft_encoder_change"] > 0).all()
    assert (runs.loc[runs["arm"] == "x_all_400", "ft_bottleneck_change"] > 0).all()
    assert runs["weights_used"].str.startswith("X-UNet pretrained").sum() == 3 * p["folds"] + 2
    assert runs["ft_dice_keras"].between(0, 1).all()
    t1 = s2.table1(runs, out["pretrain"])
    assert len(t1) == 5 and t1["runs"].eq(p["folds"]).all()
    assert t1.loc["V-UNet, 400", "paper FT highest"] == 0.8632
    assert len(s2.leak_table(runs)) == 1 and len(s2.despeckle_table(runs)) == 1
    panels, titles = s2.overlay_panels(prep, out["predictions"], p["arms"])
    assert len(panels) == len(titles) == p["keep_predictions"] * 6
    again = s2.run_study(p, prep, progress=False)
    assert again["reused"] == len(runs) + 1  # every run and the pretraining
    pd.testing.assert_series_equal(again["runs"]["ft_dice_keras"], runs["ft_dice_keras"])


def test_findings_read_the_runs_numbers():
    p = s2.study_params("smoke")
    rows = []
    for fold in (0, 1):
        for arm, dice, hd, extra, rough in (
            ("v_unet_400", 0.86, 9.0, 2.0, 1.4), ("x_all_400", 0.82, 6.0, 0.5, 1.1),
            ("x_bb_400", 0.81, 6.5, 0.6, 1.1), ("v_unet_200", 0.78, 12.0, 3.0, 1.5),
        ):  # fmt: skip
            rows.append(
                {"arm": arm, "scheme": "grouped", "fold": fold, "despeckle": True, "seed": 0,
                 "ft_dice_keras": dice + 0.01 * fold, "ft_dice": dice, "ft_hd95": hd,
                 "ft_extra_components": extra, "ft_roughness": rough}
            )  # fmt: skip
        rows.append({**rows[-4], "scheme": "leaky", "ft_dice_keras": 0.9 + 0.01 * fold})
    pre = pd.DataFrame([{"val_dice_keras": 0.40, "trivial_dice_keras": 0.38,
                         "val_foreground": 0.97, "val_truth_foreground": 0.23}])  # fmt: skip
    text = "\n".join(s2.findings(pd.DataFrame(rows), p, "TEST", pre))
    assert "predicts 97 % of the pixels as object (truth 23 %)" in text
    assert "not got far beyond the soft Dice loss's trivial answer" in text
    assert "0.865 vs 0.825 (V - X = +0.040" in text and "Here V-UNet is higher" in text
    assert "It holds on 3 of 3 measures" in text
    assert "0.825 vs 0.815 (+0.010)" in text  # all layers vs BB frozen
    assert "an inflation of +0.040" in text


def test_v_vs_x_chapter_smoke(tmp_path):
    out = runner.run_notebook(
        "v_vs_x_unet", {"device": "cpu"}, profile="smoke", output=tmp_path / "nb.ipynb",
        progress=False,
    )  # fmt: skip
    text = json.dumps([c.get("outputs", []) for c in nbformat.read(out, 4).cells])
    assert "SYNTHETIC phantom" in text and "28,804,545" in text and "31,031,745" in text
    assert "The visual claim" in text


@pytest.mark.realdata
def test_v_vs_x_chapter_smoke_on_real_frames(tmp_path, monkeypatch):
    root = real_data_root()
    if root is None or not (root / "lus_pleura_rib").is_dir():
        pytest.skip("lus_pleura_rib not present")
    monkeypatch.setenv("LUS_DATA_DIR", str(root))
    out = runner.run_notebook(
        "v_vs_x_unet", {"device": "cpu", "data_source": "lus_pleura_rib"}, profile="smoke",
        output=tmp_path / "nb.ipynb", progress=False,
    )  # fmt: skip
    text = json.dumps([c.get("outputs", []) for c in nbformat.read(out, 4).cells])
    assert "LUS_PLEURA_RIB (real)" in text and "156 frames of 12 videos" in text

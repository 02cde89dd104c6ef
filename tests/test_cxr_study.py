"""The chest X-ray study's pieces: Dice loss, parameters, splits,
and the recorded reference runs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import FIXTURES

from lus_common.studies import s3_cxr_overfitting as cs


def test_dice_coefficient_of_a_known_overlap():
    ops = cs.keras().ops
    y = ops.convert_to_tensor(np.array([1, 1, 0, 0], np.float32))
    p = ops.convert_to_tensor(np.array([1, 0, 0, 0], np.float32))
    # the authors' final dice_coef: smoothing 1e-6 (an earlier, commented-out version used 1.0)
    assert float(cs.dice_coefficient(y, p)) == pytest.approx((2 * 1 + 1e-6) / (2 + 1 + 1e-6))
    assert float(cs.dice_coefficient(y, 0 * p)) == pytest.approx(1e-6 / (2 + 1e-6))
    assert float(cs.dice_loss(y, y)) == pytest.approx(0.0)


def test_all_background_is_the_background_fraction():
    masks = np.zeros((2, 4, 4), np.uint8)
    masks[:, :1] = 1  # a quarter of each image is lung
    bg = cs.background_fraction(masks)
    assert bg == pytest.approx(0.75)
    # An all-background prediction scores exactly the background fraction as pixel accuracy.
    pred = np.zeros_like(masks)
    accuracy = float((pred == masks).mean())
    assert cs.all_background(accuracy, foreground=float(pred.mean()), masks_background=bg)
    # Predicting all lung is not all background; nor is a good segmentation.
    assert not cs.all_background(float((1 - masks == 0).mean()), 1.0, bg)
    assert not cs.all_background(1.0, 0.25, bg)


def test_parameters_are_checked():
    assert cs.study_params("paper")["n_train"] == 100 and cs.study_params("paper")["epochs"] == 30
    with pytest.raises(ValueError, match="data_source"):
        cs.study_params("smoke", data_source="nih")
    with pytest.raises(ValueError, match="multiple of 32"):
        cs.study_params("smoke", image_size=48)
    with pytest.raises(ValueError, match="Unknown model"):
        cs.study_params("smoke", models=["unet", "densenet_unet"])
    with pytest.raises(ValueError, match="Unknown parameter"):
        cs.study_params("smoke", n_epochs=3)


def test_splits_are_disjoint_and_sized():
    p = cs.study_params("smoke")
    splits = cs.load_splits(p)
    names = ("val", "test", "pool")
    assert [len(splits[k]) for k in names] == [4, 4, 8]
    ids = [set(splits[k].ids) for k in names]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    x, y = cs.to_keras(splits["pool"])
    assert (
        x.shape == (8, 32, 32, 3)
        and y.shape == (8, 32, 32, 1)
        and np.array_equal(x[..., 0], x[..., 2])
    )
    assert cs.to_keras(splits["pool"], channels=1)[0].shape == (
        8,
        32,
        32,
        1,
    )  # the authors' U-Net input
    # The authors' stretch: one pair of 2-98 percentiles over the whole set, not per image.
    every = np.concatenate([splits[k].images for k in names])
    np.testing.assert_allclose(np.percentile(every, (2, 98)), [0, 1], atol=0.02)
    per_image = cs.load_splits(cs.study_params("smoke", stretch="per_image"))
    q = np.percentile(per_image["pool"].images, (2, 98), axis=(1, 2))
    np.testing.assert_allclose(q, [[0] * 8, [1] * 8], atol=0.02)
    assert not np.allclose(per_image["pool"].images, splits["pool"].images)
    # The fingerprint names the data: the same images give the same one, other images another.
    assert splits["fingerprint"] == cs.load_splits(p)["fingerprint"]
    assert (
        splits["fingerprint"]
        != cs.load_splits(cs.study_params("smoke", image_size=64))["fingerprint"]
    )


def test_too_few_real_images_is_explained(tmp_path, monkeypatch):
    (tmp_path / "shenzhen_cxr").symlink_to(FIXTURES / "shenzhen")
    monkeypatch.setenv("LUS_DATA_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="The split needs 16 images"):
        cs.load_splits(cs.study_params("smoke", data_source="shenzhen"))


# The authors' model.summary() totals, and the GroupNorm controls (BN's moving statistics gone).
AUTHORS_PARAMS = {
    ("unet", "batch"): 1_930_657,
    ("vgg16_unet", "batch"): 33_997_505,
    ("resnet50_unet", "batch"): 40_985_857,
    ("unet", "group"): 1_930_657 - 2_816,
    ("vgg16_unet", "group"): 33_997_505 - 7_936,
}


def test_reference_runs_are_made_by_this_code_and_named_honestly():
    """The chapter's real-data table and sentences come from this file: it must have been made by
    the current models (the authors' counts, this code version) on the real images, with the command
    that made it and the weights that were really loaded."""
    doc = json.loads(cs.REFERENCE_RUNS.read_text())
    assert "run_cxr_reference.py" in doc["command"] and "Shenzhen" in doc["what"]
    assert doc["runs"], "no reference run"
    for r in doc["runs"]:
        params, metrics = r["params"], r["metrics"]
        assert params["code_version"] == cs.CODE_VERSION, (
            "stale reference: rerun run_cxr_reference.py"
        )
        assert params["data_source"] == "shenzhen" and params["stretch"] == "global"
        assert (params["image_size"], r["n_val"], r["n_test"]) == (128, 49, 54)
        # the paper's 100 images for 30 epochs, or a point of the size curve at the same steps
        p = cs.study_params("paper")
        assert params["epochs"] == cs.epochs_for(p, r["n_train"])
        assert (r["n_train"] == 100) == (params["epochs"] == 30)
        if r["n_train"] != 100:
            assert (params["norm"], params["bn_momentum"]) == ("batch", cs.KERAS_BN_MOMENTUM)
        assert metrics["params"] == AUTHORS_PARAMS[params["model"], params["norm"]]
        if metrics["weights_used"].startswith(
            "none"
        ):  # the key names what was loaded, not the request
            assert params["weights"] == "none/random"
        else:
            assert params["weights"].startswith(f"{params['encoder_weights']}:")
        asked = params["encoder_weights"]  # given to all jobs, to one job, or the default
        assert (
            f"--encoder-weights {asked}" in doc["command"]
            or f":{asked}" in doc["command"]
            or asked == "imagenet"
        )
    what, table = cs.reference_table()
    assert len(table) == len(doc["runs"]) and "test Dice, paper's definition" in table


def test_reference_findings_quote_the_file():
    runs = cs.reference_runs()
    p = cs.study_params("paper")
    sentences = cs.findings(runs, p, background=runs["test_background_fraction"].mean())
    main = cs.main_runs(runs, p)
    assert len(sentences) >= main["model"].nunique()
    for model, g in main.groupby("model"):
        text = next(t for t in sentences if t.startswith(f"**{cs.MODEL_LABELS[model]}**"))
        if "predicts all background even with batch statistics" not in text:
            assert f"{g['test_dice_training'].mean():.3f}" in text


def test_reference_jobs_add_the_size_curve_to_the_batch_norm_jobs_at_keras_momentum():
    jobs = [("unet", "batch", 0.99, "none"), ("unet", "group", 0.99, "none"),
            ("unet", "batch", 0.9, "none"), ("vgg16_unet", "batch", 0.99, "hed")]  # fmt: skip
    main = cs.reference_jobs(jobs, [0, 1], 100)
    assert main == [(*j, s, 100) for j in jobs for s in (0, 1)]
    runs = cs.reference_jobs(jobs, [0, 1], 100, train_sizes=[200, 25, 100], curve_seeds=[3])
    assert runs[: len(main)] == main
    # 100 is the main setting already; GroupNorm and momentum 0.9 stay at 100 images
    assert runs[len(main) :] == [
        ("unet", "batch", 0.99, "none", 3, 25),
        ("vgg16_unet", "batch", 0.99, "hed", 3, 25),
        ("unet", "batch", 0.99, "none", 3, 200),
        ("vgg16_unet", "batch", 0.99, "hed", 3, 200),
    ]
    # without curve seeds, the curve runs every seed
    assert len(cs.reference_jobs(jobs, [0, 1], 100, train_sizes=[50])) == len(main) + 4
    # the curve's runs train for the main setting's 210 steps (100 images in batches of 16, 30
    # epochs): 25 images are 2 batches an epoch, 105 epochs
    p = cs.study_params("paper")
    assert cs.epochs_for(p, 25) == 105 and cs.epochs_for(p, 200) == 16


def test_size_findings_read_the_curve():
    runs = pd.DataFrame(
        [
            {"model": m, "n_train": n, "seed": s, "bn_momentum": 0.99, "norm": "batch",
             "encoder_arm": "asked", "epochs": e, "steps": 210,
             "test_dice_inference": d + 0.01 * s, "test_dice_recomputed_bn": d + 0.1}
            for m, n, e, d in [("unet", 25, 105, 0.5), ("unet", 100, 30, 0.8),
                               ("unet", 200, 16, 0.7), ("vgg16_unet", 100, 30, 0.9)]
            for s in (0, 1)
        ]
    )  # fmt: skip
    curve = cs.size_curve(runs)
    assert curve["dice"].round(3).tolist() == [0.505, 0.805, 0.705, 0.905]
    (text,) = cs.size_findings(curve)  # the VGG16-U-Net has one size: no sentence
    assert text.startswith("**U-Net**: test Dice 0.505 with 25 training images and 0.705 with 200")
    assert "highest 0.805 at 100 images" in text and "2 seed(s)" in text
    assert "recomputing the BN statistics: 0.600 and 0.800" in text


def _run(
    model,
    norm="batch",
    momentum=0.99,
    infer=0.9,
    train=0.9,
    fixed=0.9,
    bn=14,
    acc_inf=0.95,
    acc_train=0.95,
    fg_inf=0.25,
    fg_train=0.25,
    seed=0,
):
    return {
        "model": model,
        "norm": norm,
        "bn_momentum": momentum,
        "seed": seed,
        "n_train": 100,
        "steps": 210,
        "bn_layers": bn if norm == "batch" else 0,
        "test_dice_inference": infer,
        "test_dice_training": train,
        "test_dice_recomputed_bn": fixed,
        "test_accuracy_inference": acc_inf,
        "test_accuracy_training": acc_train,
        "test_foreground_inference": fg_inf,
        "test_foreground_training": fg_train,
    }


def _findings(*rows):
    import pandas as pd

    p = cs.study_params("paper", models=["unet", "vgg16_unet"])
    return cs.findings(pd.DataFrame(rows), p, background=0.741)


FAILS = dict(
    infer=0.0, train=0.9, fixed=0.9, acc_inf=0.741, fg_inf=0.0
)  # all background in inference


def test_findings_say_what_each_pattern_supports():
    # The authors' U-Net: all background in inference mode, fine in training mode.
    text = _findings(_run("unet", **FAILS))[0]
    assert (
        "predicts all background in inference mode" in text
        and "0.900 with the same weights" in text
    )
    assert "transductive" in text and "12 % of their initial values" in text  # 0.99 ** 210
    # No gap: nothing is blamed on batch norm.
    assert "shows no inference/training gap" in _findings(_run("unet"))[0]
    # A gap under the threshold is a small loss, not "nothing" (VGG16-U-Net on Shenzhen: 0.08).
    small = _findings(_run("vgg16_unet", infer=0.869, train=0.949, fixed=0.950))[0]
    assert small.startswith("**VGG16-U-Net** loses a little in inference mode (0.869, against 0.9")
    assert "less than the 0.10 this chapter takes" in small
    # A model that fails in both modes cannot speak to batch norm.
    stuck = _run(
        "unet", infer=0.0, train=0.0, acc_inf=0.741, acc_train=0.741, fg_inf=0.0, fg_train=0.0
    )
    assert "predicts all background even with batch statistics" in _findings(stuck)[0]


@pytest.mark.parametrize(
    "control, verdict",
    [
        (dict(infer=0.88, train=0.88), "the batch-norm explanation holds"),
        (dict(infer=0.5, train=0.5), "explain only part of the failure"),
        (dict(infer=0.05, train=0.05), "the batch-norm explanation does not hold"),
        (dict(infer=0.0, train=0.0, acc_inf=0.741, fg_inf=0.0), "neither confirm nor refute"),
    ],
)
def test_control_verdicts(control, verdict):
    out = _findings(_run("unet", **FAILS), _run("unet", norm="group", **control))
    assert len(out) == 2 and out[1].startswith("**Control, U-Net with GroupNorm**")
    verdicts = [
        "the batch-norm explanation holds",
        "explain only part of the failure",
        "the batch-norm explanation does not hold",
        "neither confirm nor refute",
    ]
    assert [v for v in verdicts if v in out[1]] == [verdict]  # exactly one verdict, the right one


def test_control_without_a_failure_to_explain():
    out = _findings(_run("unet"), _run("unet", norm="group", infer=0.2, train=0.2))
    assert "no failure to explain" in out[1]


def test_momentum_runs_are_reported_with_the_failure():
    out = _findings(_run("unet", **FAILS), _run("unet", momentum=0.9, infer=0.89, train=0.9))
    assert "Trained with momentum 0.9" in out[0] and "0.890 in inference mode" in out[0]


def _arm(arm, train, test, weights):
    return {"model": "vgg16_unet", "norm": "batch", "seed": 0, "n_train": 100,
            "bn_momentum": 0.99, "encoder_arm": arm, "last_train_dice": train,
            "last_val_dice": test, "test_dice_keras": test, "test_dice_inference": test,
            "weights_used": weights}  # fmt: skip


def test_weights_findings_compare_the_pretrained_arm_with_its_random_control():
    p = cs.study_params("paper")
    hed = "hed-bsds500 (local file vgg16.hed-bsds500.safetensors)"
    runs = pd.DataFrame([_arm("asked", 0.98, 0.95, hed), _arm("random", 0.97, 0.80, "none/random")])
    table = cs.weights_table(runs, p)
    assert table["weights"].tolist() == ["hed-bsds500", "none/random"]
    assert table["overfitting gap (train - test)"].tolist() == [0.03, 0.17]
    (text,) = cs.weights_findings(runs, p)
    assert text.startswith("**VGG16-U-Net** with `hed-bsds500` weights overfits less than")
    assert "gap 0.030 vs 0.170" in text and "0.950 vs 0.800 (+0.150)" in text
    same = pd.DataFrame([_arm("asked", 0.98, 0.95, hed), _arm("random", 0.98, 0.96, "none/random")])
    assert "about as much" in cs.weights_findings(same, p)[0]
    # the asked weights did not load: nothing to compare, and the sentence says why
    failed = runs.assign(weights_used="none/random")
    assert "no pretrained arm" in cs.weights_findings(failed, p)[0]
    # the random control is not a main run: Tables 1 and 2 show the asked arm only
    assert cs.main_runs(runs, p)["encoder_arm"].tolist() == ["asked"]


def test_random_controls_run_only_where_the_asked_weights_load(monkeypatch):
    p = cs.study_params("smoke")
    assert p["encoder_weights"] == cs.NATURAL_WEIGHTS and p["random_controls"] == ["vgg16_unet"]
    monkeypatch.setattr(cs, "keras_weights_key", lambda model, weights: "hed-bsds500:sha256:x")
    controls = [j for j in cs.jobs(p) if j[-1] == "random"]
    assert controls == [("vgg16_unet", 0, 8, 0.99, "batch", "random")]
    monkeypatch.setattr(cs, "keras_weights_key", lambda model, weights: "none/random")
    assert not [j for j in cs.jobs(p) if j[-1] == "random"]  # random already: no duplicate run
    with pytest.raises(ValueError, match="Unknown model with an encoder 'unet'"):
        cs.study_params("smoke", random_controls=["unet"])

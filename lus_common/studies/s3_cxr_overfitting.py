"""Study 3 (Kim): U-Net vs VGG16-U-Net vs ResNet50-U-Net on 100 chest X-rays, in Keras 3 (torch).

The setup follows the authors' public notebook (the paper omits most of it): 128x128 grey images
with one 2-98 percentile stretch over the whole set, the grey image for the U-Net and the same
repeated to 3 channels for the pretrained encoders (no ImageNet preprocessing); a random split of
100 training, 49 validation and 54 test images; no augmentation; loss 1 - Dice (soft Dice over the
flattened batch, smoothing 1e-6); Adam 1e-4; batch 16; 30 epochs, no early stopping, the last epoch
reported; test scores by ``model.evaluate`` (batches of 32, soft Dice averaged over batches).

Beyond the paper: several seeds with a significance test; the batch-norm experiment, designed so
that it can fail (the same architectures with GroupNorm instead of batch norm, separate trainings at
BN momentum 0.99 and 0.9, Dice in inference mode, in training mode and after recomputing the BN
statistics on the training set); thresholded per-image Dice beside the paper's definition; and a
training-set-size curve at a fixed number of optimisation steps.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from lus_common.config.paths import PROJECT_ROOT
from lus_common.config.profiles import resolve_params
from lus_common.config.registry import lookup
from lus_common.data.sets import SegmentationSet
from lus_common.data.shenzhen import load_shenzhen, percentile_normalize
from lus_common.evaluation.metrics import segmentation_scores
from lus_common.evaluation.stats import format_mean_std, mean_std
from lus_common.models.keras_unets import (
    CXR_MODELS as MODELS,
)
from lus_common.models.keras_unets import (
    INPUT_CHANNELS,
    batch_norm_layers,
    create_keras_model,
    free_memory,
    keras,
    keras_weights_key,
    predict_probabilities,
    recompute_bn_statistics,
    set_bn_momentum,
)
from lus_common.models.weights import RANDOM_NAMES, weights_name
from lus_common.phantoms.cxr import chest_xray_phantom
from lus_common.store import results
from lus_common.store.environment import environment_info
from lus_common.studies import base
from lus_common.studies.base import (
    Collector,
    cached_run,
    check_choice,
    derive_profiles,
    run_record,
)

STUDY = "cxr_overfitting"
MODEL_LABELS = {"unet": "U-Net", "vgg16_unet": "VGG16-U-Net", "resnet50_unet": "ResNet50-U-Net"}
KERAS_BN_MOMENTUM = 0.99  # Keras' default, used by the authors

# Bumped whenever the models or the training code change what a run computes: stored runs of an
# older version are not reused.
CODE_VERSION = "authors-2"
# The paper's ImageNet encoders when a user has their Keras files (or a network), else the
# natural-image VGG16 that `lus weights import` converts (HED's: ImageNet VGG16 tuned for edges on
# BSDS500). ResNet50 has no such source: it stays random, and the tables say so.
NATURAL_WEIGHTS = ["imagenet", "hed-bsds500"]
# Models whose batch norm is all in layers we add, so that a GroupNorm copy is a clean control.
CONTROL_MODELS = ("unet", "vgg16_unet")

# The profiles read as a table (ruff format leaves them as written).
# fmt: off
PROFILES = derive_profiles(
    # The authors' notebook on the real Shenzhen set, several seeds, the BN experiment, the size
    # curve.
    dict(data_source="shenzhen", image_size=128, n_train=100, n_val=49, n_test=54, split_seed=0,
         stretch="global", epochs=30, batch_size=16, lr=1e-4, seeds=[0, 1, 2, 3, 4],
         models=list(MODELS), encoder_weights=NATURAL_WEIGHTS, random_controls=["vgg16_unet"],
         bn_momenta=[0.99, 0.9], norm_controls=["group"], train_sizes=[25, 50, 100, 200, 400],
         curve_seeds=[0, 1, 2], curve_steps="matched", executor="local"),
    # About three minutes on a 2-core CPU (the book's default; 12 runs, nine of them Keras VGG16-
    # or ResNet50-U-Nets at about 1.5 s a step there, a quarter of it Keras' torch backend copying
    # every conv kernel per call): the chest X-ray phantom at 32 px, 16 training images in batches
    # of 8 for 5 epochs (10 steps, at 10x the paper's step size so that they learn something; the
    # paper had 210 steps at 1e-4), one seed.
    quick=dict(data_source="synthetic", image_size=32, n_train=16, n_val=8, n_test=8, epochs=5,
               batch_size=8, lr=1e-3, seeds=[0], train_sizes=[8, 16], curve_seeds=[0]),
    # Seconds, for tests.
    smoke=dict(data_source="synthetic", image_size=32, n_train=8, n_val=4, n_test=4, epochs=1,
               batch_size=4, seeds=[0], train_sizes=[4, 8], curve_seeds=[0]),
)
# fmt: on

# Paper 3, Tables 1 and 2 (the last epoch of one run); "< 0.001" entered as 0.001.
PAPER_TABLE1 = pd.DataFrame(
    {
        "train accuracy": [0.993, 0.993, 0.986],
        "train Dice": [0.978, 0.978, 0.956],
        "validation accuracy": [0.977, 0.973, 0.737],
        "validation Dice": [0.0230, 0.950, 0.001],
    },
    index=list(MODELS),
)
PAPER_TABLE2 = pd.DataFrame(
    {"test accuracy": [0.741, 0.975, 0.741], "test Dice": [0.052, 0.950, 0.001]}, index=list(MODELS)
)
FIGURE_CUTOFF = 0.03  # the paper's Figure 3
EVALUATE_BATCH = 32  # Keras' model.evaluate default, with which the paper's test numbers were made
NORM_LABELS = {"batch": "batch norm", "group": "GroupNorm", "none": "no norm"}


def study_params(profile: str = "quick", **given) -> dict:
    """Resolve the notebook's parameters against this study's profiles and check them.

    Raises:
        ValueError: an unknown data source, a bad image size, or an unknown model.
    """
    p = resolve_params(PROFILES, profile, **given)
    check_choice(p, "data_source", ("synthetic", "shenzhen"))
    if p["image_size"] % 32 or p["image_size"] < 32:
        raise ValueError(
            "image_size must be a multiple of 32 (five 2x poolings in VGG16/ResNet50), "
            f"got {p['image_size']}."
        )
    for model in p["models"]:
        lookup(MODELS, model, "model", error=ValueError)
    check_choice(p, "stretch", ("global", "per_image"))  # global: the authors'
    p["random_controls"] = list(np.atleast_1d(p["random_controls"] or []))
    for model in p["random_controls"]:
        lookup([m for m in MODELS if m != "unet"], model, "model with an encoder", error=ValueError)
    check_choice(p, "curve_steps", ("matched", "epochs"))
    p["norm_controls"] = list(np.atleast_1d(p["norm_controls"] or []))
    for norm in p["norm_controls"]:
        lookup(("group", "none"), norm, "norm control (GroupNorm or none)", error=ValueError)
    p["seeds"] = [int(s) for s in np.atleast_1d(p["seeds"])]
    p["curve_seeds"] = [int(s) for s in np.atleast_1d(p["curve_seeds"])]
    p["train_sizes"] = sorted(int(n) for n in np.atleast_1d(p["train_sizes"]))
    return p


def load_splits(p: dict) -> dict[str, SegmentationSet]:
    """Validation, test and a training pool
    (its first ``n`` images are the training set of size ``n``).

    Images get the authors' 2-98 percentile stretch (``stretch="global"``: one pair of percentiles
    over the whole set, as the authors; ``"per_image"``: per image). The split is a seeded random
    permutation. ``"fingerprint"`` names the loaded data in run keys.

    Raises:
        ValueError: fewer images than the split needs.
    """
    need = p["n_val"] + p["n_test"] + max([p["n_train"], *p["train_sizes"]])
    if p["data_source"] == "shenzhen":
        data = load_shenzhen(image_size=p["image_size"])
    else:
        data = chest_xray_phantom(
            need, p["image_size"], abnormal_fraction=0.3, seed=2000 + p["split_seed"]
        )
    if len(data) < need:
        raise ValueError(
            f"The split needs {need} images (validation {p['n_val']}, test {p['n_test']}, training "
            f"up to {need - p['n_val'] - p['n_test']}); {data.source} has {len(data)}. "
            "Lower n_train or train_sizes."
        )
    data.images = percentile_normalize(data.images, per_image=p["stretch"] == "per_image")
    order = np.random.default_rng(p["split_seed"]).permutation(len(data))
    val, test = order[: p["n_val"]], order[p["n_val"] : p["n_val"] + p["n_test"]]
    pool = order[p["n_val"] + p["n_test"] :]
    return {
        "val": data.subset(val),
        "test": data.subset(test),
        "pool": data.subset(pool),
        "fingerprint": data.fingerprint(),
    }


def to_keras(data: SegmentationSet, channels: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)``: grey images (N, H, W, 1), or repeated to 3 channels,
    and masks (N, H, W, 1), float32."""
    x = np.repeat(data.images[..., None], channels, axis=-1).astype(np.float32)
    return x, data.masks[..., None].astype(np.float32)


def dice_coefficient(y_true, y_pred, smooth: float = 1e-6):
    """The authors' soft Dice: ``(2 |y n p| + e) / (|y| + |p| + e)`` over the whole flattened batch,
    no threshold, ``e = 1e-6`` (their final ``dice_coef``)."""
    ops = keras().ops
    y_true, y_pred = ops.reshape(y_true, (-1,)), ops.reshape(y_pred, (-1,))
    inter = ops.sum(y_true * y_pred)
    return (2.0 * inter + smooth) / (ops.sum(y_true) + ops.sum(y_pred) + smooth)


def dice_loss(y_true, y_pred):
    """1 - Dice, the paper's only loss."""
    return 1.0 - dice_coefficient(y_true, y_pred)


_RUN_KEYS = (
    "data_source",
    "image_size",
    "n_val",
    "n_test",
    "split_seed",
    "stretch",
    "batch_size",
    "lr",
    "encoder_weights",
)


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Optimisation (and batch-norm update) steps in one epoch of ``n_train`` images."""
    return -(-n_train // batch_size)


def epochs_for(p: dict, n_train: int) -> int:
    """Epochs of a run with ``n_train`` images: the profile's, or (``curve_steps="matched"``) as
    many as give the main setting's number of steps (``epochs`` x steps of ``n_train`` images)."""
    if n_train == p["n_train"] or p["curve_steps"] == "epochs":
        return int(p["epochs"])
    target = p["epochs"] * steps_per_epoch(p["n_train"], p["batch_size"])
    return max(1, round(target / steps_per_epoch(n_train, p["batch_size"])))


def run_params(
    p: dict,
    model: str,
    seed: int,
    n_train: int,
    bn_momentum: float,
    norm: str = "batch",
    data_fingerprint: str = "",
) -> dict:
    """The parameters that identify one run: the study's, the weights that will really be loaded
    (not only those asked for), the code version and a fingerprint of the data."""
    epochs = epochs_for(p, n_train)
    return {
        **{k: p[k] for k in _RUN_KEYS},
        "model": model,
        "norm": norm,
        "seed": int(seed),
        "n_train": int(n_train),
        "bn_momentum": float(bn_momentum),
        "epochs": epochs,
        "steps": epochs * steps_per_epoch(n_train, p["batch_size"]),
        "weights": keras_weights_key(model, p["encoder_weights"]),
        "code_version": CODE_VERSION,
        "data_fingerprint": data_fingerprint,
    }


def _summary(per_image: pd.DataFrame) -> dict:
    """Mean pixel accuracy and Dice of per-image scores."""
    return {
        "accuracy": float(per_image["pixel_accuracy"].mean()),
        "dice": float(per_image["dice"].mean()),
    }


def _keras_evaluate(model, x, y) -> dict:
    """The paper's test numbers: ``model.evaluate`` in batches of 32,
    soft Dice averaged over batches."""
    scores = model.evaluate(x, y, batch_size=EVALUATE_BATCH, verbose=0, return_dict=True)
    dice = next(v for k, v in scores.items() if "dice" in k)
    return {"dice": float(dice), "accuracy": float(scores["accuracy"])}


RUN_NAME_KEYS = ("model", "norm", "seed", "n_train", "bn_momentum", "data_source")


def run_one(
    p: dict,
    model_name: str,
    seed: int,
    n_train: int,
    bn_momentum: float,
    splits: dict,
    norm: str = "batch",
    keep_predictions: int = 4,
    arm: str = "asked",
) -> dict:
    """Train and evaluate one run, or reuse the stored run with the same parameters.

    ``arm="random"`` is the random-encoder control of a pretrained arm: the same run with
    ``encoder_weights="none"``.

    Returns:
        The run as :func:`lus_common.store.results.load_run` gives it, plus ``"reused"``.
    """
    if arm == "random":
        p = {**p, "encoder_weights": "none"}
    key = run_params(p, model_name, seed, n_train, bn_momentum, norm, splits.get("fingerprint", ""))
    channels = INPUT_CHANNELS[model_name]
    train = splits["pool"].subset(np.arange(n_train))

    def build():
        return create_keras_model(model_name, p["image_size"], p["encoder_weights"], seed, norm)

    def fit(model, weights, rp: dict) -> dict:
        k = keras()
        (x, y), (xv, yv), (xt, yt) = (
            to_keras(d, channels) for d in (train, splits["val"], splits["test"])
        )
        n_bn = set_bn_momentum(model, bn_momentum)
        history, seconds = _fit_keras(model, p, rp["epochs"], (x, y), (xv, yv))
        metrics = {
            "weights_used": weights.used,
            "params": int(model.count_params()),
            "bn_layers": n_bn,
            "train_seconds": seconds,
            "steps": rp["steps"],
            "epochs": rp["epochs"],
            "test_background_fraction": float(1 - yt.mean()),
            **{f"test_{key}_keras": value for key, value in _keras_evaluate(model, xt, yt).items()},
        }
        probs, per_image = _bn_metrics(model, (x, y), (xt, yt), p["batch_size"], metrics)
        per_image.insert(0, "id", splits["test"].ids)
        last = history.iloc[-1]
        metrics.update(
            last_train_accuracy=float(last["accuracy"]),
            last_train_dice=float(last["dice"]),
            last_val_accuracy=float(last["val_accuracy"]),
            last_val_dice=float(last["val_dice"]),
        )
        config = {
            "study": STUDY,
            "params": rp,
            "profile": p["profile"],
            "weights": weights.as_dict(),
            "synthetic": train.synthetic,
            "n_train": n_train,
            "n_val": len(xv),
            "n_test": len(xt),
            "keras": k.__version__,
            "keras_backend": k.backend.backend(),
            "environment": environment_info(),
        }
        arrays = {
            name: results.encode_probabilities(probs["test", mode][:keep_predictions])
            for name, mode in (("probs", "inference"), ("probs_training_mode", "training"))
        }
        return run_record(config, metrics, history, per_image, arrays)

    return cached_run(STUDY, key, RUN_NAME_KEYS, build, fit, free_memory)


def _fit_keras(model, p: dict, epochs: int, train: tuple, val: tuple) -> tuple[pd.DataFrame, float]:
    """Compile with the authors' loss, metrics and optimiser, fit, and return the per-epoch history
    (``dice``, ``val_dice``, ``accuracy``, ...) and the seconds the fit took."""
    k = keras()
    model.compile(
        optimizer=k.optimizers.Adam(p["lr"]),
        loss=dice_loss,
        metrics=[dice_coefficient, k.metrics.BinaryAccuracy(name="accuracy")],
    )
    start = time.perf_counter()
    trained = model.fit(
        *train,
        batch_size=p["batch_size"],
        epochs=epochs,
        validation_data=val,
        shuffle=True,
        verbose=0,
    )
    seconds = time.perf_counter() - start
    history = pd.DataFrame(trained.history).rename(
        columns={"dice_coefficient": "dice", "val_dice_coefficient": "val_dice"}
    )
    history.insert(0, "epoch", np.arange(1, len(history) + 1))
    return history, seconds


def _bn_metrics(model, train: tuple, test: tuple, batch_size: int, metrics: dict):
    """The batch-norm test of one trained model, into ``metrics``: train and test scores in
    inference and training mode (:func:`_score_modes`), then in inference mode once the moving
    statistics are recomputed on the training images. Returns the probabilities and per-image test
    scores of :func:`_score_modes` (before the recomputation)."""
    probs, per_image = _score_modes(model, {"train": train, "test": test}, batch_size, metrics)
    recompute_bn_statistics(model, train[0], batch_size)
    for split, (xs, ys) in {"train": train, "test": test}.items():
        scores = segmentation_scores(predict_probabilities(model, xs, batch_size), ys[..., 0])
        for key, value in _summary(scores).items():
            metrics[f"{split}_{key}_recomputed_bn"] = value
    return probs, per_image


def _score_modes(model, sets: dict, batch_size: int, metrics: dict) -> tuple[dict, pd.DataFrame]:
    """Scores of each set in inference and in training mode (batch statistics of the batch) into
    ``metrics``; returns the probabilities and the per-image test scores in inference mode."""
    probs, per_image = {}, None
    for split, (xs, ys) in sets.items():
        for mode in ("inference", "training"):
            probs[split, mode] = predict_probabilities(
                model, xs, batch_size, training=mode == "training"
            )
            scores = segmentation_scores(probs[split, mode], ys[..., 0])
            for key, value in _summary(scores).items():
                metrics[f"{split}_{key}_{mode}"] = value
            metrics[f"{split}_foreground_{mode}"] = float((probs[split, mode] > 0.5).mean())
            if (split, mode) == ("test", "inference"):
                per_image = scores
    return probs, per_image


def jobs(p: dict) -> list[tuple[str, int, int, float, str, str]]:
    """Every run of the parameters, as ``(model, seed, n_train, bn_momentum, norm, arm)``.

    The paper's setting (every model x seed, batch norm at Keras' momentum 0.99); the same trainings
    at every other momentum of ``bn_momenta`` (models with batch norm); the same architectures with
    ``norm_controls`` instead of batch norm (:data:`CONTROL_MODELS`); the same trainings with a
    random encoder (``arm="random"``) for each of ``random_controls`` whose asked weights load
    (else the asked arm is random already); then every model x curve seed at each other
    training-set size. Every other run has ``arm="asked"`` (``encoder_weights`` as given).
    """
    n, b0 = p["n_train"], KERAS_BN_MOMENTUM
    out = [(m, s, n, b0, "batch", "asked") for m in p["models"] for s in p["seeds"]]
    out += [(m, s, n, b, "batch", "asked") for b in p["bn_momenta"] if b != b0
            for m in p["models"] for s in p["seeds"]]  # fmt: skip
    out += [(m, s, n, b0, norm, "asked") for norm in p["norm_controls"]
            for m in p["models"] if m in CONTROL_MODELS for s in p["seeds"]]  # fmt: skip
    pretrained = [m for m in p["random_controls"] if m in p["models"]
                  and keras_weights_key(m, p["encoder_weights"]) != "none/random"]  # fmt: skip
    out += [(m, s, n, b0, "batch", "random") for m in pretrained for s in p["seeds"]]
    out += [(m, s, size, b0, "batch", "asked") for size in p["train_sizes"] if size != n
            for m in p["models"] for s in p["curve_seeds"]]  # fmt: skip
    return out


def reference_jobs(
    jobs: list[tuple[str, str, float, str]],
    seeds: list[int],
    n_train: int,
    train_sizes=(),
    curve_seeds=None,
) -> list[tuple[str, str, float, str, int, int]]:
    """The runs of ``run_cxr_reference.py``, as ``(model, norm, momentum, weights, seed, n_train)``.

    Every job ``(model, norm, momentum, weights)`` for every seed at the paper's ``n_train``; then,
    as :func:`jobs` lays out the chapter's curve, each job with batch norm at Keras' momentum at
    every other size of ``train_sizes``, for each of ``curve_seeds`` (default ``seeds``). The
    curve's runs train for the main setting's number of steps (:func:`epochs_for`).
    """
    curve_seeds = seeds if curve_seeds is None else curve_seeds
    out = [(m, norm, b, w, s, n_train) for m, norm, b, w in jobs for s in seeds]
    out += [(m, norm, b, w, s, size) for size in sorted(set(train_sizes)) if size != n_train
            for m, norm, b, w in jobs if (norm, b) == ("batch", KERAS_BN_MOMENTUM)
            for s in curve_seeds]  # fmt: skip
    return out


def _run_job(p, splits, model, seed, n_train, momentum, norm, arm) -> dict:
    """One job of :func:`jobs` for the sweep executor."""
    return run_one(p, model, seed, n_train, momentum, splits, norm, arm=arm)


def run_study(p: dict, splits: dict, progress: bool = True) -> dict:
    """Every run of :func:`jobs`, trained or reused.

    Returns:
        ``{"runs": one row per run, "histories": per-epoch rows of the main runs, "per_image":
        per-image test rows of the main runs, "predictions": {model: test probabilities, inference
        and training mode}, "weights": {model: weights used}, "reused": count}``.
    """
    runs = Collector()
    for job, run in base.sweep_runs(_run_job, jobs(p), (p, splits), p, progress):
        model, seed, n, momentum, norm, arm = job
        main = (n, momentum, norm, arm) == (p["n_train"], KERAS_BN_MOMENTUM, "batch", "asked")
        labels = {"model": model, "norm": norm, "seed": seed, "n_train": n, "bn_momentum": momentum}
        runs.add(
            run,
            {**labels, "encoder_arm": arm},
            main={"model": model, "seed": seed} if main else None,
            name=model,
            predictions=lambda arrays: {
                "inference": results.decode_probabilities(arrays["probs"]),
                "training": results.decode_probabilities(arrays["probs_training_mode"]),
            },
        )
    return runs.result()


def background_fraction(masks: np.ndarray) -> float:
    """Share of background pixels: the pixel accuracy of the trivial "all background" prediction."""
    return float(1 - np.asarray(masks, dtype=float).mean())


def all_background(
    accuracy: float, foreground: float, masks_background: float, tol: float = 0.01
) -> bool:
    """True when a prediction is (nearly) all background: under 1 % of the pixels predicted lung and
    pixel accuracy within ``tol`` of the background fraction (the paper's U-Net: 0.741 = 0.741)."""
    return foreground < 0.01 and abs(accuracy - masks_background) < tol


def _mode_state(g: pd.DataFrame, mode: str, bg: float) -> str:
    acc, fg = g[f"test_accuracy_{mode}"].mean(), g[f"test_foreground_{mode}"].mean()
    return "all-background" if all_background(acc, fg, bg) else "segments"


def asked(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs with the encoder weights as asked (not the random-encoder controls)."""
    return runs[runs["encoder_arm"] == "asked"] if "encoder_arm" in runs else runs


def main_runs(runs: pd.DataFrame, p: dict) -> pd.DataFrame:
    """The runs of the paper's setting: ``n_train`` images, batch norm at Keras' momentum, the
    encoder weights as asked."""
    runs = asked(runs)
    norm = runs["norm"] if "norm" in runs else "batch"
    return runs[
        (runs["n_train"] == p["n_train"])
        & (runs["bn_momentum"] == KERAS_BN_MOMENTUM)
        & (norm == "batch")
    ]


def weights_table(runs: pd.DataFrame, p: dict) -> pd.DataFrame:
    """Each model with a random-encoder control: the asked (pretrained) arm against the random one,
    at the paper's setting. The overfitting gap is train Dice (as ``fit`` reports it) minus the
    test Dice in the paper's definition."""
    sel = runs[(runs["n_train"] == p["n_train"]) & (runs["bn_momentum"] == KERAS_BN_MOMENTUM)]
    sel = sel[(sel["norm"] == "batch") & sel["model"].isin(p["random_controls"])]
    rows = []
    for (model, arm), g in sel.groupby(["model", "encoder_arm"], sort=False):
        gap = g["last_train_dice"] - g["test_dice_keras"]
        rows.append(
            {
                "model": MODEL_LABELS[model],
                "encoder": "as asked" if arm == "asked" else "random (control)",
                "weights": weights_name(g["weights_used"].iloc[0]),
                "seeds": len(g),
                "train Dice (fit)": g["last_train_dice"].mean(),
                "validation Dice": g["last_val_dice"].mean(),
                "test Dice, paper's definition": g["test_dice_keras"].mean(),
                "test Dice, inference mode": g["test_dice_inference"].mean(),
                "overfitting gap (train - test)": gap.mean(),
            }
        )
    return pd.DataFrame(rows).round(3)


def weights_findings(runs: pd.DataFrame, p: dict) -> list[str]:
    """The paper's central claim, "the pretrained VGG16 overfits less", tested on the same
    architecture: pretrained against random encoder, from the runs' own numbers."""
    table = weights_table(runs, p)
    out = []
    for model, g in table.groupby("model", sort=False):
        arms = g.set_index("encoder")
        if len(arms) < 2 or arms.loc["as asked", "weights"].startswith("none"):
            out.append(
                f"**{model}**: no pretrained arm to compare with its random control here (the "
                f"weights asked for were not loaded: {arms['weights'].iloc[0]})."
            )
            continue
        gap, test = "overfitting gap (train - test)", "test Dice, paper's definition"
        pre, rnd = arms.loc["as asked"], arms.loc["random (control)"]
        d_gap, d_test = pre[gap] - rnd[gap], pre[test] - rnd[test]
        verdict = (
            "overfits less"
            if d_gap < -0.02
            else "overfits more"
            if d_gap > 0.02
            else "overfits about as much (gaps within 0.02)"
        )
        out.append(
            f"**{model}** with `{pre['weights']}` weights {verdict} than with a random encoder: "
            f"train - test Dice gap {pre[gap]:.3f} vs {rnd[gap]:.3f}; test Dice (paper's "
            f"definition) {pre[test]:.3f} vs {rnd[test]:.3f} ({d_test:+.3f}), "
            f"{int(pre['seeds'])} seed(s) each."
        )
    return out


def findings(
    runs: pd.DataFrame,
    p: dict,
    test_masks: np.ndarray | None = None,
    gap: float = 0.1,
    background: float | None = None,
) -> list[str]:
    """The Discussion's sentences on the batch-norm question, each from the runs' own numbers.

    Per model (paper setting): whether it predicts all background in inference and in training mode,
    its inference/training gap (above ``gap`` a failure, above a fifth of it a small loss, else
    none), recomputed statistics and the other momentum; then, for each
    same-architecture control, whether removing the moving statistics removes the failure. A finding
    is stated only where the numbers support it; "all background" is tested against the test set's
    background fraction (from ``test_masks``, or given as ``background``).
    """
    bg = background if background is not None else background_fraction(test_masks)
    sel = runs[runs["n_train"] == p["n_train"]]
    out = []
    for model, g in main_runs(runs, p).groupby("model", sort=False):
        name = MODEL_LABELS[model]
        infer, train_mode = g["test_dice_inference"].mean(), g["test_dice_training"].mean()
        fixed = g["test_dice_recomputed_bn"].mean()
        states = {m: _mode_state(g, m, bg) for m in ("inference", "training")}
        steps = int(g["steps"].iloc[0])
        if states["training"] == "all-background":
            out.append(
                f"**{name}** predicts all background even with batch statistics (training mode: "
                f"pixel accuracy {g['test_accuracy_training'].mean():.3f}, background fraction "
                f"{bg:.3f}): it did not learn to segment, so this run cannot speak to batch norm."
            )
            continue
        if g["bn_layers"].iloc[0] == 0:
            out.append(
                f"**{name}** has no batch norm: inference and training mode agree "
                f"({infer:.3f} vs {train_mode:.3f})."
            )
            continue
        left = KERAS_BN_MOMENTUM**steps
        if train_mode - infer > gap:
            what = (
                f"predicts all background in inference mode (pixel accuracy "
                f"{g['test_accuracy_inference'].mean():.3f} = background fraction {bg:.3f})"
                if states["inference"] == "all-background"
                else f"scores {infer:.3f} in inference mode"
            )
            text = (
                f"**{name}** {what} but {train_mode:.3f} with the same weights in training mode "
                f"(transductive: each test batch's own statistics), and {fixed:.3f} in inference "
                "mode once its moving statistics are recomputed on the training images; after "
                f"{steps} steps at momentum {KERAS_BN_MOMENTUM}, {100 * left:.0f} % of their "
                "initial values remained in them."
            )
            other = sel[
                (sel["model"] == model)
                & (sel["bn_momentum"] != KERAS_BN_MOMENTUM)
                & (sel.get("norm", "batch") == "batch")
            ]
            for momentum, o in other.groupby("bn_momentum"):
                text += (
                    f" Trained with momentum {momentum} (the same gradient steps: the momentum "
                    "only enters the moving averages), it scores "
                    f"{o['test_dice_inference'].mean():.3f} in inference mode."
                )
            out.append(text)
        elif train_mode - infer > gap / 5:
            out.append(
                f"**{name}** loses a little in inference mode ({infer:.3f}, against "
                f"{train_mode:.3f} in training mode and {fixed:.3f} with its moving statistics "
                f"recomputed): less than the {gap:.2f} this chapter takes for a batch-norm "
                f"failure, from its {int(g['bn_layers'].iloc[0])} batch-norm layers at momentum "
                f"{KERAS_BN_MOMENTUM} after {steps} steps."
            )
        else:
            out.append(
                f"**{name}** shows no inference/training gap here ({infer:.3f} vs "
                f"{train_mode:.3f}): its {int(g['bn_layers'].iloc[0])} batch-norm layers, "
                f"at momentum {KERAS_BN_MOMENTUM} after {steps} steps, "
                "cost it nothing in inference mode."
            )
    out += control_findings(runs, p, gap, bg)
    return out


def _mean_pm(values: pd.Series) -> str:
    """``0.912`` for one value, ``0.912 ± 0.015`` (std over seeds) for several."""
    return f"{values.mean():.3f}" + (f" ± {values.std():.3f}" if len(values) > 1 else "")


def control_findings(
    runs: pd.DataFrame, p: dict, gap: float = 0.1, background: float | None = None
) -> list[str]:
    """The test that can fail: the same architecture without moving statistics (GroupNorm or no
    norm) against batch norm, in inference mode.

    When the batch-norm model fails in inference mode (its training-mode Dice is more than ``gap``
    higher), the explanation *holds* if the control reaches the batch-norm model's training-mode
    Dice (within ``gap``); it holds *in part* if the control beats the batch-norm model's inference
    mode by more than ``gap`` but stays further below its training mode; it *does not hold* if the
    control does no better. A control that predicts all background (pixel accuracy = the test
    set's ``background`` fraction) did not learn at all, and the test is inconclusive.
    """
    if "norm" not in runs:
        return []
    sel = runs[(runs["n_train"] == p["n_train"]) & (runs["bn_momentum"] == KERAS_BN_MOMENTUM)]
    out = []
    for model in [m for m in p["models"] if m in CONTROL_MODELS]:
        bn = sel[(sel["model"] == model) & (sel["norm"] == "batch")]
        if bn.empty:
            continue
        bn_infer, bn_train = bn["test_dice_inference"].mean(), bn["test_dice_training"].mean()
        for norm, c in sel[(sel["model"] == model) & (sel["norm"] != "batch")].groupby(
            "norm", sort=False
        ):
            ctl = c["test_dice_inference"].mean()
            head = (
                f"**Control, {MODEL_LABELS[model]} with {NORM_LABELS[norm]}** (same architecture, "
                f"no moving statistics, {len(c)} seed(s)): test Dice "
                f"{_mean_pm(c['test_dice_inference'])} in inference mode, against "
                f"{_mean_pm(bn['test_dice_inference'])} with batch norm in inference mode and "
                f"{_mean_pm(bn['test_dice_training'])} in training mode."
            )
            if bn_train - bn_infer <= gap:
                out.append(
                    head
                    + " The batch-norm model does not fail here, so there is no failure to explain."
                )
            elif (
                background is not None
                and _mode_state(c, "inference", background) == "all-background"
            ):
                out.append(
                    head + " The control predicts all background: it did not learn, so it can "
                    "neither confirm nor refute the batch-norm explanation here."
                )
            elif ctl - bn_infer > gap and ctl >= bn_train - gap:
                out.append(
                    head + " Without moving statistics the failure is gone: the batch-norm "
                    "explanation holds for this model on this data."
                )
            elif ctl - bn_infer > gap:
                out.append(
                    head
                    + f" Without moving statistics it does better than batch norm in inference "
                    f"mode, but stays {bn_train - ctl:.3f} below batch norm's training mode: the "
                    "moving statistics explain only part of the failure."
                )
            else:
                out.append(
                    head + " The control fails too: the failure is not in the moving statistics, "
                    "and the batch-norm explanation does not hold here."
                )
    return out


REFERENCE_RUNS = PROJECT_ROOT / "book" / "reference_runs" / "cxr_overfitting_shenzhen.json"


def reference_table(path: Path = REFERENCE_RUNS) -> tuple[str, pd.DataFrame]:
    """The recorded reference runs on real Shenzhen images: ``(description, one row per run)``."""
    doc = base.read_reference(path)
    rows = [
        {
            "model": MODEL_LABELS[r["params"]["model"]],
            "norm": NORM_LABELS[r["params"].get("norm", "batch")],
            "BN momentum": r["params"]["bn_momentum"],
            "seed": r["params"]["seed"],
            "epochs": r["params"]["epochs"],
            "image size": r["params"]["image_size"],
            "train images": r["n_train"],
            "validation Dice (fit, inference mode)": r["metrics"]["last_val_dice"],
            "test Dice, paper's definition": r["metrics"]["test_dice_keras"],
            "test Dice, inference mode": r["metrics"]["test_dice_inference"],
            "test Dice, training mode": r["metrics"]["test_dice_training"],
            "test Dice, BN recomputed": r["metrics"]["test_dice_recomputed_bn"],
            "weights": r["weights"]["used"],
            "device": r.get("device", ""),
        }
        for r in doc["runs"]
    ]
    return doc["what"], pd.DataFrame(rows).round(3)


def reference_runs(path: Path = REFERENCE_RUNS) -> pd.DataFrame:
    """The reference runs as rows like :func:`run_study`'s (for :func:`findings` on real data)."""
    doc = base.read_reference(path)
    return pd.DataFrame(
        [
            {
                **{k: r["params"][k] for k in ("model", "seed", "n_train", "bn_momentum")},
                "norm": r["params"].get("norm", "batch"),
                # the arm the run was made for: recorded by the script, else what it asked for
                "encoder_arm": r.get("encoder_arm")
                or (
                    "random"
                    if r["params"].get("encoder_weights") in (None, *RANDOM_NAMES)
                    else "asked"
                ),
                **r["metrics"],
            }
            for r in doc["runs"]
        ]
    )


def export_reference(
    folders: list, what: str, command: str, device: str, path: Path = REFERENCE_RUNS
) -> Path:
    """Write the reference-run JSON the chapter shows (:func:`lus_common.studies.base.
    export_reference`)."""
    return base.export_reference(folders, what, command, device, path)


def _mean_std_table(
    runs: pd.DataFrame, columns: dict[str, str], paper: pd.DataFrame
) -> pd.DataFrame:
    ms = mean_std(runs, "model", list(columns))
    table = pd.DataFrame(index=[MODEL_LABELS[m] for m in ms.index])
    # the weights the runs really carried (the source is in the runs)
    first = runs.groupby("model", sort=False)["weights_used"].first()
    table["weights"] = [weights_name(first[m]) for m in ms.index]
    for col, name in columns.items():
        table[name] = [
            format_mean_std(m, s, 1, 3) for m, s in zip(ms[f"{col}_mean"], ms[f"{col}_std"])
        ]
        if name in paper:
            table[f"paper {name}"] = paper.reindex(ms.index)[name].to_numpy()
    return table


def table1(runs: pd.DataFrame) -> pd.DataFrame:
    """Paper Table 1 (last epoch as Keras reports it: train in training mode,
    validation in inference mode)."""
    return _mean_std_table(
        runs,
        {
            "last_train_accuracy": "train accuracy",
            "last_train_dice": "train Dice",
            "last_val_accuracy": "validation accuracy",
            "last_val_dice": "validation Dice",
        },
        PAPER_TABLE1,
    )


def table2(runs: pd.DataFrame) -> pd.DataFrame:
    """Paper Table 2 (test set, inference mode), mean +- std over seeds beside the paper.

    "test accuracy" and "test Dice" use the paper's definitions (``model.evaluate``: soft Dice per
    batch of 32, averaged over batches); the last column is ours, the thresholded (0.5) Dice per
    image.
    """
    table = _mean_std_table(
        runs,
        {
            "test_accuracy_keras": "test accuracy",
            "test_dice_keras": "test Dice",
            "test_dice_inference": "ours: thresholded Dice per image",
        },
        PAPER_TABLE2,
    )
    return table


def bn_table(runs: pd.DataFrame, p: dict) -> pd.DataFrame:
    """Mean Dice per model, normalisation and momentum: inference vs training mode (transductive),
    recomputed statistics, with the number of BN updates (steps)."""
    rows = []
    sel = asked(runs)
    sel = sel[sel["n_train"] == p["n_train"]]
    for (model, norm, momentum), g in sel.groupby(["model", "norm", "bn_momentum"], sort=False):
        rows.append(
            {
                "model": MODEL_LABELS[model],
                "norm": NORM_LABELS[norm],
                "BN momentum": momentum if g["bn_layers"].iloc[0] else "–",
                "BN layers": int(g["bn_layers"].iloc[0]),
                "steps": int(g["steps"].iloc[0]),
                "train Dice, inference mode": g["train_dice_inference"].mean(),
                "train Dice, training mode": g["train_dice_training"].mean(),
                "train Dice, BN recomputed": g["train_dice_recomputed_bn"].mean(),
                "test Dice, inference mode": g["test_dice_inference"].mean(),
                "test Dice, training mode (transductive)": g["test_dice_training"].mean(),
                "test Dice, BN recomputed": g["test_dice_recomputed_bn"].mean(),
                "seeds": len(g),
            }
        )
    return pd.DataFrame(rows).round(3)


def size_curve(runs: pd.DataFrame) -> pd.DataFrame:
    """Test Dice (inference mode and with recomputed BN) by model and training-set size, at Keras'
    momentum, with the epochs and steps each size trained for."""
    r = asked(runs)
    r = r[(r["bn_momentum"] == KERAS_BN_MOMENTUM) & (r["norm"] == "batch")]
    out = (
        r.groupby(["model", "n_train"], sort=False)
        .agg(
            epochs=("epochs", "first"),
            steps=("steps", "first"),
            dice=("test_dice_inference", "mean"),
            dice_std=("test_dice_inference", "std"),
            dice_recomputed_bn=("test_dice_recomputed_bn", "mean"),
            seeds=("seed", "nunique"),
        )
        .reset_index()
    )
    out["model"] = out["model"].map(MODEL_LABELS)
    return out.sort_values(["model", "n_train"]).reset_index(drop=True)


def size_findings(curve: pd.DataFrame) -> list[str]:
    """One sentence per model of :func:`size_curve` with more than one size: its test Dice
    (inference mode) at the fewest and the most training images, with the seeds behind each."""
    out = []
    for model, g in curve.groupby("model", sort=False):
        if len(g) < 2:
            continue
        lo, hi = g.iloc[0], g.iloc[-1]
        best = g.loc[g["dice"].idxmax()]
        seeds = sorted({int(lo["seeds"]), int(hi["seeds"])})
        out.append(
            f"**{model}**: test Dice {lo['dice']:.3f} with {int(lo['n_train'])} training images "
            f"and {hi['dice']:.3f} with {int(hi['n_train'])} ({int(lo['steps'])} and "
            f"{int(hi['steps'])} steps; "
            f"{' or '.join(map(str, seeds))} seed(s) each); highest {best['dice']:.3f} at "
            f"{int(best['n_train'])} images. After recomputing the BN statistics: "
            f"{lo['dice_recomputed_bn']:.3f} and {hi['dice_recomputed_bn']:.3f}."
        )
    return out


__all__ = [
    "PROFILES",
    "study_params",
    "load_splits",
    "run_one",
    "run_study",
    "jobs",
    "table1",
    "table2",
    "bn_table",
    "size_curve",
    "size_findings",
    "reference_jobs",
    "main_runs",
    "findings",
    "control_findings",
    "dice_coefficient",
    "dice_loss",
    "batch_norm_layers",
]

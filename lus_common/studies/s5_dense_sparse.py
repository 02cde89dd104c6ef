"""Study 5: dense vs sparse labels, and reverse transfer from segmentation to diagnosis (Gare et
al.).

The notebook ``notebooks/05_dense_sparse.ipynb`` reads as the methods section; the work is here.

**Part 1.** A U-Net learns the lung phantom's 7-class *dense* labels or the 4-class *sparse* labels
derived from them (:func:`lus_common.phantoms.lung.dense_to_sparse`), on the paper's design: four
patients (three COVID-19, one healthy), 38 images each, augmented six-fold by a left-right flip and
grey-level scales before the folds are cut; cross-entropy, Adam, 3-fold cross-validation. Folds are
cut by patient (the default) and, as the paper did, at random over the augmented copies. Each run
keeps its last epoch and the epoch with the best test accuracy (the paper's choice); the tables say
which they show.

**Part 2.** The segmentation U-Net becomes a classifier
(:class:`lus_common.models.torch_seg_classifier.SegmentationClassifier`): softmax maps, channel-wise
global average pooling, one linear layer to healthy / COVID-19 / pneumonia. It starts from the
dense-trained or the sparse-trained weights (a U-Net trained on all of Part 1's images), or from
scratch, and learns on phantom videos (``data_source="synthetic"``) or real POCUS clips
(``"pocus"``: a sim-to-real transfer the paper could not test), in folds that keep a patient's
frames together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lus_common.config.device import describe_device, resolve_device
from lus_common.config.paths import PROJECT_ROOT
from lus_common.config.profiles import resolve_params
from lus_common.data.pocus import FrameSet, load_pocus
from lus_common.data.sets import fingerprint, group_folds
from lus_common.evaluation.metrics import class_scores, false_positives
from lus_common.evaluation.stats import (
    format_mean_std,
    format_p,
    friedman_wilcoxon,
    paired_difference,
)
from lus_common.models.torch_seg_classifier import SegmentationClassifier
from lus_common.models.torch_unet import UNet
from lus_common.models.weights import WeightsInfo
from lus_common.phantoms.lung import (
    DENSE_CLASSES,
    DIAGNOSES,
    SPARSE_CLASSES,
    dense_to_sparse,
    lung_patients_phantom,
)
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
from lus_common.training.torch_loop import (
    TrainConfig,
    predict,
    train_model,
)

STUDY = "dense_sparse"

# Bumped whenever the models, the data design or the training code change what a run computes.
CODE_VERSION = "gare-1"

LABELS = ("dense", "sparse")
SPLITS = ("patient", "random")
SELECTIONS = ("last", "best_test")
PRETRAINS = ("dense", "sparse", "none")
PLATEAU_ON = ("train_loss", "test")
DATA_SOURCES = ("synthetic", "pocus")
CLASSES = {"dense": DENSE_CLASSES, "sparse": SPARSE_CLASSES}
# Table 2's column order (the paper's): Normal, Pneumonia, COVID-19.
TABLE2_ORDER = ("healthy", "pneumonia", "COVID-19")

# The profiles read as a table (ruff format leaves them as written).
# fmt: off
PROFILES = derive_profiles(
    # The paper: 4 patients (3 COVID-19, 1 healthy) x 38 images (19 per lung side), x6 by a
    # left-right flip and grey scales 0.8 / 1.1; U-Net; CE; Adam 1e-3; batch 4; 50 segmentation and
    # 12 classification epochs; ReduceLROnPlateau (factor 0.5); 3 folds; 188 / 477 / 49 videos
    # (healthy / COVID-19 / pneumonia). Images 624x464 there, square 464 here (the phantom is
    # square). Not the paper's (said in the chapter): the plateau watches the training loss and
    # the tables show the last epoch (the paper watched and selected on the test fold:
    # plateau_on="test", select="best_test"); 8 frames per phantom video (the paper's ~56).
    dict(data_source="synthetic", image_size=464, unet_features=[64, 128, 256, 512],
         seg_patients=["COVID-19", "COVID-19", "COVID-19", "healthy"], seg_images_per_patient=38,
         seg_videos_per_patient=2, flip_copies=True, grey_scales=[1.0, 0.8, 1.1],
         splits=["patient", "random"], folds=3, split_seed=0, seeds=[0], seg_epochs=50,
         lr=1e-3, batch_size=4, plateau_on="train_loss", plateau_factor=0.5, plateau_patience=10,
         select="last", cls_videos=[188, 477, 49], cls_frames_per_video=8, cls_epochs=12,
         pretrains=["dense", "sparse", "none"], pocus_fps=3.0, pocus_max_frames=None, amp=True,
         executor="local"),
    # About three minutes on a 2-core CPU (the book's default): 64 px, a U-Net of 8-16-32-64
    # features, 6 images per patient, batch 8, 8 + 6 epochs, 15 phantom videos of 6 frames.
    quick=dict(image_size=64, unet_features=[8, 16, 32, 64], seg_images_per_patient=6,
               seg_epochs=8, batch_size=8, cls_videos=[4, 8, 3], cls_frames_per_video=6,
               cls_epochs=6, pocus_max_frames=4),
    # Seconds, for tests: every arm, one epoch, tiny images.
    smoke=dict(image_size=32, unet_features=[4, 8, 16, 32], seg_images_per_patient=4,
               seg_videos_per_patient=1, grey_scales=[1.0, 0.8], seg_epochs=1, cls_videos=[3, 3, 3],
               cls_frames_per_video=2, cls_epochs=1, pocus_max_frames=1),
)
# fmt: on

# Table 1 of the paper (mean ± std over its three random folds of the augmented images).
PAPER_TABLE1 = pd.DataFrame(
    {
        "pixel_accuracy": [(0.945, 0.013), (0.957, 0.002)],
        "miou": [(0.654, 0.055), (0.711, 0.001)],
        "background": [(0.942, 0.013), (0.954, 0.002)],
        "A-line": [(0.431, 0.072), (0.523, 0.008)],
        "B-line": [(0.508, 0.105), (0.613, 0.009)],
        "pleural line": [(0.733, 0.032), (0.756, 0.001)],
    },
    index=["sparse", "dense"],
)
PAPER_TABLE1_DENSE = {
    "pixel_accuracy": (0.931, 0.006),
    "miou": (0.762, 0.002),
    "healthy pleural line": (0.815, 0.003),
    "unhealthy pleural line": (0.720, 0.005),
    "healthy region": (0.871, 0.020),
    "unhealthy region": (0.830, 0.012),
}
# Table 2 (averages over its three video-grouped folds): accuracy, then per class P / R / F1.
PAPER_TABLE2 = pd.DataFrame(
    {
        "accuracy": [0.849, 0.843, 0.824],
        "healthy precision": [0.812, 0.824, 0.812],
        "healthy recall": [0.836, 0.784, 0.778],
        "healthy f1": [0.824, 0.803, 0.795],
        "pneumonia precision": [0.769, 0.761, 0.649],
        "pneumonia recall": [0.632, 0.646, 0.710],
        "pneumonia f1": [0.694, 0.699, 0.678],
        "COVID-19 precision": [0.885, 0.869, 0.878],
        "COVID-19 recall": [0.908, 0.925, 0.879],
        "COVID-19 f1": [0.897, 0.896, 0.878],
    },
    index=["dense", "sparse", "none"],
)


def slug(name: str) -> str:
    """A class name as a column name: ``"A-line"`` -> ``"a_line"``."""
    return name.lower().replace(" ", "_").replace("-", "_")


def study_params(profile: str = "quick", **given) -> dict:
    """Resolve the notebook's parameters against this study's profiles and check them.

    Raises:
        ValueError: a bad value (image size not a multiple of 16, unknown split, too few
            patients or videos for the folds, ...).
    """
    p = resolve_params(PROFILES, profile, **given)
    check_choice(p, "data_source", DATA_SOURCES)
    check_choice(p, "select", SELECTIONS)
    check_choice(p, "plateau_on", PLATEAU_ON)
    if p["image_size"] % 2 ** len(p["unet_features"]):
        raise ValueError(
            f"image_size must be a multiple of {2 ** len(p['unet_features'])} (one 2x "
            f"down-sampling per U-Net level), got {p['image_size']}."
        )
    for name, allowed in (("splits", SPLITS), ("pretrains", PRETRAINS)):
        p[name] = [str(v) for v in np.atleast_1d(p[name])]
        for value in p[name]:
            check_choice({name: value}, name, allowed)
    for d in p["seg_patients"]:
        check_choice({"seg_patients": d}, "seg_patients", DIAGNOSES)
    if "patient" in p["splits"] and len(p["seg_patients"]) < p["folds"]:
        raise ValueError(
            f"{p['folds']} folds by patient need at least {p['folds']} patients in seg_patients."
        )
    if len(p["cls_videos"]) != len(DIAGNOSES):
        raise ValueError(f"cls_videos gives one video count per class of {DIAGNOSES}.")
    if p["data_source"] == "synthetic" and min(p["cls_videos"]) < p["folds"]:
        raise ValueError(
            f"Every class needs at least {p['folds']} phantom videos (one patient each) to be in "
            f"every fold; cls_videos is {p['cls_videos']}."
        )
    p["seeds"] = [int(s) for s in np.atleast_1d(p["seeds"])]
    return p


# ----------------------------------------------------------------------------------------------
# Part 1 data: the "Semantic Lung" set, on phantoms


@dataclass
class SemanticLung:
    """Part 1's images with their dense and sparse labels, after the six-fold augmentation.

    Attributes:
        images: float32 (N, H, W) in [0, 1].
        dense: uint8 (N, H, W), indices of :data:`DENSE_CLASSES`.
        sparse: uint8 (N, H, W), indices of :data:`SPARSE_CLASSES` (``dense_to_sparse(dense)``).
        ids: image id (``<frame id>_<copy>``).
        patients: patient id per image.
        diagnoses: the patient's diagnosis per image.
        source: index of the image before augmentation, per image.
        copy: which copy (``"x1.0"``, ``"flip_x0.8"``, ...).
        synthetic: True (phantoms: the paper's set is not public).
        info: generator, augmentation, fingerprint.
    """

    images: np.ndarray
    dense: np.ndarray
    sparse: np.ndarray
    ids: list[str]
    patients: list[str]
    diagnoses: list[str]
    source: np.ndarray
    copy: list[str]
    synthetic: bool = True
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    def labels(self, kind: str) -> np.ndarray:
        """The ``"dense"`` or ``"sparse"`` label maps."""
        return self.dense if kind == "dense" else self.sparse

    @property
    def label(self) -> str:
        return "SYNTHETIC phantom" if self.synthetic else "real"


def augment_copies(flip: bool, scales) -> list[tuple[str, bool, float]]:
    """The paper's offline augmentation as ``(tag, flipped, scale)`` per copy: every grey scale,
    with and without a left-right flip (six copies for flip and three scales)."""
    return [
        (f"{'flip_' if f else ''}x{s:g}", f, float(s))
        for f in ((False, True) if flip else (False,))
        for s in scales
    ]


def load_segmentation(p: dict) -> SemanticLung:
    """Part 1's set: one linear-probe phantom patient per entry of ``seg_patients``, split into
    ``seg_videos_per_patient`` videos (the paper's left and right lung), then every copy of
    :func:`augment_copies` (grey levels scaled and clipped to [0, 1])."""
    base_set = lung_patients_phantom(
        p["seg_patients"],
        p["seg_images_per_patient"],
        p["seg_videos_per_patient"],
        p["image_size"],
        probe="linear",
        seed=5000 + p["split_seed"],
        id_prefix="seg",
    )
    copies = augment_copies(p["flip_copies"], p["grey_scales"])
    images, dense = [], []
    for _, flipped, scale in copies:
        im, de = base_set.images, base_set.layers["dense"]
        if flipped:
            im, de = im[..., ::-1], de[..., ::-1]
        images.append(np.clip(im * np.float32(scale), 0, 1))
        dense.append(de)
    n = len(base_set)
    dense = np.ascontiguousarray(np.concatenate(dense))
    data = SemanticLung(
        images=np.ascontiguousarray(np.concatenate(images), dtype=np.float32),
        dense=dense,
        sparse=dense_to_sparse(dense),
        ids=[f"{i}_{tag}" for tag, _, _ in copies for i in base_set.ids],
        patients=list(base_set.groups) * len(copies),
        diagnoses=list(base_set.meta["diagnosis"]) * len(copies),
        source=np.tile(np.arange(n), len(copies)),
        copy=[tag for tag, _, _ in copies for _ in range(n)],
        info={**base_set.info, "copies": [tag for tag, _, _ in copies], "n_original": n},
    )
    data.info["fingerprint"] = fingerprint((data.images, data.dense), (data.ids, data.patients))
    return data


def segmentation_folds(data: SemanticLung, split: str, k: int, seed: int) -> np.ndarray:
    """The fold of every image: ``"patient"`` keeps a patient (and so every copy of an image) in
    one fold; ``"random"`` deals the augmented images at random, as the paper did, so copies of
    one image and neighbouring frames sit on both sides."""
    check_choice({"split": split}, "split", SPLITS)
    if split == "patient":
        return group_folds(data.patients, k, seed)
    from sklearn.model_selection import KFold

    folds = np.empty(len(data), int)
    for f, (_, test) in enumerate(KFold(k, shuffle=True, random_state=seed).split(data.images)):
        folds[test] = f
    return folds


# ----------------------------------------------------------------------------------------------
# Part 2 data: diagnostic frames, phantom videos or real POCUS clips


def load_classification(p: dict) -> FrameSet:
    """Part 2's frames: real POCUS clips (``data_source="pocus"``, sampled at ``pocus_fps``), or
    phantom videos with ``cls_videos`` videos per class of :data:`DIAGNOSES`, one patient each
    (both probes, as the paper's linear and curvilinear mix)."""
    if p["data_source"] == "pocus":
        data = load_pocus(
            image_size=p["image_size"],
            fps=p["pocus_fps"],
            max_frames_per_video=p["pocus_max_frames"],
        )
    else:
        diagnoses = [d for d, n in zip(DIAGNOSES, p["cls_videos"]) for _ in range(int(n))]
        phantom = lung_patients_phantom(
            diagnoses,
            p["cls_frames_per_video"],
            1,
            p["image_size"],
            probe="mixed",
            seed=6000 + p["split_seed"],
            id_prefix="cls",
        )
        meta = phantom.meta
        data = FrameSet(
            frames=phantom.images,
            labels=[DIAGNOSES.index(d) for d in meta["diagnosis"]],
            videos=list(meta["video"]),
            patients=list(meta["patient"]),
            files=list(meta["video"]),
            frame_index=meta["frame"].to_numpy(),
            source="synthetic",
            synthetic=True,
            info={**phantom.info, "probe": list(meta["probe"])},
        )
    data.info["fingerprint"] = data.fingerprint()
    return data


def classification_folds(data: FrameSet, k: int, seed: int) -> np.ndarray:
    """The fold of every frame: a patient's clips (so every frame of a clip) in one fold, the
    classes spread over the folds (scikit-learn's ``StratifiedGroupKFold``)."""
    return group_folds(data.patients, k, seed, stratify=data.labels)


# ----------------------------------------------------------------------------------------------
# Models


def build_unet(p: dict, seg_classes: int, seed: int) -> UNet:
    """The paper's traditional U-Net with ``unet_features``, seeded, ``seg_classes`` outputs."""
    torch.manual_seed(seed)
    return UNet(3, seg_classes, tuple(p["unet_features"]))


def build_classifier(p: dict, pretrain: str, seed: int, seg_run: dict | None):
    """The reverse-transfer classifier: a U-Net (with the weights of ``seg_run`` for a dense or
    sparse pretraining, from scratch with 7 outputs for ``"none"``) under
    :class:`SegmentationClassifier`.

    Returns:
        ``(model, WeightsInfo)``.
    """
    seg_classes = len(CLASSES[pretrain] if pretrain != "none" else DENSE_CLASSES)
    unet = build_unet(p, seg_classes, seed)
    if pretrain == "none":
        info = WeightsInfo(None, "none (from scratch)")
    else:
        unet.load_state_dict(results.load_state(seg_run["folder"]))
        info = WeightsInfo(
            f"{pretrain} segmentation", f"{pretrain} segmentation (run {_folder_name(seg_run)})"
        )
    torch.manual_seed(seed)
    return SegmentationClassifier(unet, seg_classes, len(DIAGNOSES)), info


def _folder_name(run: dict) -> str:
    return Path(run["folder"]).name


# ----------------------------------------------------------------------------------------------
# One run

# The parameters of Part 1's runs, and of Part 2's (besides labels/pretrain, split, fold, seed).
SEG_KEYS = ("image_size", "unet_features", "seg_patients", "seg_images_per_patient",
            "seg_videos_per_patient", "flip_copies", "grey_scales", "folds", "split_seed",
            "seg_epochs", "lr", "batch_size", "plateau_on", "plateau_factor", "plateau_patience",
            "amp")  # fmt: skip
CLS_KEYS = ("data_source", "image_size", "unet_features", "cls_videos", "cls_frames_per_video",
            "folds", "split_seed", "cls_epochs", "lr", "batch_size", "plateau_on", "plateau_factor",
            "plateau_patience", "pocus_fps", "pocus_max_frames", "amp")  # fmt: skip
SEG_NAME_KEYS = ("labels", "split", "fold", "seed", "image_size", "seg_epochs")
CLS_NAME_KEYS = ("pretrain", "fold", "seed", "data_source", "image_size", "cls_epochs")
INPUT_NORM = "unit"  # grey in [0, 1], three channels: no ImageNet encoder here


def _config(p: dict, epochs: int, task: str, seed: int, watch: str) -> TrainConfig:
    on_test = p["plateau_on"] == "test" and watch is not None
    return TrainConfig(
        epochs=epochs,
        batch_size=p["batch_size"],
        lr=p["lr"],
        amp=p["amp"],
        seed=seed,
        input_norm=INPUT_NORM,
        task=task,
        scheduler="plateau",
        plateau_on=watch if on_test else "train_loss",
        plateau_factor=p["plateau_factor"],
        plateau_patience=p["plateau_patience"],
    )


class _Epochs:
    """The test-fold outputs of the last epoch and of the epoch with the highest test score (the
    paper's choice), kept as the per-epoch evaluation computes them: no model state is copied and
    nothing is predicted again."""

    def __init__(self):
        self.value, self.epoch, self.best, self.last = -np.inf, None, None, None

    def offer(self, outputs: np.ndarray, value: float, epoch: int) -> None:
        self.last = outputs
        if value > self.value:
            self.value, self.epoch, self.best = value, epoch, outputs


def _common_config(p: dict, rp: dict, weights: WeightsInfo, cfg: TrainConfig, device, **more):
    return {
        "study": STUDY,
        "params": rp,
        "profile": p["profile"],
        "weights": weights.as_dict(),
        "train_config": cfg.as_dict(),
        "device": describe_device(device),
        "environment": environment_info(),
        **more,
    }


def run_segmentation(
    p: dict,
    data: SemanticLung,
    labels: str,
    split: str,
    fold: int | None,
    seed: int,
    device: torch.device,
) -> dict:
    """Train one Part 1 U-Net on ``labels`` and test it on ``fold`` of ``split`` (or, with
    ``fold=None``, train on every image and keep the weights for Part 2), or reuse the stored run.

    Metrics, for the last epoch (``last_*``) and the epoch of best test pixel accuracy
    (``best_test_*``): pixel accuracy, per-class IoU pooled over the fold and their mean, on the
    sparse classes (dense predictions merged by the paper's rule) and, for dense labels, on the
    dense classes (``*_dense_*``); false-positive pixels and connected components per image and
    sparse class.
    """
    key = {
        **{k: p[k] for k in SEG_KEYS},
        "labels": labels,
        "split": split if fold is not None else "all",
        "fold": "all" if fold is None else int(fold),
        "seed": int(seed),
        "weights": "none/random",
        "code_version": CODE_VERSION,
        "data_fingerprint": data.info["fingerprint"],
    }
    n_classes = len(CLASSES[labels])

    def fit(model, weights, rp):
        target = data.labels(labels)
        if fold is None:
            train_idx, test_idx = np.arange(len(data)), np.array([], int)
        else:
            folds = segmentation_folds(data, split, p["folds"], p["split_seed"])
            train_idx, test_idx = np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)
        cfg = _config(
            p, p["seg_epochs"], "multiclass", seed, "test_miou" if len(test_idx) else None
        )
        epochs = _Epochs()
        test_images = data.images[test_idx]

        def evaluate(m, epoch):
            pred = predict(m, test_images, 16, device, p["amp"], INPUT_NORM, "classes")
            row = _seg_epoch_scores(pred, data, test_idx, labels)
            epochs.offer(pred, row["test_pixel_accuracy"], epoch)
            return row

        history = train_model(
            model,
            data.images[train_idx],
            target[train_idx],
            cfg,
            device,
            evaluate=evaluate if len(test_idx) else None,
        )
        metrics = {"train_seconds": float(history["seconds"].sum()), "n_classes": n_classes}
        tables, arrays = {}, {}
        if len(test_idx):
            last, best_pred = epochs.last, epochs.best
            per_image = []
            for sel, pred in (("last", last), ("best_test", best_pred)):
                m, rows = _seg_final_scores(pred, data, test_idx, labels)
                metrics.update({f"{sel}_{k}": v for k, v in m.items()})
                per_image.append(rows.assign(selection=sel))
            metrics["best_test_epoch"] = epochs.epoch
            tables["per_image"] = pd.concat(per_image, ignore_index=True)
            show = _overlay_images(data, test_idx)
            arrays = {
                "overlay_index": test_idx[show],
                "overlay_last": last[show],
                "overlay_best_test": best_pred[show],
            }
        config = _common_config(
            p, rp, weights, cfg, device, synthetic=data.synthetic, n_train=len(train_idx),
            n_test=len(test_idx), classes=list(CLASSES[labels]),
        )  # fmt: skip
        record = run_record(config, metrics, history, tables.get("per_image"), arrays or None)
        # the pretraining run keeps its weights for Part 2 (its last epoch: it has no test fold)
        return {**record, "state": model.state_dict() if fold is None else None}

    return cached_run(
        STUDY,
        key,
        SEG_NAME_KEYS,
        lambda: (build_unet(p, n_classes, seed), WeightsInfo(None, "none (from scratch)")),
        fit,
    )


def _sparse_view(pred: np.ndarray, labels: str) -> np.ndarray:
    return dense_to_sparse(pred) if labels == "dense" else pred


def _seg_epoch_scores(pred, data: SemanticLung, test_idx, labels: str) -> dict:
    """The scores followed every epoch: sparse-view pixel accuracy and mIoU on the test fold."""
    s = class_scores(_sparse_view(pred, labels), data.sparse[test_idx], list(SPARSE_CLASSES))
    return {"test_pixel_accuracy": s["pixel_accuracy"], "test_miou": s["miou"]}


def _seg_final_scores(pred, data: SemanticLung, test_idx, labels: str):
    """A run's Table 1 metrics (sparse view, and dense for dense labels) and per-image false
    positives."""
    sparse_pred = _sparse_view(pred, labels)
    s = class_scores(sparse_pred, data.sparse[test_idx], list(SPARSE_CLASSES))
    out = {"pixel_accuracy": s["pixel_accuracy"], "miou": s["miou"]}
    out.update({f"iou_{slug(c)}": v for c, v in s["iou"].items()})
    if labels == "dense":
        d = class_scores(pred, data.dense[test_idx], list(DENSE_CLASSES))
        out.update({"dense_pixel_accuracy": d["pixel_accuracy"], "dense_miou": d["miou"]})
        out.update({f"dense_iou_{slug(c)}": v for c, v in d["iou"].items()})
    fp = false_positives(sparse_pred, data.sparse[test_idx], list(SPARSE_CLASSES))
    fp = fp[fp["class"] != "background"]
    wide = fp.pivot_table(index="image", columns="class", values=["fp_pixels", "fp_components"])
    wide.columns = [f"{m}_{slug(c)}" for m, c in wide.columns]
    wide = wide.reset_index(drop=True)
    wide["fp_components_total"] = wide.filter(like="fp_components_").sum(axis=1)
    wide["fp_pixels_total"] = wide.filter(like="fp_pixels_").sum(axis=1)
    acc = (sparse_pred == data.sparse[test_idx]).mean(axis=(1, 2))
    rows = pd.DataFrame(
        {
            "id": [data.ids[i] for i in test_idx],
            "patient": [data.patients[i] for i in test_idx],
            "copy": [data.copy[i] for i in test_idx],
            "pixel_accuracy": acc,
        }
    ).join(wide)
    out.update({k: float(rows[k].mean()) for k in wide.columns})
    return out, rows


def _overlay_images(data: SemanticLung, test_idx) -> np.ndarray:
    """Positions in ``test_idx`` of Figure 2's images: each test patient's first unaugmented
    image."""
    first = {}
    for pos, i in enumerate(test_idx):
        if data.copy[i] == data.info["copies"][0]:
            first.setdefault(data.patients[i], pos)
    return np.array(sorted(first.values()), int)


def run_classification(
    p: dict,
    data: FrameSet,
    pretrain: str,
    fold: int,
    seed: int,
    device: torch.device,
    seg_run: dict | None,
) -> dict:
    """Train one Part 2 classifier on every fold but ``fold`` and test it there, or reuse the stored
    run. ``seg_run`` is the pretraining run whose weights it starts from (None for ``"none"``).

    Metrics, for the last epoch (``last_*``) and the epoch of best test accuracy (``best_test_*``):
    frame accuracy, per-class precision, recall and F1 (scikit-learn), the confusion matrix, and the
    per-video accuracy (a clip's mean class probabilities, then the arg-max).
    """
    weights_key = "none/random" if pretrain == "none" else f"seg-{pretrain}:{_folder_name(seg_run)}"
    key = {
        **{k: p[k] for k in CLS_KEYS},
        "pretrain": pretrain,
        "fold": int(fold),
        "seed": int(seed),
        "weights": weights_key,
        "code_version": CODE_VERSION,
        "data_fingerprint": data.info["fingerprint"],
    }

    def fit(model, weights, rp):
        folds = classification_folds(data, p["folds"], p["split_seed"])
        train_idx, test_idx = np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)
        cfg = _config(p, p["cls_epochs"], "classify", seed, "test_accuracy")
        epochs = _Epochs()
        test_frames, test_labels = data.frames[test_idx], data.labels[test_idx]

        def evaluate(m, epoch):
            prob = predict(m, test_frames, 16, device, p["amp"], INPUT_NORM, "proba")
            acc = float((prob.argmax(1) == test_labels).mean())
            epochs.offer(prob, acc, epoch)
            return {"test_accuracy": acc}

        history = train_model(
            model, data.frames[train_idx], data.labels[train_idx], cfg, device, evaluate=evaluate
        )
        last, best_prob = epochs.last, epochs.best
        fc = {"fc_weight": model.fc.weight.detach().cpu().numpy().tolist(),
              "fc_bias": model.fc.bias.detach().cpu().numpy().tolist()}  # fmt: skip
        videos = [data.videos[i] for i in test_idx]
        metrics = {
            "train_seconds": float(history["seconds"].sum()),
            "best_test_epoch": epochs.epoch,
        }
        per_image = pd.DataFrame(
            {
                "video": videos,
                "patient": [data.patients[i] for i in test_idx],
                "frame": data.frame_index[test_idx],
                "label": test_labels,
            }
        )
        for sel, prob in (("last", last), ("best_test", best_prob)):
            metrics.update(
                {f"{sel}_{k}": v for k, v in diagnosis_scores(prob, test_labels, videos).items()}
            )
            per_image[f"{sel}_pred"] = prob.argmax(1)
            for c, name in enumerate(DIAGNOSES):
                per_image[f"{sel}_p_{slug(name)}"] = prob[:, c]
        metrics.update(fc)
        config = _common_config(
            p, rp, weights, cfg, device, synthetic=data.synthetic, n_train=len(train_idx),
            n_test=len(test_idx), seg_classes=model.seg_classes,
        )  # fmt: skip
        return run_record(config, metrics, history, per_image)

    return cached_run(
        STUDY, key, CLS_NAME_KEYS, lambda: build_classifier(p, pretrain, seed, seg_run), fit
    )


def diagnosis_scores(prob: np.ndarray, labels: np.ndarray, videos: list[str]) -> dict:
    """Frame accuracy, per-class precision / recall / F1 (scikit-learn, zero where a class is never
    predicted), macro F1, the confusion matrix (rows true, columns predicted, order of
    :data:`DIAGNOSES`) and the per-video accuracy (mean probabilities over a clip's frames)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    pred = prob.argmax(1)
    classes = list(range(len(DIAGNOSES)))
    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, pred, labels=classes, zero_division=0
    )
    out = {"accuracy": float((pred == labels).mean()), "macro_f1": float(f1.mean())}
    for c, name in enumerate(DIAGNOSES):
        out[f"{slug(name)}_precision"] = float(precision[c])
        out[f"{slug(name)}_recall"] = float(recall[c])
        out[f"{slug(name)}_f1"] = float(f1[c])
    out["confusion"] = confusion_matrix(labels, pred, labels=classes).tolist()
    frame = pd.DataFrame(prob, columns=classes).assign(video=videos, label=labels)
    per_video = frame.groupby("video").agg({**{c: "mean" for c in classes}, "label": "first"})
    out["video_accuracy"] = float(
        (per_video[classes].to_numpy().argmax(1) == per_video["label"].to_numpy()).mean()
    )
    out["n_videos"] = len(per_video)
    return out


# ----------------------------------------------------------------------------------------------
# The study


def _seg_job(p, seg, device, labels, split, fold, seed) -> dict:
    """One segmentation run for the sweep executor."""
    return run_segmentation(p, seg, labels, split, fold, seed, device)


def _cls_job(p, cls, device, pretrain, fold, seed, pretrained) -> dict:
    """One classification run (on a pretraining run's weights) for the sweep executor."""
    return run_classification(p, cls, pretrain, fold, seed, device, pretrained)


def run_study(p: dict, seg: SemanticLung, cls: FrameSet, progress: bool = True) -> dict:
    """Every run of the parameters, trained or reused: Part 1 (labels x splits x folds x seeds),
    the pretraining on every Part 1 image (dense and sparse, per seed), then Part 2 (pretrains x
    folds x seeds).

    Returns:
        ``{"seg_runs", "cls_runs": one row per run, "seg_histories", "cls_histories",
        "seg_per_image", "cls_per_image", "overlays": {(split, labels, seed): [(index, last,
        best_test), ...]}, "weights", "reused", "device"}``.
    """
    device = resolve_device(p.get("device", "auto"))
    seg_runs, cls_runs, overlays = Collector(), Collector(), {}
    jobs = [
        (labels, split, fold, seed)
        for seed in p["seeds"]
        for split in p["splits"]
        for fold in range(p["folds"])
        for labels in LABELS
    ]
    pre = [(labels, seed) for seed in p["seeds"] for labels in LABELS if labels in p["pretrains"]]
    cls_jobs = [(pt, fold, seed) for seed in p["seeds"] for pt in p["pretrains"]
                for fold in range(p["folds"])]  # fmt: skip
    shared = (p, seg, device)
    for (labels, split, fold, seed), run in sweep_runs(_seg_job, jobs, shared, p, progress,
                                                       "Part 1"):  # fmt: skip
        tags = {"labels": labels, "split": split, "fold": fold, "seed": seed}
        seg_runs.add(run, tags, main=tags, name=f"{labels}/{split}/{fold}/{seed}")
        a = run["arrays"]
        overlays.setdefault((split, labels, seed), []).extend(
            zip(a["overlay_index"], a["overlay_last"], a["overlay_best_test"])
        )
    pretrained = {}
    pre_jobs = [(labels, "all", None, seed) for labels, seed in pre]
    for (labels, _, _, seed), run in sweep_runs(_seg_job, pre_jobs, shared, p, progress,
                                                "pretraining"):  # fmt: skip
        pretrained[labels, seed] = run
        seg_runs.reused += run["reused"]
    cls_jobs = [(pt, fold, seed, pretrained.get((pt, seed))) for pt, fold, seed in cls_jobs]
    shared = (p, cls, device)
    for (pretrain, fold, seed, _), run in sweep_runs(_cls_job, cls_jobs, shared, p, progress,
                                                     "Part 2"):  # fmt: skip
        tags = {"pretrain": pretrain, "fold": fold, "seed": seed}
        cls_runs.add(run, tags, main=tags, name=f"{pretrain}/{fold}/{seed}")
    s, c = seg_runs.result(), cls_runs.result()
    return {
        "seg_runs": s["runs"],
        "cls_runs": c["runs"],
        "seg_histories": s["histories"],
        "cls_histories": c["histories"],
        "seg_per_image": s["per_image"],
        "cls_per_image": c["per_image"],
        "overlays": overlays,
        "weights": c["weights"],
        "pretrain_runs": {f"{k[0]}/{k[1]}": v["folder"] for k, v in pretrained.items()},
        "reused": s["reused"] + c["reused"],
        "device": describe_device(device),
    }


# ----------------------------------------------------------------------------------------------
# Tables


def _ms(values: pd.Series, digits: int = 3) -> str:
    v = values.dropna().to_numpy(float)
    if not len(v):
        return "–"
    return format_mean_std(v.mean(), v.std(ddof=1) if len(v) > 1 else np.nan, digits=digits)


def _paper(pair) -> str:
    return f"{pair[0]:.3f} ± {pair[1]:.3f}"


def table1(runs: pd.DataFrame, split: str = "patient", select: str = "last") -> pd.DataFrame:
    """Paper Table 1, top half: pixel accuracy and IoU (pooled over each test fold) on the sparse
    classes, mean ± std over folds and seeds, for sparse labels and for dense labels merged to
    sparse, each beside the paper's row."""
    rows = {}
    cols = {"pixel_accuracy": "Pixel-wise Acc", "miou": "mIoU mean"}
    cols.update({f"iou_{slug(c)}": c for c in SPARSE_CLASSES})
    for labels in ("sparse", "dense"):
        r = runs[(runs["labels"] == labels) & (runs["split"] == split)]
        name = "sparse" if labels == "sparse" else "dense (merged to sparse)"
        rows[f"U-Net {name}, ours"] = {
            title: _ms(r[f"{select}_{col}"]) for col, title in cols.items()
        }
        paper = PAPER_TABLE1.loc[labels]
        rows[f"U-Net {labels}, paper"] = {
            "Pixel-wise Acc": _paper(paper["pixel_accuracy"]),
            "mIoU mean": _paper(paper["miou"]),
            **{c: _paper(paper[c]) for c in SPARSE_CLASSES},
        }
    return pd.DataFrame(rows).T


def table1_dense(runs: pd.DataFrame, split: str = "patient", select: str = "last") -> pd.DataFrame:
    """Paper Table 1, bottom half: dense labels scored on their own seven classes (pixel accuracy,
    mean IoU over the seven, and the four classes the sparse labels do not have)."""
    r = runs[(runs["labels"] == "dense") & (runs["split"] == split)]
    names = ["healthy pleural line", "unhealthy pleural line", "healthy region", "unhealthy region"]
    ours = {
        "Dense Pixel-wise Acc": _ms(r[f"{select}_dense_pixel_accuracy"]),
        "Dense mean (7 classes)": _ms(r[f"{select}_dense_miou"]),
        **{n: _ms(r[f"{select}_dense_iou_{slug(n)}"]) for n in names},
    }
    paper = {
        "Dense Pixel-wise Acc": _paper(PAPER_TABLE1_DENSE["pixel_accuracy"]),
        "Dense mean (7 classes)": _paper(PAPER_TABLE1_DENSE["miou"]),
        **{n: _paper(PAPER_TABLE1_DENSE[n]) for n in names},
    }
    return pd.DataFrame({"U-Net dense, ours": ours, "U-Net dense, paper": paper}).T


def leak_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Sparse-view mIoU and pixel accuracy (mean over folds and seeds) for every labels x split x
    selection: how much the paper's random folds and its test-set model choice raise the scores."""
    rows = []
    for (labels, split), r in runs.groupby(["labels", "split"], sort=False):
        for sel in SELECTIONS:
            rows.append(
                {
                    "labels": labels,
                    "folds": split,
                    "epoch": "last" if sel == "last" else "best test accuracy (paper)",
                    "pixel accuracy": r[f"{sel}_pixel_accuracy"].mean(),
                    "mIoU": r[f"{sel}_miou"].mean(),
                    "runs": len(r),
                }
            )
    return pd.DataFrame(rows).round(3)


def false_positive_table(
    runs: pd.DataFrame, split: str = "patient", select: str = "last"
) -> pd.DataFrame:
    """False positives per test image, mean over folds and seeds, by sparse class: predicted
    connected components touching no true pixel of the class, and wrongly labelled pixels;
    dense labels counted after merging to sparse."""
    rows = {}
    for labels in ("sparse", "dense"):
        r = runs[(runs["labels"] == labels) & (runs["split"] == split)]
        row = {}
        for c in [*SPARSE_CLASSES[1:], "total"]:
            row[f"FP components, {c}"] = r[f"{select}_fp_components_{slug(c)}"].mean()
        for c in [*SPARSE_CLASSES[1:], "total"]:
            row[f"FP pixels, {c}"] = r[f"{select}_fp_pixels_{slug(c)}"].mean()
        rows[labels] = row
    return pd.DataFrame(rows).T.round(2)


def dense_vs_sparse_tests(
    runs: pd.DataFrame, per_image: pd.DataFrame, split: str = "patient", select: str = "last"
) -> pd.DataFrame:
    """Is dense better than sparse? Paired over (fold, seed): the difference of the run means, the
    paired t-test and Wilcoxon; for false-positive components also paired over the test images
    (each image's count, averaged over seeds; Wilcoxon)."""
    r = runs[runs["split"] == split]
    present = [f"{select}_{m}" for m in _TESTED if f"{select}_{m}" in r]
    wide = r.pivot_table(index=["fold", "seed"], columns="labels", values=present)
    rows = []
    for m in _TESTED:
        col = f"{select}_{m}"
        if col not in wide or not {"dense", "sparse"} <= set(wide[col].columns):
            continue
        pair = wide[col][["dense", "sparse"]].dropna()
        res = paired_difference(pair["dense"], pair["sparse"])
        rows.append({"measure": m, "unit": "run (fold x seed)", **res})
    pi = per_image[(per_image["split"] == split) & (per_image["selection"] == select)]
    if pi["labels"].nunique() == 2 and pi["id"].nunique() >= 2:
        _, pairs = friedman_wilcoxon(pi, "labels", "fp_components_total", block="id")
        means = pi.groupby("labels")["fp_components_total"].mean()
        rows.append(
            {
                "measure": "fp_components_total",
                "unit": "test image",
                "n": int(pi["id"].nunique()),
                "mean_a": float(means.get("dense", np.nan)),
                "mean_b": float(means.get("sparse", np.nan)),
                "mean_diff": float(means.get("dense", np.nan) - means.get("sparse", np.nan)),
                "p_t": np.nan,
                "p_wilcoxon": float(pairs["p_wilcoxon"].iloc[0]),
            }
        )
    out = pd.DataFrame(rows).rename(columns={"mean_a": "dense", "mean_b": "sparse"})
    return out.round(4)


_TESTED = ("pixel_accuracy", "miou", "iou_a_line", "iou_b_line", "iou_pleural_line",
           "fp_components_total", "fp_pixels_total")  # fmt: skip


def table2(runs: pd.DataFrame, select: str = "last") -> pd.DataFrame:
    """Paper Table 2: accuracy and per-class precision, recall, F1 (mean over folds and seeds; the
    paper averages its three folds), with the per-video accuracy, beside the paper's rows."""
    rows = {}
    for pretrain, r in runs.groupby("pretrain", sort=False):
        row = {"accuracy": _ms(r[f"{select}_accuracy"])}
        for name in TABLE2_ORDER:
            for m in ("precision", "recall", "f1"):
                row[f"{name} {m}"] = _ms(r[f"{select}_{slug(name)}_{m}"])
        row["extra: per-video accuracy"] = _ms(r[f"{select}_video_accuracy"])
        rows[f"{pretrain}, ours"] = row
        if pretrain in PAPER_TABLE2.index:
            paper = PAPER_TABLE2.loc[pretrain]
            rows[f"{pretrain}, paper"] = {k: f"{v:.3f}" for k, v in paper.items()} | {
                "extra: per-video accuracy": "–"
            }
    return pd.DataFrame(rows).T


def confusion_matrices(runs: pd.DataFrame, select: str = "last") -> dict[str, pd.DataFrame]:
    """Per pretraining, the confusion matrix summed over folds and seeds (rows: true class)."""
    out = {}
    for pretrain, r in runs.groupby("pretrain", sort=False):
        total = np.sum([np.asarray(c) for c in r[f"{select}_confusion"]], axis=0)
        out[pretrain] = pd.DataFrame(
            total,
            index=pd.Index(DIAGNOSES, name="true"),
            columns=pd.Index(DIAGNOSES, name="predicted"),
        )
    return out


def fc_weights(runs: pd.DataFrame, pretrain: str = "dense") -> pd.DataFrame:
    """The linear layer of a reverse-transfer classifier (mean over folds and seeds, last epoch):
    how much each segmentation class's share of the image votes for each diagnosis."""
    r = runs[runs["pretrain"] == pretrain]
    w = np.mean([np.asarray(x) for x in r["fc_weight"]], axis=0)
    names = CLASSES[pretrain] if pretrain != "none" else DENSE_CLASSES
    names = names if pretrain != "none" else [f"output {i}" for i in range(len(names))]
    return pd.DataFrame(w, index=pd.Index(DIAGNOSES, name="diagnosis"), columns=names).round(2)


def figure2_panels(
    out: dict, data: SemanticLung, split: str = "patient", seed: int = 0, select: str = "last"
) -> tuple[list[np.ndarray], list[str]]:
    """Paper Fig. 2 as panels, one row per test patient (its first unaugmented image, from the fold
    that tested it): input, dense truth, sparse truth, dense prediction, sparse prediction.

    Returns:
        ``(panels, titles)`` for :func:`lus_common.figures.plots.gallery` with ``cols=5``.
    """
    from lus_common.figures.plots import CLASS_RGB, SPARSE_RGB, class_overlay_rgb

    pick = 1 if select == "last" else 2
    dense = {int(o[0]): o[pick] for o in out["overlays"].get((split, "dense", seed), [])}
    sparse = {int(o[0]): o[pick] for o in out["overlays"].get((split, "sparse", seed), [])}
    panels, titles = [], []
    for i in sorted(set(dense) & set(sparse), key=lambda i: data.patients[i]):
        im = data.images[i]
        panels += [
            im,
            class_overlay_rgb(im, data.dense[i], palette=CLASS_RGB),
            class_overlay_rgb(im, data.sparse[i], palette=SPARSE_RGB),
            class_overlay_rgb(im, dense[i], palette=CLASS_RGB),
            class_overlay_rgb(im, sparse[i], palette=SPARSE_RGB),
        ]
        who = f"{data.patients[i]} ({data.diagnoses[i]})"
        titles += [who, "dense truth", "sparse truth", "dense prediction", "sparse prediction"]
    return panels, titles


# ----------------------------------------------------------------------------------------------
# Findings


def findings(out: dict, p: dict, data_label: str, cls_label: str) -> list[str]:
    """The Discussion's sentences, generated from the runs and the paper's tables."""
    seg, cls, sel = out["seg_runs"], out["cls_runs"], p["select"]
    when = "the last epoch" if sel == "last" else "the epoch of best test accuracy (the paper's)"
    lines = [
        f"**Part 1 comes from {data_label} data, Part 2 from {cls_label} data** ({p['profile']} "
        f"profile, {p['image_size']} px, {p['seg_epochs']} + {p['cls_epochs']} epochs, "
        f"{len(p['seeds'])} seed(s), {p['folds']} folds; scores at {when})."
    ]
    split = "patient" if "patient" in p["splits"] else p["splits"][0]
    r = seg[seg["split"] == split]
    m = r.groupby("labels")[f"{sel}_miou"].mean()
    if {"dense", "sparse"} <= set(m.index):
        paper = PAPER_TABLE1["miou"]
        lines.append(
            f"- Sparse-class mIoU with folds by {split}: dense (merged) {m['dense']:.3f} vs sparse "
            f"{m['sparse']:.3f} ({m['dense'] - m['sparse']:+.3f}; paper, random folds: "
            f"{paper['dense'][0]:.3f} vs {paper['sparse'][0]:.3f}, "
            f"{paper['dense'][0] - paper['sparse'][0]:+.3f})."
        )
        fp = r.groupby("labels")[f"{sel}_fp_components_total"].mean()
        word = "fewer" if fp["dense"] < fp["sparse"] else "no fewer"
        tests = dense_vs_sparse_tests(seg, out["seg_per_image"], split, sel)
        per_image = tests[tests["unit"] == "test image"]
        p_img = (
            f" (Wilcoxon over {int(per_image['n'].iloc[0])} paired test images: "
            f"{format_p(per_image['p_wilcoxon'].iloc[0])})"
            if len(per_image)
            else ""
        )
        lines.append(
            f"- False-positive components per test image (A-line, B-line, pleural line): dense "
            f"{fp['dense']:.2f} vs sparse {fp['sparse']:.2f}{p_img}: dense labels give {word} "
            "false positives here. The paper claims fewer, and shows it only by Fig. 2."
        )
    if set(SPLITS) <= set(seg["split"]):
        g = seg.groupby(["split"])[f"{sel}_miou"].mean()
        lines.append(
            f"- The paper's random folds over augmented copies against folds by patient: mIoU "
            f"{g['random']:.3f} vs {g['patient']:.3f} ({g['random'] - g['patient']:+.3f}), the "
            "part of a random-fold score that comes from seeing copies of the test images."
        )
    b = seg.groupby("split")[["last_miou", "best_test_miou"]].mean()
    if split in b.index:
        lines.append(
            f"- Picking the epoch with the best test accuracy, as the paper did, moves the mIoU "
            f"from {b.loc[split, 'last_miou']:.3f} (last epoch) to "
            f"{b.loc[split, 'best_test_miou']:.3f} (folds by {split})."
        )
    acc = cls.groupby("pretrain", sort=False)[f"{sel}_accuracy"].mean()
    vid = cls.groupby("pretrain", sort=False)[f"{sel}_video_accuracy"].mean()
    if len(acc):
        ours = ", ".join(f"{k} {v:.3f}" for k, v in acc.items())
        paper = ", ".join(
            f"{k} {PAPER_TABLE2.loc[k, 'accuracy']:.3f}"
            for k in acc.index
            if k in PAPER_TABLE2.index
        )
        lines.append(
            f"- Diagnostic frame accuracy by pretraining: {ours} (paper: {paper}); per video: "
            + ", ".join(f"{k} {v:.3f}" for k, v in vid.items())
            + "."
        )
        if {"dense", "none"} <= set(acc.index):
            n = int((cls["pretrain"] == "dense").sum())
            lines.append(
                f"- Dense segmentation pretraining minus none: {acc['dense'] - acc['none']:+.3f} "
                f"frame accuracy over {n} run(s) (paper: +0.025 over its three folds; neither "
                "comes with a test)."
            )
    return lines


# ----------------------------------------------------------------------------------------------
# Reference runs (real POCUS)

REFERENCE_RUNS = PROJECT_ROOT / "book" / "reference_runs" / "dense_sparse_pocus.json"


def reference_findings(runs: pd.DataFrame, p: dict) -> list[str]:
    """The sentences under the reference tables: accuracy per pretraining (frames and videos) and
    what the phantom segmentation weights are worth on real clips."""
    sel = p["select"]
    acc = runs.groupby("pretrain", sort=False)[f"{sel}_accuracy"].mean()
    vid = runs.groupby("pretrain", sort=False)[f"{sel}_video_accuracy"].mean()
    f1 = runs.groupby("pretrain", sort=False)[f"{sel}_macro_f1"].mean()
    lines = [
        f"- {name} pretraining: frame accuracy {acc[name]:.3f}, per-video {vid[name]:.3f}, "
        f"macro F1 {f1[name]:.3f} (mean of {int((runs.pretrain == name).sum())} runs)."
        for name in acc.index
    ]
    if {"dense", "none"} <= set(acc.index):
        best = acc.idxmax()
        lines.append(
            f"- Phantom-trained dense segmentation against no pretraining on real POCUS frames: "
            f"{acc['dense'] - acc['none']:+.3f} accuracy; the best start here is **{best}** "
            "(paper, on its own real segmentation set: dense, +0.025 over none)."
        )
    return lines


def reference_seg_runs(path=REFERENCE_RUNS) -> pd.DataFrame:
    """The recorded Part 1 fold runs (empty when the file holds only Part 2): one row per run
    like :func:`run_study`'s ``"seg_runs"``."""
    return base.reference_rows(
        base.read_reference(path),
        ("labels", "split", "fold", "seed"),
        lambda r: "labels" in r["params"] and r["params"]["fold"] != "all",
    )


def reference_runs(path=REFERENCE_RUNS) -> tuple[str, dict, pd.DataFrame]:
    """The recorded reference runs: ``(caption, study parameters, one row per classification
    run with its pretrain, fold, seed and metrics)``."""
    doc = base.read_reference(path)
    rows = base.reference_rows(
        doc, ("pretrain", "fold", "seed"), lambda r: "pretrain" in r["params"]
    )
    what = doc["what"]
    if "phantom_appearance" not in doc:  # recorded before the calibrated lung phantom existed
        what += (
            " Its phantom parts (Part 1 and the segmentation pretraining) ran on the lung "
            "phantom's first generator (`v1`), not on today's calibrated default; rerun the "
            "script to remeasure them."
        )
    return what, doc["study_params"], rows

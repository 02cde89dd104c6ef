"""Study 2 (Cheng & Lam 2021): V-UNet vs X-UNet for rib segmentation in lung ultrasound, Keras 3.

Two transfer-learning routes to a U-Net for 200 (400 with flips) frames of one healthy volunteer:

- **V-UNet**: keras.applications VGG16 as the contracting path (ImageNet weights, or the natural-
  image VGG16 of `lus weights import`). Transfer learning (TL): the encoder frozen, Adam 1e-5; then
  fine-tuning (FT): every layer, Adam 5e-6.
- **X-UNet**: a plain U-Net pretrained on grey salient objects (the authors: XPIE; here the salient
  phantom, the Weizmann horses or XPIE), Adam 1e-5 at batch 30; then FT on the frames, every layer
  (``ALL``) or every layer but the bottleneck block (``BBFrozen``), Adam 5e-6.

The loss is the authors' ``dice_coef_loss`` (minus the soft Dice over the flattened batch, smoothing
1); predictions are thresholded at 0.5. Frames get the authors' real-time augmentation
(:mod:`lus_common.training.keras_augment`). Data sizes: 200 frames, 400 = the 200 and their
horizontal flips, 600 = 300 frames and flips.

Beyond the paper: folds that keep an image, its flip and its video (clip) together, with the
authors' leaky ``KFold(shuffle=True)`` over the augmented set run beside them; scores from the last
epoch (nothing is selected on the scored fold); boundary distances, connected components and edge
roughness (:mod:`lus_common.evaluation.boundary`) for the paper's visual claim; despeckling on and
off; and the real ``lus_pleura_rib`` frames.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lus_common.config.paths import PROJECT_ROOT
from lus_common.config.profiles import resolve_params
from lus_common.config.registry import lookup
from lus_common.data.despeckle import homomorphic_despeckle
from lus_common.data.sets import SegmentationSet
from lus_common.evaluation.boundary import boundary_scores
from lus_common.evaluation.metrics import segmentation_scores
from lus_common.evaluation.stats import format_mean_std, format_p, paired_difference
from lus_common.models.keras_unets import (
    create_keras_model,
    free_memory,
    keras,
    keras_weights_key,
    predict_batches,
    set_frozen,
    setup_keras,
)
from lus_common.models.weights import weights_name
from lus_common.store import results
from lus_common.store.environment import environment_info
from lus_common.studies import base
from lus_common.studies.base import cached_run, check_choice, derive_profiles, run_record
from lus_common.training.keras_augment import Augmentation, augmented_batches

STUDY = "v_vs_x_unet"
CODE_VERSION = "v1"  # bump when a run's computation changes: older stored runs are not reused
NATURAL_WEIGHTS = ["imagenet", "hed-bsds500"]
DATA_SOURCES = ("synthetic", "lus_pleura_rib")
PRETRAIN_SOURCES = ("synthetic", "weizmann_horse", "xpie")
SCHEMES = ("grouped", "leaky")
DEFAULT_TARGET = {"synthetic": "rib_body", "lus_pleura_rib": "rib_line"}
SMOOTH = 1.0  # the authors' dice_coef smoothing


@dataclass(frozen=True)
class Arm:
    """One column group of the paper's Table 1."""

    label: str
    model: str  # "v_unet" or "x_unet"
    size: str  # "200" (frames), "400" (frames + flips), "600" (1.5x frames + flips)
    frozen: str | None = None  # X-UNet FT: None (all layers) or "bottleneck"


ARMS = {
    "v_unet_400": Arm("V-UNet, 400", "v_unet", "400"),
    "v_unet_200": Arm("V-UNet, 200", "v_unet", "200"),
    "x_all_400": Arm("X-UNet FT all layers, 400", "x_unet", "400"),
    "x_bb_400": Arm("X-UNet FT BB frozen, 400", "x_unet", "400", "bottleneck"),
    "x_all_600": Arm("X-UNet FT all layers, 600", "x_unet", "600"),
}

# fmt: off
PROFILES = derive_profiles(
    # The paper's settings: 300 phantom frames of one healthy volunteer (15 videos of 20 frames;
    # the first 200 frames make the 200 / 400 sets), raw 960x128 linear-probe frames at 5.2 MHz,
    # resized to 256x256; 5 folds; 100 + 100 epochs.
    dict(data_source="synthetic", target=None, image_size=256, raw_shape=[960, 128],
         frequency_mhz=5.2, frames=300, frames_per_video=20, base_fraction=2 / 3,
         despeckle=True, despeckle_arms=["v_unet_400", "x_all_400"], real_despeckle_size=512,
         folds=5, fold_seed=0, schemes=["grouped", "leaky"], leaky_arms=["v_unet_400", "x_all_400"],
         arms=list(ARMS), seeds=[0], encoder_weights=NATURAL_WEIGHTS, augment=True,
         v_batch=20, v_tl_epochs=100, v_tl_lr=1e-5, v_ft_epochs=100, v_ft_lr=5e-6,
         x_batch=30, pretrain_source="synthetic", pretrain_images=1000, pretrain_epochs=100,
         pretrain_lr=1e-5, x_ft_epochs=100, x_ft_lr=5e-6, curves=True, keep_predictions=6,
         executor="local"),
    # About three minutes on a 2-core CPU: 30 frames (5 videos of 6) at 32 px, 2 folds, 2-3
    # epochs (about a dozen steps) at learning rates 100x the paper's, so that the Adam steps add
    # up to about the paper's (1,600 steps at 5e-6); X-UNet's pretraining at 10x only (a plain
    # U-Net without batch norm diverged at 100x: activations in the thousands, every output 1);
    # the leak and despeckling on V-UNet only.
    quick=dict(image_size=32, frames=30, frames_per_video=6, folds=2, v_batch=8, v_tl_epochs=2,
               v_tl_lr=1e-3, v_ft_epochs=2, v_ft_lr=5e-4, x_batch=8, pretrain_images=48,
               pretrain_epochs=3, pretrain_lr=1e-4, x_ft_epochs=3, x_ft_lr=5e-4,
               despeckle_arms=["v_unet_400"], leaky_arms=["v_unet_400"], curves=False,
               keep_predictions=4),
    # Seconds, for tests.
    smoke=dict(image_size=32, raw_shape=[240, 32], real_despeckle_size=64, frames=12,
               frames_per_video=3, folds=2,
               v_batch=8, v_tl_epochs=1, v_ft_epochs=1, x_batch=8, pretrain_images=8,
               pretrain_epochs=1, x_ft_epochs=1, despeckle_arms=["v_unet_400"],
               leaky_arms=["x_all_400"], arms=["v_unet_400", "v_unet_200", "x_all_400",
               "x_bb_400", "x_all_600"], curves=False, keep_predictions=2),
)
# fmt: on

# Paper 2, Table 1: highest and average Dice over the 5 folds (TL columns: one run, no folds).
PAPER_TABLE1 = pd.DataFrame(
    {
        "paper TL (highest)": [0.8200, 0.7424, 0.7189, 0.7189, 0.7189],
        "paper FT highest": [0.8632, 0.7815, 0.8297, 0.8107, 0.8361],
        "paper FT average": [0.8603, 0.7787, 0.8179, 0.8097, 0.8329],
    },
    index=list(ARMS),
)


def study_params(profile: str = "quick", **given) -> dict:
    """Resolve the notebook's parameters against this study's profiles and check them.

    Raises:
        ValueError: an unknown data source, target, arm, scheme or pretraining source, or an image
            size that is not a multiple of 16 (or under 32).
    """
    p = resolve_params(PROFILES, profile, **given)
    check_choice(p, "data_source", DATA_SOURCES)
    check_choice(p, "pretrain_source", PRETRAIN_SOURCES)
    if p["target"] is None:
        p["target"] = DEFAULT_TARGET[p["data_source"]]
    if p["image_size"] % 16 or p["image_size"] < 32:
        raise ValueError(
            "image_size must be a multiple of 16 (four poolings to the bridge) and at least 32 "
            f"(VGG16's smallest input), got {p['image_size']}."
        )
    for name in ("arms", "despeckle_arms", "leaky_arms"):
        p[name] = [lookup(list(ARMS), a, "arm", error=ValueError) for a in p[name] or []]
    p["schemes"] = [lookup(SCHEMES, s, "fold scheme", error=ValueError) for s in p["schemes"]]
    if "grouped" not in p["schemes"]:
        raise ValueError("schemes must contain 'grouped' (the honest folds every arm runs on).")
    p["seeds"] = [int(s) for s in np.atleast_1d(p["seeds"])]
    if p["folds"] < 2:
        raise ValueError(f"folds must be at least 2, got {p['folds']}.")
    return p


# ----------------------------------------------------------------------------------------- data


def _resize(images: np.ndarray, size: int, order: int) -> np.ndarray:
    """Resize a stack to size x size (bilinear for images, nearest for masks), aspect not kept."""
    import torch
    from torch.nn import functional as F

    t = torch.as_tensor(np.ascontiguousarray(images, dtype=np.float32))[:, None]
    mode = "bilinear" if order else "nearest"
    kwargs = {"align_corners": False, "antialias": True} if order else {}
    out = F.interpolate(t, size=(size, size), mode=mode, **kwargs)[:, 0].numpy()
    return out.clip(0, 1).astype(np.float32) if order else (out > 0.5).astype(np.uint8)


def load_frames(p: dict, only: list[str] | None = None) -> SegmentationSet:
    """The volunteer's original frames at ``image_size``, target in ``masks``, every structure in
    ``layers``; ``info["despeckled"]`` holds the same images despeckled before resizing (paper 2:
    despeckled raw frames, then resized to 256x256), and ``groups`` the video (clip) of each.
    ``only``: the real frames of these stems alone (for figures of recorded runs).

    Raises:
        FileNotFoundError: ``data_source="lus_pleura_rib"`` and the data is not there.
        ValueError: a target the source does not have.
    """
    size = p["image_size"]
    if p["data_source"] == "lus_pleura_rib":
        from lus_common.data.lus_pleura_rib import STRUCTURES, load_lus_pleura_rib

        lookup(STRUCTURES, p["target"], "lus_pleura_rib target", error=ValueError)
        raw = load_lus_pleura_rib(
            target=p["target"], image_size=p["real_despeckle_size"], only=only
        )
        groups = list(raw.groups)
    else:
        from lus_common.phantoms.lung import TARGETS, lung_ultrasound_phantom

        lookup(TARGETS, p["target"], "phantom target", error=ValueError)
        raw = lung_ultrasound_phantom(
            p["frames"], n_patients=1, frames_per_video=p["frames_per_video"], probe="linear",
            diagnoses="healthy", target=p["target"], seed=2021, beam_shape=tuple(p["raw_shape"]),
            frequency_mhz=p["frequency_mhz"], id_prefix="volunteer",
        )  # fmt: skip
        groups = list(raw.meta["video"])
    despeckled = homomorphic_despeckle(raw.images, log_input=True)
    layers = {k: _resize(v, size, 0) for k, v in raw.layers.items() if k not in ("dense", "sparse")}
    data = SegmentationSet(
        images=_resize(raw.images, size, 1),
        masks=_resize(raw.masks, size, 0),
        ids=list(raw.ids),
        source=raw.source,
        synthetic=raw.synthetic,
        groups=groups,
        info={
            **raw.info,
            "despeckled": _resize(despeckled, size, 1),
            "raw_shape": list(raw.images.shape[1:]),
        },  # fmt: skip
        layers=layers,
        meta=raw.meta,
    )
    return data


def prepare(p: dict, data: SegmentationSet | None = None) -> dict:
    """The frames, their base/extra split by video and the fold of every video.

    The first ``base_fraction`` of the videos (in recording order) are the 200-frame set, the
    rest the extra frames of the 600 set. Grouped folds: each video goes to one fold, the base and
    extra videos dealt round-robin after a seeded shuffle, so each fold holds base and extra
    videos and a frame, its flip and its video's other frames are always in one fold.
    """
    data = data if data is not None else load_frames(p)
    videos = list(dict.fromkeys(data.groups))
    n_base = max(p["folds"], int(round(p["base_fraction"] * len(videos))))
    if len(videos) <= n_base:
        raise ValueError(
            f"{len(videos)} videos (clips) cannot make {p['folds']} folds of base videos and "
            "extra ones: raise frames, or lower frames_per_video or folds."
        )
    rng = np.random.default_rng(p["fold_seed"])
    fold_of = {}
    for part in (videos[:n_base], videos[n_base:]):
        for i, v in enumerate(rng.permutation(part)):
            fold_of[str(v)] = i % p["folds"]
    return {
        "data": data,
        "base_videos": videos[:n_base],
        "extra_videos": videos[n_base:],
        "fold_of": fold_of,
        "fingerprint": data.fingerprint(),
    }


def arm_images(prep: dict, size: str, despeckle: bool) -> dict:
    """The images of a data size: ``"200"`` the base frames, ``"400"`` those and their horizontal
    flips, ``"600"`` every frame and its flip; originals first, then flips (the authors' order).

    Returns:
        ``{"x", "y", "groups", "ids", "flipped", "layers"}`` (images (N, H, W) in [0, 1]).
    """
    data = prep["data"]
    keep = prep["base_videos"] + (prep["extra_videos"] if size == "600" else [])
    idx = np.flatnonzero(np.isin(np.asarray(data.groups), keep))
    images = data.info["despeckled"] if despeckle else data.images
    x, y = images[idx], data.masks[idx]
    layers = {k: v[idx] for k, v in data.layers.items()}
    out = {
        "x": x,
        "y": y,
        "groups": [data.groups[i] for i in idx],
        "ids": [data.ids[i] for i in idx],
        "flipped": np.zeros(len(idx), bool),
        "layers": layers,
    }
    if size in ("400", "600"):
        out = {
            "x": np.concatenate([x, x[..., ::-1]]),
            "y": np.concatenate([y, y[..., ::-1]]),
            "groups": out["groups"] * 2,
            "ids": out["ids"] + [f"{i}_flip" for i in out["ids"]],
            "flipped": np.r_[out["flipped"], np.ones(len(idx), bool)],
            "layers": {k: np.concatenate([v, v[..., ::-1]]) for k, v in layers.items()},
        }
    return out


def test_mask(prep: dict, images: dict, scheme: str, fold: int, k: int, seed: int) -> np.ndarray:
    """Which of ``images`` the fold scores: by video (``"grouped"``) or the authors' leaky
    ``KFold(n_splits=k, shuffle=True, random_state=seed)`` over the images as listed."""
    n = len(images["ids"])
    if scheme == "grouped":
        return np.array([prep["fold_of"][g] == fold for g in images["groups"]])
    from sklearn.model_selection import KFold

    lookup(SCHEMES, scheme, "fold scheme", error=ValueError)
    test = list(KFold(n_splits=k, shuffle=True, random_state=seed).split(np.arange(n)))[fold][1]
    out = np.zeros(n, bool)
    out[test] = True
    return out


def leak_counts(prep: dict, images: dict, scheme: str, k: int, seed: int) -> pd.DataFrame:
    """Per fold: test images whose flip, or another frame of whose video, is in training."""
    rows = []
    ids = [i.removesuffix("_flip") for i in images["ids"]]
    for f in range(k):
        test = test_mask(prep, images, scheme, f, k, seed)
        train_ids = {ids[i] for i in np.flatnonzero(~test)}
        train_videos = {images["groups"][i] for i in np.flatnonzero(~test)}
        t = np.flatnonzero(test)
        rows.append(
            {
                "folds": scheme,
                "fold": f,
                "test images": len(t),
                "with its flip (or original) in training": sum(ids[i] in train_ids for i in t),
                "with frames of its video in training": sum(
                    images["groups"][i] in train_videos for i in t
                ),
            }
        )
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------ training


def dice_coef(y_true, y_pred, smooth: float = SMOOTH):
    """The authors' ``dice_coef``: soft Dice over the flattened batch, smoothing 1."""
    ops = keras().ops
    y_true, y_pred = ops.reshape(y_true, (-1,)), ops.reshape(y_pred, (-1,))
    inter = ops.sum(y_true * y_pred)
    return (2.0 * inter + smooth) / (ops.sum(y_true) + ops.sum(y_pred) + smooth)


def dice_coef_loss(y_true, y_pred):
    """The authors' loss: minus :func:`dice_coef`."""
    return -dice_coef(y_true, y_pred)


def _keras_xy(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Grey (N, H, W) to three equal channels (N, H, W, 3); masks to (N, H, W, 1) floats."""
    return (
        np.repeat(x[..., None], 3, -1).astype(np.float32),
        y[..., None].astype(np.float32),
    )


def _fit(model, p: dict, train, val, epochs: int, lr: float, batch: int, seed: int, stage: str):
    """Compile with the authors' loss and Adam, fit on augmented batches; the history rows
    (``stage``, ``epoch``, ``loss``, ``dice`` and, with ``curves``, the scored fold's
    ``val_dice``: watched, never used to choose) and the seconds."""
    k = keras()
    model.compile(optimizer=k.optimizers.Adam(lr), loss=dice_coef_loss, metrics=[dice_coef])
    aug = Augmentation() if p["augment"] else None
    batches = augmented_batches(*train, batch, aug, seed)
    start = time.perf_counter()
    fitted = model.fit(
        batches, epochs=epochs, verbose=0, validation_data=val if p["curves"] else None
    )
    seconds = time.perf_counter() - start
    h = pd.DataFrame(fitted.history).rename(
        columns={"dice_coef": "dice", "val_dice_coef": "val_dice"}
    )
    h.insert(0, "epoch", np.arange(1, len(h) + 1))
    h.insert(0, "stage", stage)
    return h, seconds


def _predict(model, x: np.ndarray, batch: int = 16) -> np.ndarray:
    return predict_batches(model, x, batch)[..., 0]


def score(
    probs: np.ndarray, masks: np.ndarray, prefix: str, batch: int
) -> tuple[dict, pd.DataFrame]:
    """A stage's scores on the scored fold: the authors' Dice (soft, over each batch of ``batch``
    images, averaged over batches, as Keras reports validation data in ``fit``), the thresholded
    Dice per image (ours), and the boundary measures (:mod:`lus_common.evaluation.boundary`)."""
    m = masks.astype(np.float32)
    soft = []
    for i in range(0, len(probs), batch):
        pb, mb = probs[i : i + batch], m[i : i + batch]
        soft.append((2 * (pb * mb).sum() + SMOOTH) / (pb.sum() + mb.sum() + SMOOTH))
    per = segmentation_scores(probs, masks)[["dice", "iou"]]
    per = pd.concat([per, boundary_scores(probs, masks)], axis=1)
    has = ~per["empty_truth"]
    metrics = {
        f"{prefix}_dice_keras": float(np.mean(soft)),
        f"{prefix}_dice": float(per["dice"].mean()),
        f"{prefix}_dice_rib_frames": float(per.loc[has, "dice"].mean()) if has.any() else np.nan,
        f"{prefix}_hd95": float(per["hd95"].mean()),
        f"{prefix}_asd": float(per["asd"].mean()),
        f"{prefix}_extra_components": float(per["extra_components"].mean()),
        f"{prefix}_components_pred": float(per["components_pred"].mean()),
        f"{prefix}_components_truth": float(per["components_truth"].mean()),
        f"{prefix}_roughness": float(per["roughness"].mean()),
        f"{prefix}_missed_frames": int((has & per["empty_pred"]).sum()),
        f"{prefix}_false_frames": int((~has & ~per["empty_pred"]).sum()),
        f"{prefix}_frames_without_target": int((~has).sum()),
    }
    return metrics, per


def _part_weights(model) -> dict[str, list[np.ndarray]]:
    """Copies of the weights of each part (``encoder``: VGG16's ``block*`` layers; ``bottleneck``;
    ``rest``), to measure how far a stage moved them."""
    parts: dict[str, list[np.ndarray]] = {}
    for layer in model.layers:
        name = layer.name
        part = "encoder" if name.startswith("block") else (
            "bottleneck" if name.startswith("bottleneck_") else "rest")  # fmt: skip
        parts.setdefault(part, []).extend(np.array(w) for w in layer.get_weights())
    return parts


def _relative_change(before: dict, after: dict) -> dict[str, float]:
    """Per part, ``||w1 - w0|| / ||w0||`` over all its weights (0: the stage did not move it)."""
    out = {}
    for part, w0 in before.items():
        num = sum(float(np.sum((a - b) ** 2)) for a, b in zip(after[part], w0))
        den = sum(float(np.sum(b**2)) for b in w0)
        out[part] = float(np.sqrt(num / den)) if den > 0 else 0.0
    return out


def _state(model) -> dict:
    import torch

    return {f"{i:04d}": torch.as_tensor(np.asarray(w)) for i, w in enumerate(model.get_weights())}


def _set_state(model, state: dict) -> None:
    model.set_weights([state[k].numpy() for k in sorted(state)])


def _config(p: dict, key: dict, weights, **extra) -> dict:
    k = keras()
    return {
        "study": STUDY,
        "params": key,
        "profile": p["profile"],
        "weights": weights.as_dict(),
        "keras": k.__version__,
        "keras_backend": k.backend.backend(),
        "environment": environment_info(),
        **extra,
    }


def load_pretrain_set(p: dict) -> SegmentationSet:
    """X-UNet's pretraining images: the salient-object phantom, or a real set (Weizmann horses,
    XPIE) from ``$LUS_DATA_DIR``."""
    n, size = p["pretrain_images"], p["image_size"]
    if p["pretrain_source"] == "synthetic":
        from lus_common.phantoms.salient import salient_object_phantom

        return salient_object_phantom(n, size, seed=26)
    from lus_common.data import salient

    loader = (
        salient.load_weizmann_horse
        if p["pretrain_source"] == "weizmann_horse"
        else salient.load_xpie
    )
    return loader(image_size=size, limit=n)


_PRETRAIN_KEYS = ("pretrain_source", "pretrain_images", "pretrain_epochs", "pretrain_lr",
                  "x_batch", "image_size", "augment")  # fmt: skip


def pretrain_x_unet(p: dict, seed: int) -> dict:
    """X-UNet's pretraining on grey salient objects (trained once, then reused): 80 % of the
    images train, 20 % give the paper's "TL (with XPIE)" Dice; its weights start every X-UNet
    fine-tuning of this seed."""
    sal = load_pretrain_set(p)
    key = {**{k: p[k] for k in _PRETRAIN_KEYS}, "seed": seed, "stage": "pretrain",
           "weights": "none/random", "code_version": CODE_VERSION,
           "data_fingerprint": sal.fingerprint()}  # fmt: skip

    def build():
        return create_keras_model("x_unet", p["image_size"], None, seed)

    def fit(model, weights, rk):
        order = np.random.default_rng(seed).permutation(len(sal))
        n_val = max(1, len(sal) // 5)
        val, train = order[:n_val], order[n_val:]
        x, y = _keras_xy(sal.images, sal.masks)
        history, seconds = _fit(
            model, p, (x[train], y[train]), (x[val], y[val]), p["pretrain_epochs"],
            p["pretrain_lr"], p["x_batch"], seed, "pretrain",
        )  # fmt: skip
        probs = _predict(model, x[val])
        metrics, per = score(probs, sal.masks[val], "val", p["x_batch"])
        # the soft Dice's trivial solution, the whole frame as the object, as a yardstick
        trivial, _ = score(np.ones_like(probs), sal.masks[val], "trivial", p["x_batch"])
        metrics.update(
            train_seconds=seconds, params=int(model.count_params()), n_train=len(train),
            val_foreground=float((probs > 0.5).mean()), val_truth_foreground=float(
                sal.masks[val].mean()), trivial_dice_keras=trivial["trivial_dice_keras"],
        )  # fmt: skip
        config = _config(p, rk, weights, synthetic=sal.synthetic, source=sal.source)
        record = run_record(config, metrics, history, per)
        return {**record, "state": _state(model)}

    return cached_run(STUDY, key, ("stage", "pretrain_source", "seed"), build, fit, free_memory)


_RUN_KEYS = ("data_source", "target", "image_size", "raw_shape", "frequency_mhz", "frames",
             "frames_per_video", "base_fraction", "real_despeckle_size", "folds", "fold_seed",
             "augment", "encoder_weights", "curves")  # fmt: skip
_V_KEYS = ("v_batch", "v_tl_epochs", "v_tl_lr", "v_ft_epochs", "v_ft_lr")
_X_KEYS = ("x_batch", "x_ft_epochs", "x_ft_lr")
RUN_NAME_KEYS = ("arm", "scheme", "fold", "despeckle", "seed", "data_source")


def run_params(p: dict, arm: str, scheme: str, fold: int, despeckle: bool, seed: int,
               fingerprint: str, pretrain_folder: str = "") -> dict:  # fmt: skip
    """What identifies one run: the study's parameters that change it, the weights it will load
    (V-UNet: the encoder's file; X-UNet: its pretraining run), the code version and the data."""
    a = ARMS[arm]
    keys = _V_KEYS if a.model == "v_unet" else _X_KEYS
    weights = (
        keras_weights_key("v_unet", p["encoder_weights"])
        if a.model == "v_unet"
        else f"pretrained:{Path(pretrain_folder).name}"
    )
    return {
        **{k: p[k] for k in _RUN_KEYS + keys},
        "arm": arm,
        "scheme": scheme,
        "fold": int(fold),
        "despeckle": bool(despeckle),
        "seed": int(seed),
        "weights": weights,
        "code_version": CODE_VERSION,
        "data_fingerprint": fingerprint,
    }


def run_one(p: dict, prep: dict, arm: str, scheme: str, fold: int, despeckle: bool, seed: int):
    """Train and score one arm on one fold, or reuse the stored run."""
    a = ARMS[arm]
    images = arm_images(prep, a.size, despeckle)
    test = test_mask(prep, images, scheme, fold, p["folds"], p["fold_seed"])
    pre = pretrain_x_unet(p, seed) if a.model == "x_unet" else None
    key = run_params(p, arm, scheme, fold, despeckle, seed, prep["fingerprint"],
                     pre["folder"] if pre else "")  # fmt: skip

    def build():
        if a.model == "v_unet":
            return create_keras_model("v_unet", p["image_size"], p["encoder_weights"], seed)
        model, info = create_keras_model("x_unet", p["image_size"], None, seed)
        _set_state(model, results.load_state(pre["folder"]))
        info = type(info)("salient pretraining", f"X-UNet pretrained on {p['pretrain_source']} "
                          f"salient objects (run {Path(pre['folder']).name})")  # fmt: skip
        return model, info

    def fit(model, weights, rk):
        x, y = _keras_xy(images["x"], images["y"])
        train, val = (x[~test], y[~test]), (x[test], y[test])
        metrics, histories, seconds = {}, [], 0.0
        if a.model == "v_unet":
            stages = [("tl", "encoder", p["v_tl_epochs"], p["v_tl_lr"]),
                      ("ft", None, p["v_ft_epochs"], p["v_ft_lr"])]  # fmt: skip
            batch = p["v_batch"]
        else:
            stages = [("ft", a.frozen, p["x_ft_epochs"], p["x_ft_lr"])]
            batch = p["x_batch"]
        for stage, frozen, epochs, lr in stages:
            metrics[f"{stage}_frozen_params"] = set_frozen(model, frozen)
            start = _part_weights(model)
            h, s = _fit(model, p, train, val, epochs, lr, batch, seed, stage)
            for part, change in _relative_change(start, _part_weights(model)).items():
                metrics[f"{stage}_{part}_change"] = change
            histories.append(h)
            seconds += s
            probs = _predict(model, val[0])
            stage_metrics, per = score(probs, images["y"][test], stage, batch)
            metrics.update(stage_metrics)
        per.insert(0, "id", [images["ids"][i] for i in np.flatnonzero(test)])
        metrics.update(
            weights_used=weights.used, params=int(model.count_params()), train_seconds=seconds,
            n_train=int((~test).sum()), n_test=int(test.sum()),
            last_train_dice=float(histories[-1]["dice"].iloc[-1]),
        )  # fmt: skip
        keep = np.flatnonzero(~images["flipped"][test])[: p["keep_predictions"]]
        arrays = {"probs": results.encode_probabilities(probs[keep]),
                  "ids": np.array([per["id"].iloc[i] for i in keep])}  # fmt: skip
        config = _config(p, rk, weights, synthetic=prep["data"].synthetic,
                         n_train=int((~test).sum()), n_test=int(test.sum()))  # fmt: skip
        return run_record(config, metrics, pd.concat(histories, ignore_index=True), per, arrays)

    return cached_run(STUDY, key, RUN_NAME_KEYS, build, fit, free_memory)


def jobs(p: dict) -> list[tuple[str, str, int, bool, int]]:
    """Every run, as ``(arm, scheme, fold, despeckle, seed)``: each arm on the grouped folds with
    ``despeckle`` as set; the ``leaky_arms`` on the authors' leaky folds; the ``despeckle_arms``
    with despeckling switched the other way."""
    d = bool(p["despeckle"])
    out = []
    for seed in p["seeds"]:
        for f in range(p["folds"]):
            out += [(a, "grouped", f, d, seed) for a in p["arms"]]
            if "leaky" in p["schemes"]:
                out += [(a, "leaky", f, d, seed) for a in p["leaky_arms"] if a in p["arms"]]
            out += [(a, "grouped", f, not d, seed) for a in p["despeckle_arms"] if a in p["arms"]]
    return out


def run_study(p: dict, prep: dict, progress: bool = True) -> dict:
    """Every run of :func:`jobs` (and X-UNet's pretraining), trained or reused.

    Returns:
        ``{"runs": one row per run, "pretrain": one row per pretraining, "histories",
        "per_image", "predictions": {(arm, fold, despeckle): (ids, probabilities)}, "reused",
        "device"}``.
    """
    device = setup_keras(p["device"])
    rows, pre_rows, histories, per_image, predictions, reused = [], [], [], [], {}, 0
    for seed in p["seeds"]:
        if any(ARMS[a].model == "x_unet" for a in p["arms"]):
            pre = pretrain_x_unet(p, seed)
            reused += pre["reused"]
            pre_rows.append({"seed": seed, "source": pre["config"]["source"],
                             **pre["metrics"], "reused": pre["reused"]})  # fmt: skip
    setup = functools.partial(setup_keras, p["device"])
    for job, run in base.sweep_runs(run_one, jobs(p), (p, prep), p, progress, "runs", setup):
        arm, scheme, fold, despeckle, seed = job
        reused += run["reused"]
        labels = {"arm": arm, "scheme": scheme, "fold": fold, "despeckle": despeckle, "seed": seed}
        rows.append({**labels, **run["metrics"], "reused": run["reused"]})
        histories.append(run["history"].assign(**labels))
        per_image.append(run["per_image"].assign(**labels))
        if scheme == "grouped" and seed == p["seeds"][0]:
            arrays = run["arrays"]
            predictions[arm, fold, despeckle] = (
                list(arrays["ids"]),
                results.decode_probabilities(arrays["probs"]),
            )
    return {
        "runs": pd.DataFrame(rows),
        "pretrain": pd.DataFrame(pre_rows),
        "histories": pd.concat(histories, ignore_index=True),
        "per_image": pd.concat(per_image, ignore_index=True),
        "predictions": predictions,
        "reused": reused,
        "device": device,
    }


# -------------------------------------------------------------------------------------- tables


def _sel(runs: pd.DataFrame, scheme: str = "grouped", despeckle: bool | None = True):
    r = runs[runs["scheme"] == scheme]
    return r if despeckle is None else r[r["despeckle"] == despeckle]


def table1(runs: pd.DataFrame, pretrain: pd.DataFrame, scheme: str = "grouped",
           despeckle: bool = True, metric: str = "dice_keras") -> pd.DataFrame:  # fmt: skip
    """Paper Table 1: per arm the highest and the average FT Dice over folds (and seeds), the TL
    Dice (V-UNet: the frozen-encoder stage, highest fold; X-UNet: the pretraining's validation
    Dice on salient objects), beside the paper's. ``metric``: ``"dice_keras"`` (the paper's soft
    Dice per batch) or ``"dice"`` (thresholded, per image)."""
    r = _sel(runs, scheme, despeckle)
    rows = []
    for arm, g in r.groupby("arm", sort=False):
        ft = g[f"ft_{metric}"]
        best = g.loc[ft.idxmax()]
        if ARMS[arm].model == "v_unet":
            tl = g[f"tl_{metric}"].max()
        else:
            tl = pretrain[f"val_{metric}"].max() if len(pretrain) else np.nan
        rows.append(
            {
                "arm": ARMS[arm].label,
                "weights": weights_name(g["weights_used"].iloc[0]),
                "runs": len(g),
                "train images per fold": int(g["n_train"].mean()),
                "TL (highest)": tl,
                "FT highest": ft.max(),
                "highest fold": int(best["fold"]) + 1,
                "FT average": ft.mean(),
                "FT std": ft.std() if len(g) > 1 else np.nan,
                **PAPER_TABLE1.loc[arm].to_dict(),
            }
        )
    return pd.DataFrame(rows).set_index("arm").round(4)


def leak_table(runs: pd.DataFrame, metric: str = "ft_dice_keras") -> pd.DataFrame:
    """Arms run on both fold schemes: mean Dice on grouped folds, on the authors' leaky folds,
    and the inflation (leaky minus grouped), same seeds and despeckling."""
    rows = []
    for (arm, d), g in runs.groupby(["arm", "despeckle"], sort=False):
        schemes = g.groupby("scheme")[metric].mean()
        if {"grouped", "leaky"} <= set(schemes.index):
            rows.append(
                {
                    "arm": ARMS[arm].label,
                    "despeckled": d,
                    "grouped folds (by video, flips together)": schemes["grouped"],
                    "authors' KFold(shuffle=True)": schemes["leaky"],
                    "inflation": schemes["leaky"] - schemes["grouped"],
                }
            )
    return pd.DataFrame(rows).set_index("arm").round(4) if rows else pd.DataFrame()


def despeckle_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Arms run with and without despeckling on the grouped folds: Dice (both definitions) and
    HD95, and the paired difference over folds."""
    r = _sel(runs, "grouped", None)
    rows = []
    for arm, g in r.groupby("arm", sort=False):
        if g["despeckle"].nunique() < 2:
            continue
        on = g[g["despeckle"]].set_index(["fold", "seed"]).sort_index()
        off = g[~g["despeckle"]].set_index(["fold", "seed"]).sort_index()
        on, off = (
            on.loc[on.index.intersection(off.index)],
            off.loc[on.index.intersection(off.index)],
        )
        d = paired_difference(on["ft_dice_keras"].to_numpy(), off["ft_dice_keras"].to_numpy())
        rows.append(
            {
                "arm": ARMS[arm].label,
                "pairs (fold x seed)": len(on),
                "Dice, despeckled": on["ft_dice_keras"].mean(),
                "Dice, raw": off["ft_dice_keras"].mean(),
                "difference": d["mean_diff"],
                "paired t p": format_p(d["p_t"]),
                "thresholded Dice, despeckled": on["ft_dice"].mean(),
                "thresholded Dice, raw": off["ft_dice"].mean(),
                "HD95 despeckled (px)": on["ft_hd95"].mean(),
                "HD95 raw (px)": off["ft_hd95"].mean(),
            }
        )
    return pd.DataFrame(rows).set_index("arm").round(4) if rows else pd.DataFrame()


SHAPE_COLUMNS = {
    "ft_dice": "thresholded Dice per image",
    "ft_hd95": "HD95 (px)",
    "ft_asd": "ASD (px)",
    "ft_components_pred": "components predicted",
    "ft_components_truth": "components true",
    "ft_extra_components": "extra components",
    "ft_roughness": "edge roughness",
    "ft_false_frames": "frames without target, predicted one",
    "ft_missed_frames": "frames with target, predicted none",
}


def shape_table(runs: pd.DataFrame, despeckle: bool = True) -> pd.DataFrame:
    """The visual claim in numbers: per arm (grouped folds) boundary distance, pieces and edge
    roughness of the final predictions, mean ± std over folds (and seeds), plus the V-UNet TL
    stage."""
    r = _sel(runs, "grouped", despeckle)
    rows = []
    for arm, g in r.groupby("arm", sort=False):
        stages = [("FT", "ft")] + ([("TL", "tl")] if ARMS[arm].model == "v_unet" else [])
        for stage, prefix in stages:
            row = {"arm": ARMS[arm].label, "stage": stage}
            for col, name in SHAPE_COLUMNS.items():
                v = g[col.replace("ft_", f"{prefix}_", 1)]
                row[name] = format_mean_std(v.mean(), v.std() if len(v) > 1 else np.nan, 1, 3)
            rows.append(row)
    return pd.DataFrame(rows).set_index(["arm", "stage"])


def v_vs_x_test(runs: pd.DataFrame, despeckle: bool = True) -> pd.DataFrame:
    """V-UNet (400) against X-UNet FT all layers (400), paired over folds and seeds: Dice, HD95,
    extra components and roughness (paired t-test and Wilcoxon of
    :func:`lus_common.evaluation.stats.paired_difference`)."""
    r = _sel(runs, "grouped", despeckle)
    v = r[r["arm"] == "v_unet_400"].set_index(["fold", "seed"]).sort_index()
    x = r[r["arm"] == "x_all_400"].set_index(["fold", "seed"]).sort_index()
    both = v.index.intersection(x.index)
    if len(both) < 2:
        return pd.DataFrame()
    rows = []
    measures = {
        "ft_dice_keras": "Dice (paper's)",
        "ft_hd95": "HD95 (px)",
        "ft_extra_components": "extra components",
        "ft_roughness": "edge roughness",
    }
    for col, name in measures.items():
        d = paired_difference(v.loc[both, col].to_numpy(), x.loc[both, col].to_numpy())
        rows.append({"measure": name, "V-UNet": v.loc[both, col].mean(),
                     "X-UNet": x.loc[both, col].mean(), "V - X": d["mean_diff"],
                     "paired t p": format_p(d["p_t"]), "Wilcoxon p": format_p(d["p_wilcoxon"]),
                     "pairs": len(both)})  # fmt: skip
    return pd.DataFrame(rows).set_index("measure").round(4)


# ------------------------------------------------------------------------------------- figures


def overlay_panels(
    prep: dict, predictions: dict, arms: list[str], fold: int = 0, despeckle: bool = True
) -> tuple[list, list]:
    """Paper Figs. 5-7: the same test frames of one grouped fold, the image with its true rib
    (green), then each arm's prediction (red outline) over the true outline.

    Returns:
        ``(panels, titles)`` for :func:`lus_common.figures.plots.gallery`, one row per frame.
    """
    from lus_common.figures.plots import overlay_rgb

    data = prep["data"]
    images = data.info["despeckled"] if despeckle else data.images
    index = {i: n for n, i in enumerate(data.ids)}
    arms = [a for a in arms if (a, fold, despeckle) in predictions]
    if not arms:
        return [], []
    ids = [i for i in predictions[arms[0], fold, despeckle][0] if i in index]
    panels, titles = [], []
    for frame in ids:
        k = index[frame]
        empty = np.zeros_like(data.masks[k], dtype=np.float32)
        panels.append(overlay_rgb(images[k], data.masks[k], empty))
        titles.append(f"{'_'.join(frame.split('_')[-2:])}: truth")  # phantom: video_frame
        for arm in arms:
            got_ids, probs = predictions[arm, fold, despeckle]
            prob = probs[got_ids.index(frame)] if frame in got_ids else empty
            panels.append(overlay_rgb(images[k], data.masks[k], prob))
            titles.append(ARMS[arm].label)
    return panels, titles


# ------------------------------------------------------------------------------------ findings


def _mean(runs: pd.DataFrame, arm: str, col: str, scheme="grouped", despeckle=True) -> float:
    g = _sel(runs, scheme, despeckle)
    g = g[g["arm"] == arm]
    return float(g[col].mean()) if len(g) else float("nan")


def findings(
    runs: pd.DataFrame, p: dict, data_label: str, pretrain: pd.DataFrame | None = None
) -> list[str]:
    """The Discussion's sentences, each from the runs' own numbers (grouped folds, last epoch,
    the paper's Dice definition unless said otherwise), beside the paper's claims; with the
    ``pretrain`` rows, whether X-UNet's pretraining learnt more than the trivial answer."""
    out = []
    d = "ft_dice_keras"
    has = set(runs["arm"])
    n = int(runs["fold"].nunique() * runs["seed"].nunique())
    if {"v_unet_400", "x_all_400"} <= has:
        v, x = _mean(runs, "v_unet_400", d), _mean(runs, "x_all_400", d)
        test = v_vs_x_test(runs)
        p_t = test.loc["Dice (paper's)", "paired t p"] if len(test) else "p n/a"
        out.append(
            f"**Dice, V-UNet vs X-UNet (400 images)** on {data_label}: {v:.3f} vs {x:.3f} "
            f"(V - X = {v - x:+.3f}, {p_t}, {n} fold x seed pairs); the paper: 0.8603 vs 0.8179 "
            f"(+0.042 on average, V-UNet higher). Here V-UNet is "
            f"{'higher' if v > x else 'lower'}."
        )
        parts = []
        for col, name, better in (("ft_hd95", "HD95", "lower"),
                                  ("ft_extra_components", "extra components per frame", "fewer"),
                                  ("ft_roughness", "edge roughness", "lower")):  # fmt: skip
            vv, xx = _mean(runs, "v_unet_400", col), _mean(runs, "x_all_400", col)
            if np.isnan(vv) or np.isnan(xx):
                continue
            x_better = xx < vv
            parts.append(f"{name} {vv:.2f} (V) vs {xx:.2f} (X): X-UNet's is "
                         f"{better if x_better else 'not ' + better}")  # fmt: skip
        if parts:
            verdict = sum("not" not in s for s in parts)
            out.append(
                "**The visual claim** (X-UNet: smoother edges, fewer outliers, despite a lower "
                f"Dice), measured: {'; '.join(parts)}. It holds on {verdict} of {len(parts)} "
                "measures here."
            )
    if pretrain is not None and len(pretrain) and "trivial_dice_keras" in pretrain:
        pre = pretrain.mean(numeric_only=True)
        learnt = (
            pre["val_foreground"] < 0.9 and pre["val_dice_keras"] > pre["trivial_dice_keras"] + 0.05
        )
        out.append(
            f"**X-UNet's pretraining** scores Dice {pre['val_dice_keras']:.3f} on held-out salient "
            f"objects (the paper's TL column: 0.7189 on XPIE); calling the whole image the object "
            f"scores {pre['trivial_dice_keras']:.3f}, and it predicts "
            f"{100 * pre['val_foreground']:.0f} % of the pixels as object (truth "
            f"{100 * pre['val_truth_foreground']:.0f} %). "
            + ("It has learnt more than that trivial answer of the soft Dice loss."
               if learnt else "It has not got far beyond the soft Dice loss's trivial answer, so "
               "its fine-tuning starts from little: read X-UNet's rows with that in mind.")
        )  # fmt: skip
    if {"x_all_400", "x_bb_400"} <= has:
        a, b = _mean(runs, "x_all_400", d), _mean(runs, "x_bb_400", d)
        text = (
            f"**X-UNet, all layers vs bottleneck frozen**: {a:.3f} vs {b:.3f} ({a - b:+.3f}); "
            "the paper: 0.8179 vs 0.8097 (+0.008, all layers slightly better)."
        )
        if "ft_bottleneck_change" in runs:
            moved = _mean(runs, "x_all_400", "ft_bottleneck_change")
            rest = _mean(runs, "x_all_400", "ft_rest_change")
            text += (
                f" Fine-tuning all layers moved the bottleneck's weights by {100 * moved:.2g} % "
                f"(relative L2) and the other layers' by {100 * rest:.2g} %"
                + (
                    ": the bottleneck hardly trains here, so freezing it changes little."
                    if moved < 0.2 * rest
                    else "."
                )  # fmt: skip
            )
        out.append(text)
    if {"v_unet_400", "v_unet_200"} <= has:
        a, b = _mean(runs, "v_unet_400", d), _mean(runs, "v_unet_200", d)
        out.append(
            f"**V-UNet, 400 (with flips) vs 200 frames**: {a:.3f} vs {b:.3f} ({a - b:+.3f}); the "
            "paper: 0.8603 vs 0.7787 (+0.082). The 200 set has the same frames without their "
            "flips, so the difference is what the flipped copies add on top of real-time "
            "augmentation."
        )
    if {"x_all_400", "x_all_600"} <= has:
        a, b = _mean(runs, "x_all_600", d), _mean(runs, "x_all_400", d)
        out.append(
            f"**X-UNet, 600 vs 400**: {a:.3f} vs {b:.3f} ({a - b:+.3f}); the paper: 0.8329 vs "
            "0.8179 (+0.015). The 600 set adds videos, so its folds score more frames too."
        )
    leak = leak_table(runs)
    for arm, row in leak.iterrows():
        leaky = row["authors' KFold(shuffle=True)"]
        out.append(
            f"**The leak ({arm})**: the authors' KFold(shuffle=True) over the augmented images "
            f"scores {leaky:.3f}, folds that keep a frame, its flip "
            f"and its video together {row['grouped folds (by video, flips together)']:.3f}: "
            f"an inflation of {row['inflation']:+.3f}."
        )
    desp = despeckle_table(runs)
    for arm, row in desp.iterrows():
        out.append(
            f"**Despeckling ({arm})**: Dice {row['Dice, despeckled']:.3f} with the homomorphic "
            f"wavelet filter, {row['Dice, raw']:.3f} without ({row['difference']:+.3f}, "
            f"{row['paired t p']}); the paper despeckled every frame and did not test it."
        )
    return out


# ------------------------------------------------------------------------------ reference runs

REFERENCE_RUNS = PROJECT_ROOT / "book" / "reference_runs" / "v_vs_x_unet_lus_pleura_rib.json"


def pack_masks(probs: np.ndarray) -> dict:
    """Thresholded predictions as a small JSON-able record (bits packed, base64)."""
    import base64

    m = np.asarray(probs) > 0.5
    return {"shape": list(m.shape), "bits": base64.b64encode(np.packbits(m)).decode()}


def unpack_masks(record: dict) -> np.ndarray:
    """The masks of :func:`pack_masks`, uint8 0/1."""
    import base64

    shape = record["shape"]
    bits = np.unpackbits(np.frombuffer(base64.b64decode(record["bits"]), np.uint8))
    return bits[: int(np.prod(shape))].reshape(shape)


def reference_runs(path: Path = REFERENCE_RUNS) -> tuple[str, dict, pd.DataFrame, pd.DataFrame]:
    """The recorded reference runs: ``(caption, study parameters, runs as run_study's rows,
    pretraining rows)``."""
    doc = base.read_reference(path)
    rows = base.reference_rows(
        doc, ("arm", "scheme", "fold", "despeckle", "seed"), lambda r: "arm" in r["params"]
    )
    pre = base.reference_rows(doc, ("seed",), lambda r: "arm" not in r["params"])
    return doc["what"], doc["study_params"], rows, pre


def reference_overlay_panels(ref_p: dict, predictions: dict, despeckle: bool = True):
    """The reference runs' kept test frames of fold 0 with truth and predictions
    (:func:`overlay_panels`), reading only those real frames from ``$LUS_DATA_DIR``.

    Raises:
        FileNotFoundError: the real frames are not at hand.
    """
    arms = [a for a in ARMS if (a, 0, despeckle) in predictions]
    ids = sorted({i for a in arms for i in predictions[a, 0, despeckle][0]})
    data = load_frames(ref_p, only=ids)
    prep = {"data": data}
    return overlay_panels(prep, predictions, arms, 0, despeckle)


def reference_predictions(path: Path = REFERENCE_RUNS) -> dict:
    """``{(arm, fold, despeckle): (ids, masks)}`` of the reference runs that kept predictions."""
    doc = base.read_reference(path)
    out = {}
    for r in doc["runs"]:
        if "predictions" in r:
            q = r["params"]
            out[q["arm"], q["fold"], q["despeckle"]] = (
                r["predictions"]["ids"],
                unpack_masks(r["predictions"]["masks"]).astype(np.float32),
            )
    return out

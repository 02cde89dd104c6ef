"""One training loop for every torch study: Adam, optional bf16 autocast, channels_last on GPU,
data held on the device, on-device augmentation, seeded, with history.

Four tasks share it (``TrainConfig.task``): ``"binary"`` segmentation (one logit map,
BCE-with-logits), ``"multilabel"`` segmentation (one logit map per structure, structures may
overlap, BCE-with-logits), ``"multiclass"`` segmentation (class-index maps, cross-entropy) and
``"classify"`` (one class per image, cross-entropy). Binary and multi-label losses can add smp's
soft Dice loss (``dice_weight``), which thin structures need. The learning rate decays per epoch
(``scheduler="exponential"``) or halves when a watched history column plateaus
(``scheduler="plateau"``, paper 5's ReduceLROnPlateau).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from lus_common.config.registry import lookup
from lus_common.evaluation.metrics import pooled_scores, segmentation_scores

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_NORMS = ("imagenet", "unit", "symmetric")
TASKS = ("binary", "multilabel", "multiclass", "classify")
SCHEDULERS = ("exponential", "plateau")


@dataclass
class TrainConfig:
    """Hyperparameters of :func:`train_model` (names as in every notebook)."""

    epochs: int = 20
    batch_size: int = 10
    lr: float = 1e-4
    lr_decay: float = 1.0  # per-epoch multiplicative decay (1.0: constant)
    rotation_deg: float = 0.0  # random rotation in [-r, r]
    hflip: float = 0.0  # probability of a horizontal flip (True: 0.5)
    vflip: float = 0.0  # probability of a vertical flip (True: 0.5)
    amp: bool = True  # bf16 autocast, on CUDA only
    seed: int = 0
    # "imagenet" (mean/std), "unit" (grey in [0, 1], the HC18 authors') or "symmetric" ([-1, 1],
    # what Keras' MobileNetV2 and so the imagenet-dogs160 weights were trained on)
    input_norm: str = "imagenet"
    # "binary" (masks 0/1, BCE), "multilabel" (N, C, H, W masks, BCE), "multiclass" (class maps,
    # CE) or "classify" (a class per image)
    task: str = "binary"
    dice_weight: float = 0.0  # binary / multilabel: + this x smp's soft Dice loss
    log_dice: bool = False  # the Dice term as -log(Dice) (smp's log_loss): thin structures learn
    scheduler: str = "exponential"  # "exponential" (lr_decay) or "plateau" (ReduceLROnPlateau)
    plateau_on: str = "train_loss"  # history column the plateau watches (a *loss falls, else rises)
    plateau_factor: float = 0.5
    plateau_patience: int = 10  # torch's default; paper 5 gives none

    def __post_init__(self):
        for name in ("hflip", "vflip"):
            value = getattr(self, name)
            setattr(
                self, name, (0.5 if value else 0.0) if isinstance(value, bool) else float(value)
            )
        lookup(INPUT_NORMS, self.input_norm, "input_norm", error=ValueError)
        lookup(TASKS, self.task, "task", error=ValueError)
        lookup(SCHEDULERS, self.scheduler, "scheduler", error=ValueError)

    def as_dict(self) -> dict:
        return asdict(self)


def to_input(
    images: np.ndarray, device: torch.device | str = "cpu", norm: str = "imagenet"
) -> torch.Tensor:
    """Grey images (N, H, W) in [0, 1] to a 3-channel batch (N, 3, H, W).

    The grey channel is repeated and, with ``norm="imagenet"``, normalised with ImageNet statistics,
    as smp's pretrained encoders expect; ``norm="unit"`` keeps [0, 1] (the HC18 authors'
    ``A.Normalize(mean=0, std=1)``); ``norm="symmetric"`` maps to [-1, 1], as
    ``keras.applications.mobilenet_v2.preprocess_input`` does (``x / 127.5 - 1``). The scratch U-Net
    gets the same input so models compare fairly.
    """
    x = torch.as_tensor(np.asarray(images, dtype=np.float32), device=device)[:, None].expand(
        -1, 3, -1, -1
    )
    if norm == "unit":
        return x.contiguous()
    if norm == "symmetric":
        return (x * 2 - 1).contiguous()
    lookup(INPUT_NORMS, norm, "input_norm", error=ValueError)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


def to_target(
    masks: np.ndarray, device: torch.device | str = "cpu", task: str = "binary"
) -> torch.Tensor:
    """Targets of a task: 0/1 masks (N, H, W) to floats (N, 1, H, W) (``"binary"``); 0/1 masks
    (N, C, H, W) to floats (``"multilabel"``); class maps (N, H, W) or one class per image (N,) to
    int64 (``"multiclass"``, ``"classify"``)."""
    if task == "binary":
        return torch.as_tensor(np.asarray(masks, dtype=np.float32), device=device)[:, None]
    if task == "multilabel":
        masks = np.asarray(masks, dtype=np.float32)
        if masks.ndim != 4:
            raise ValueError(f"multilabel targets are (N, C, H, W) masks, got shape {masks.shape}")
        return torch.as_tensor(masks, device=device)
    lookup(TASKS, task, "task", error=ValueError)
    return torch.as_tensor(np.asarray(masks, dtype=np.int64), device=device)


def augment(x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, gen: torch.Generator):
    """Random rotation and flips of a batch, on its device, image and mask alike.

    Rotation resamples the image bilinearly and the mask by nearest neighbour; both use one
    affine grid per batch (no Python loop over images). ``y`` is a mask batch (N, 1, H, W), a
    class-map batch (N, H, W; outside pixels become class 0) or one class per image (N,; left as
    it is).
    """
    n = x.shape[0]
    maps = y.ndim == 3
    if maps:
        y = y[:, None].float()
    spatial = y.ndim == 4
    if cfg.hflip:
        flip = torch.rand(n, device=x.device, generator=gen) < cfg.hflip
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        if spatial:
            y = torch.where(flip.view(-1, 1, 1, 1), y.flip(-1), y)
    if cfg.vflip:
        flip = torch.rand(n, device=x.device, generator=gen) < cfg.vflip
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-2), x)
        if spatial:
            y = torch.where(flip.view(-1, 1, 1, 1), y.flip(-2), y)
    if cfg.rotation_deg > 0:
        angle = (torch.rand(n, device=x.device, generator=gen) * 2 - 1) * math.radians(
            cfg.rotation_deg
        )
        cos, sin = torch.cos(angle), torch.sin(angle)
        zero = torch.zeros_like(cos)
        theta = torch.stack(
            [torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1
        )
        grid = F.affine_grid(theta, list(x.shape), align_corners=False).to(x.dtype)
        # Pixels rotated in from outside take the value of black in normalised units.
        fill = x.amin(dim=(2, 3), keepdim=True)
        x = (
            F.grid_sample(
                x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False
            )
            + fill
        )
        if spatial:
            y = F.grid_sample(
                y, grid.to(y.dtype), mode="nearest", padding_mode="zeros", align_corners=False
            )
    return x, (y[:, 0].round().long() if maps else y)


def _autocast(device: torch.device, amp: bool):
    enabled = amp and device.type == "cuda"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def _place(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move data to the device when it fits comfortably, else keep it in (pinned) host memory."""
    if device.type != "cuda":
        return t
    free, _ = torch.cuda.mem_get_info(device)
    if t.element_size() * t.nelement() < 0.3 * free:
        return t.to(device)
    return t.pin_memory()


# What :func:`predict` returns, from a model's logits.
OUTPUTS = {
    "foreground": lambda y: torch.sigmoid(y)[:, 0],  # binary: foreground probability (N, H, W)
    "multilabel": torch.sigmoid,  # multi-label: each structure's probability (N, C, H, W)
    "classes": lambda y: y.argmax(1).to(torch.uint8),  # multi-class: class-index maps (N, H, W)
    "proba": lambda y: torch.softmax(y, 1),  # classifier: class probabilities (N, classes)
    # classifier: log-probabilities, which do not round to ties where probabilities reach 0 or 1
    "log_proba": lambda y: torch.log_softmax(y, 1),
}


@torch.no_grad()
def predict(
    model: nn.Module,
    images: np.ndarray,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    amp: bool = True,
    input_norm: str = "imagenet",
    output: str = "foreground",
) -> np.ndarray:
    """A model's predictions for grey images, batch by batch, in eval mode, as one array.

    ``output`` (:data:`OUTPUTS`): ``"foreground"``, the foreground probabilities (N, H, W) of a
    binary model; ``"multilabel"``, every structure's probabilities (N, C, H, W); ``"classes"``,
    the class-index maps (N, H, W, uint8) of a multi-class
    segmentation model (the arg-max of its logits); ``"proba"``, the class probabilities
    (N, classes) of a classifier (softmax over dimension 1); ``"log_proba"``, their logarithms
    (log-softmax over dimension 1: no ties where probabilities round to 0 or 1; with ``amp``
    on CUDA the logits are bf16, about 8 bits, so pass ``amp=False`` to rank sure outputs).
    """
    transform = lookup(OUTPUTS, output, "output", error=ValueError)
    device = torch.device(device)
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = to_input(images[start : start + batch_size], device, input_norm)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device, amp):
            out.append(transform(model(x).float()).cpu())
    return torch.cat(out).numpy()


def recompute_batch_norm(
    model: nn.Module,
    images: np.ndarray,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    input_norm: str = "imagenet",
) -> None:
    """Set every batch norm's running statistics to their average over ``images`` with the
    model's current weights ("precise BN", :func:`torch.optim.swa_utils.update_bn`).

    Training keeps them as a moving average (momentum 0.1) of batches seen with older weights:
    after a few dozen steps they still lag, and a model scored in eval mode then answers with
    stale statistics (with tiny inputs, such as a frame less its blur, nearly the same answer
    for every image). Recomputed, what it scores is what its weights learnt.
    """
    device = torch.device(device)
    batches = [to_input(images[s : s + batch_size], device, input_norm)
               for s in range(0, len(images), batch_size)]  # fmt: skip
    with torch.no_grad():
        torch.optim.swa_utils.update_bn(batches, model, device)


def train_model(
    model: nn.Module,
    train_images: np.ndarray,
    train_masks: np.ndarray,
    cfg: TrainConfig,
    device: torch.device | str = "cpu",
    val_images: np.ndarray | None = None,
    val_masks: np.ndarray | None = None,
    frozen: list[nn.Module] = (),
    progress: bool = False,
    evaluate: Callable[[nn.Module, int], dict] | None = None,
) -> pd.DataFrame:
    """Train a model in place for ``cfg.task``.

    Args:
        model: network returning logits: (N, 1, H, W) for ``"binary"``, (N, C, H, W) for
            ``"multiclass"``, (N, C) for ``"classify"``; its ``requires_grad`` flags are respected.
        train_images: (N, H, W) floats in [0, 1].
        train_masks: the targets: (N, H, W) 0/1 masks, (N, H, W) class maps, or (N,) classes.
        cfg: hyperparameters.
        device: where to train.
        val_images: optional images evaluated (loss and Dice) after every epoch (binary only;
            the other tasks use ``evaluate``).
        val_masks: their masks.
        frozen: modules kept in eval mode while training (frozen batch-norm statistics).
        progress: show a tqdm bar over epochs.
        evaluate: ``(model, epoch) -> dict`` called after every epoch; its values join the
            epoch's history row (and may be what ``cfg.plateau_on`` watches).

    Returns:
        History with one row per epoch: ``epoch, train_loss, lr, seconds`` and, with ``val_images``,
        ``val_loss``, ``val_dice`` (per image) and the HC18 authors' batch-pooled ``val_pa_pooled``,
        ``val_dice_pooled``, ``val_iou_pooled``
        (:func:`lus_common.evaluation.metrics.pooled_scores`), and ``evaluate``'s columns.
    """
    if val_images is not None and cfg.task != "binary":
        raise ValueError(
            f"val_images scores binary masks; for task '{cfg.task}' pass evaluate= instead."
        )
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("The model has no trainable parameter: check the freezing strategy.")
    optimizer = make_optimizer(params, cfg.lr, device)
    if cfg.scheduler == "plateau":
        mode = "min" if cfg.plateau_on.endswith("loss") else "max"
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode, factor=cfg.plateau_factor, patience=cfg.plateau_patience
        )
    else:
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.lr_decay)
    loss_fn = _loss(cfg)
    x_all = _place(to_input(train_images, norm=cfg.input_norm), device)
    y_all = _place(to_target(train_masks, task=cfg.task), device)
    rows = []
    for epoch in tqdm(range(1, cfg.epochs + 1), desc="epochs", disable=not progress, leave=False):
        start = time.perf_counter()
        model.train()
        for module in frozen:
            module.eval()
        loss = _train_epoch(model, x_all, y_all, cfg, optimizer, loss_fn, device, gen)
        row = {"epoch": epoch, "train_loss": loss, "lr": optimizer.param_groups[0]["lr"]}
        if cfg.scheduler == "exponential":
            scheduler.step()
        if val_images is not None:
            row.update(
                evaluate_loss_dice(
                    model, val_images, val_masks, cfg.batch_size, device, cfg.amp, cfg.input_norm
                )
            )
        if evaluate is not None:
            row.update(evaluate(model, epoch))
        if cfg.scheduler == "plateau":
            scheduler.step(lookup(row, cfg.plateau_on, "history column (plateau_on)"))
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
    return pd.DataFrame(rows)


def make_optimizer(params, lr: float, device: torch.device) -> torch.optim.Optimizer:
    """Adam, as every study trains with it. On CUDA its fused kernel (every parameter's update in
    one launch, no host sync), and cuDNN's autotuner switched on (a study trains on one image
    size, so the search pays once); on a CPU the default implementation, whose results the
    stored CPU runs hold."""
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True
        return torch.optim.Adam(params, lr=lr, fused=True)
    return torch.optim.Adam(params, lr=lr)


def _loss(cfg: TrainConfig) -> Callable:
    """The task's loss: BCE-with-logits (+ ``dice_weight`` x smp's soft Dice) for binary and
    multi-label masks, cross-entropy for class maps and classes. With ``log_dice`` the Dice term
    is ``-log(Dice)``: its gradient stays large while a thin structure's Dice is near 0, where
    ``1 - Dice`` and BCE leave a 1 %-of-pixels line unlearnt for hundreds of steps."""
    if cfg.task in ("multiclass", "classify"):
        return nn.CrossEntropyLoss()
    bce = nn.BCEWithLogitsLoss()
    if not cfg.dice_weight:
        return bce
    import segmentation_models_pytorch as smp

    dice = smp.losses.DiceLoss("multilabel", from_logits=True, log_loss=cfg.log_dice)
    return lambda logits, y: bce(logits, y) + cfg.dice_weight * dice(logits, y)


def _train_epoch(model, x_all, y_all, cfg, optimizer, loss_fn, device, gen) -> float:
    """One pass over the training images in a random order: augmentation, mixed precision, one
    optimiser step per batch. Returns the mean training loss."""
    n = len(x_all)
    order = torch.randperm(n, device=device, generator=gen)
    total = torch.zeros((), device=device)
    seen = 0
    for i in range(0, n, cfg.batch_size):
        idx = order[i : i + cfg.batch_size]
        if len(idx) < 2:  # batch norm cannot train on a single image; it is seen next epoch
            continue
        x = x_all[idx.to(x_all.device)].to(device, non_blocking=True)
        y = y_all[idx.to(y_all.device)].to(device, non_blocking=True)
        x, y = augment(x, y, cfg, gen)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device, cfg.amp):
            loss = loss_fn(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach() * len(idx)
        seen += len(idx)
    return total.item() / seen


@torch.no_grad()
def evaluate_loss_dice(
    model, images, masks, batch_size, device, amp=True, input_norm="imagenet"
) -> dict:
    """BCE loss, mean per-image Dice and the authors' batch-pooled PA/Dice/IoU (threshold 0.5) on a
    held-out set, in eval mode."""
    probs = predict(model, images, batch_size, device, amp, input_norm)
    p = torch.as_tensor(probs).clamp(1e-6, 1 - 1e-6)
    t = torch.as_tensor(np.asarray(masks, dtype=np.float32))
    loss = F.binary_cross_entropy(p, t).item()
    pooled = pooled_scores(probs, masks, batch_size)
    return {
        "val_loss": loss,
        "val_dice": float(segmentation_scores(probs, masks)["dice"].mean()),
        **{f"val_{k if k != 'pixel_accuracy' else 'pa'}_pooled": v for k, v in pooled.items()},
    }

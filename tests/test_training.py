import numpy as np
import pytest
import torch

from lus_common.config.device import resolve_device
from lus_common.models.torch_smp import create_model
from lus_common.phantoms import fetal_head_phantom
from lus_common.studies import s4_hc18_strategies as hc18_study
from lus_common.training.torch_loop import (
    TrainConfig,
    augment,
    predict,
    to_input,
    train_model,
)


def test_augmentation_moves_image_and_mask_together():
    x = torch.zeros(6, 3, 32, 32)
    x[:, :, 4:12, 20:28] = 5.0
    y = (x[:, :1] > 0).float()
    gen = torch.Generator().manual_seed(0)
    xa, ya = augment(x, y, TrainConfig(rotation_deg=25, hflip=True, vflip=True), gen)
    assert set(ya.unique().tolist()) <= {0.0, 1.0}  # masks stay binary
    # where the mask is, the image is bright: the two were transformed identically
    assert (xa[:, 0][ya[:, 0] > 0] > 2.5).float().mean() > 0.9
    flips = TrainConfig(hflip=True, vflip=True)
    xf, yf = augment(x, y, flips, torch.Generator().manual_seed(1))
    assert torch.equal(yf.sum(dim=(1, 2, 3)), y.sum(dim=(1, 2, 3)))  # flips keep the area exactly


def test_training_learns_and_is_seeded():
    d = fetal_head_phantom(16, 64, 0)
    histories = []
    for _ in range(2):
        torch.manual_seed(0)
        model, _ = create_model("unet_mobilenet_v2")
        histories.append(
            train_model(
                model, d.images, d.masks, TrainConfig(epochs=4, batch_size=4, lr=1e-3, seed=0)
            )
        )
    h = histories[0]
    assert list(h.columns[:3]) == ["epoch", "train_loss", "lr"]
    assert h.train_loss.iloc[-1] < h.train_loss.iloc[0]
    np.testing.assert_allclose(histories[0].train_loss, histories[1].train_loss, rtol=1e-5)
    probs = predict(model, d.images[:3])
    assert probs.shape == (3, 64, 64) and 0 <= probs.min() and probs.max() <= 1


def test_model_with_everything_frozen_is_refused():
    model, _ = create_model("unet_mobilenet_v2")
    for p in model.parameters():
        p.requires_grad_(False)
    d = fetal_head_phantom(4, 32, 0)
    with pytest.raises(ValueError, match="no trainable parameter"):
        train_model(model, d.images, d.masks, TrainConfig(epochs=1))


def test_input_is_three_channel_imagenet_normalised():
    x = to_input(np.full((2, 8, 8), 0.485, np.float32))
    assert x.shape == (2, 3, 8, 8) and abs(x[0, 0].mean().item()) < 1e-6


def test_no_gpu_gives_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="no CUDA GPU.*device='auto'"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="Unknown device"):
        resolve_device("tpu")


def test_study_params_validate():
    with pytest.raises(ValueError, match="multiple of 32"):
        hc18_study.study_params("smoke", image_size=100)
    with pytest.raises(ValueError, match="Unknown profile"):
        hc18_study.study_params("fast")
    with pytest.raises(ValueError, match="Unknown parameter"):
        hc18_study.study_params("smoke", epoch=3)
    p = hc18_study.study_params("paper")
    assert (p["image_size"], p["batch_size"], p["lr"], p["epochs"], len(p["seeds"])) == (
        512,
        10,
        1e-4,
        20,
        4,
    )
    # The authors' augmentation and input scaling; the eight strategies, the random-encoder
    # control and the EfficientNet-Lite0 pair.
    assert (p["rotation_deg"], p["hflip"], p["vflip"], p["input_norm"]) == (25, 0.5, 0.1, "unit")
    assert len(p["strategies"]) == 11 and p["strategies"][8:] == [
        "decoder_random",
        "effnet_decoder",
        "effnet_decoder_random",
    ]
    assert (p["warmup_epochs"], p["report"]) == (5, "after_warmup")
    with pytest.raises(ValueError, match="Unknown report value"):
        hc18_study.study_params("smoke", report="best")
    with pytest.raises(ValueError, match="Unknown input_norm"):
        hc18_study.study_params("smoke", input_norm="zscore")


def test_unit_input_norm_keeps_the_grey_values():
    x = to_input(np.full((2, 8, 8), 0.25, np.float32), norm="unit")  # the authors' [0, 1] input
    assert x.shape == (2, 3, 8, 8) and torch.allclose(x, torch.full_like(x, 0.25))
    with pytest.raises(ValueError, match="Unknown input_norm"):
        to_input(np.zeros((1, 8, 8), np.float32), norm="zscore")


def test_symmetric_input_norm_is_keras_mobilenet_v2_preprocessing():
    """Keras' ``mobilenet_v2.preprocess_input`` maps 8-bit grey 0, 51, 255 to -1, -0.6, 1."""
    grey = np.array([[[0, 51, 255]]], np.float32)
    x = to_input(grey / 255, norm="symmetric")
    expected = torch.tensor([-1.0, -0.6, 1.0]).view(1, 1, 1, 3).expand(1, 3, 1, 3)
    assert torch.allclose(x, expected, atol=1e-6)


def test_flip_probabilities_are_the_configured_ones():
    n = 4000
    x = torch.zeros(n, 3, 4, 4)
    x[:, :, 0, :] = 1.0  # a bright top row: it moves to the bottom when flipped vertically
    y = x[:, :1].clone()
    _, ya = augment(x, y, TrainConfig(vflip=0.1), torch.Generator().manual_seed(0))
    share = (ya[:, 0, -1, :].sum(dim=1) > 0).float().mean().item()
    assert abs(share - 0.1) < 0.02  # the authors' vertical flip, p = 0.1
    assert TrainConfig(hflip=True).hflip == 0.5 and TrainConfig(hflip=False).hflip == 0.0


def test_multilabel_task_learns_overlapping_structures_with_log_dice():
    """Two structures that overlap (a thin line inside a large region) from one network, one
    sigmoid map each; the log-Dice term makes the thin one learnable within a few epochs."""
    from lus_common.models.torch_unet import UNet
    from lus_common.training.torch_loop import _loss, to_target

    rng = np.random.default_rng(0)
    n, s = 24, 32
    images = rng.uniform(0, 0.3, (n, s, s)).astype(np.float32)
    masks = np.zeros((n, 2, s, s), np.uint8)
    for k in range(n):
        r = rng.integers(6, 24)
        images[k, r : r + 2] += 0.6  # a bright line ...
        masks[k, 0, r : r + 2] = 1
        masks[k, 1, r:] = 1  # ... and everything beneath it
    torch.manual_seed(0)
    model = UNet(3, 2, (8, 16, 32, 64))
    cfg = TrainConfig(epochs=15, batch_size=8, lr=3e-3, task="multilabel", dice_weight=1.0,
                      log_dice=True, input_norm="unit")  # fmt: skip
    h = train_model(model, images, masks, cfg)
    assert h.train_loss.iloc[-1] < 0.5 * h.train_loss.iloc[0]
    probs = predict(model, images, output="multilabel", input_norm="unit")
    assert probs.shape == (n, 2, s, s)
    pred = probs > 0.5
    for c in (0, 1):
        inter = (pred[:, c] & (masks[:, c] > 0)).sum()
        assert 2 * inter / (pred[:, c].sum() + masks[:, c].sum()) > 0.6, c
    with pytest.raises(ValueError, match="N, C, H, W"):
        to_target(masks[:, 0], task="multilabel")
    # the log-Dice term is -log(Dice): large while a structure is missed, 0 when it is found
    loss = _loss(cfg)
    y = torch.as_tensor(masks[:4].astype(np.float32))
    assert loss(torch.where(y > 0, 20.0, -20.0), y).item() < 0.01
    assert loss(torch.full_like(y, -20.0), y).item() > 5


def test_log_proba_keeps_the_order_that_saturated_probabilities_lose():
    class Sure(torch.nn.Module):  # logits (0, 20 + 10 x the image's mean): a very sure classifier
        def forward(self, x):
            m = x.mean((1, 2, 3))
            return torch.stack([torch.zeros_like(m), 20 + 10 * m], 1)

    images = np.stack([np.full((8, 8), v, np.float32) for v in (0.0, 0.5, 1.0)])
    proba = predict(Sure(), images, input_norm="unit", output="proba")
    assert (proba[:, 1] == 1.0).all()  # float32 rounds all three to 1: ties
    lp = predict(Sure(), images, input_norm="unit", output="log_proba")
    margin = lp[:, 1] - lp[:, 0]
    assert margin == pytest.approx([20.0, 25.0, 30.0], abs=1e-3)


def test_recompute_batch_norm_sets_the_statistics_of_the_images():
    """A 1x1 convolution summing the three (repeated) grey channels, then batch norm: recomputed
    on images of 0.25 and 0.75 halves, its running mean is 3 x 0.5 and its running variance
    the batches' mean unbiased variance of 3 x the pixels (0.75^2 x 192 / 191 for two batches of
    3 images of 64 pixels), whatever the moving average held before; the model's mode and the
    norm's momentum are kept."""
    from torch import nn

    from lus_common.training.torch_loop import recompute_batch_norm

    conv = nn.Conv2d(3, 1, 1, bias=False)
    nn.init.ones_(conv.weight)
    model = nn.Sequential(conv, nn.BatchNorm2d(1))
    bn = model[1]
    bn.running_mean.fill_(7.0)  # stale
    images = np.full((6, 8, 8), 0.25, np.float32)
    images[:, :, 4:] = 0.75
    model.eval()
    recompute_batch_norm(model, images, batch_size=3, input_norm="unit")
    assert bn.running_mean.item() == pytest.approx(1.5, rel=1e-6)
    assert bn.running_var.item() == pytest.approx(0.75**2 * 192 / 191, rel=1e-5)
    assert bn.momentum == 0.1 and not model.training


def test_optimizer_is_fused_adam_with_the_autotuner_on_cuda_only(monkeypatch):
    """On a CPU the default Adam (the stored CPU runs' numbers); asked for CUDA, the fused kernel
    and cuDNN's autotuner. Torch's fused Adam also runs on CPU tensors, so the CUDA branch's
    optimizer is built here and steps as the default one does (the same update, to float
    rounding)."""
    import torch

    from lus_common.training.torch_loop import make_optimizer

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    w = [torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))]
    cpu = make_optimizer(w, 0.1, torch.device("cpu"))
    assert not cpu.defaults["fused"] and torch.backends.cudnn.benchmark is False
    v = [torch.nn.Parameter(w[0].detach().clone())]
    fused = make_optimizer(v, 0.1, torch.device("cuda"))
    assert fused.defaults["fused"] is True and torch.backends.cudnn.benchmark is True
    for p, opt in ((w[0], cpu), (v[0], fused)):
        p.grad = torch.tensor([0.5, -1.0, 2.0])
        opt.step()
    # Adam's first step moves every weight by lr against its gradient's sign
    torch.testing.assert_close(w[0].detach(), torch.tensor([0.9, -1.9, 2.9]))
    torch.testing.assert_close(v[0].detach(), w[0].detach())

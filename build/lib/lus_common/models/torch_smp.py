"""The smp U-Nets: one factory (:func:`create_model`) knows every torch architecture, and resolves
its encoder's weights through :mod:`lus_common.models.weights` (never a silent random init).
"""

from __future__ import annotations

import torch
from torch import nn

from lus_common.config.paths import weights_dirs_text, weights_write_dir
from lus_common.config.registry import lookup
from lus_common.models.torch_unet import UNet
from lus_common.models.weights import (
    WeightsInfo,
    _hub_weights,
    _load_state_dict,
    first_available,
    hub_reachable,
    local_weights_path,
    smp_pretrained_settings,
    weights_key,
)

MODELS: dict[str, dict] = {
    "unet": {"description": "plain U-Net, features 64-128-256-512, from scratch (about 31M)"},
    "unet_mobilenet_v2": {
        "description": "smp Unet with a MobileNetV2 encoder",
        "encoder": "mobilenet_v2",
    },
    "unet_resnet50": {"description": "smp Unet with a ResNet50 encoder", "encoder": "resnet50"},
    "unet_vgg16": {"description": "smp Unet with a VGG16 encoder", "encoder": "vgg16"},
    "unet_efficientnet_lite0": {
        "description": "smp Unet with an EfficientNet-Lite0 encoder (timm's TF port)",
        "encoder": "timm-tf_efficientnet_lite0",
    },
}


def smp_weight_names(encoder_name: str) -> list[str]:
    """The weights smp itself offers for an encoder (downloaded from the Hugging Face hub)."""
    return list(smp_pretrained_settings(encoder_name))


def imported_weight_names(encoder_name: str) -> list[str]:
    """The weights ``lus weights import`` converts for an encoder
    (:data:`lus_common.models.wheels.SOURCES`)."""
    from lus_common.models.wheels import SOURCES

    return [s.name for s in SOURCES.values() if s.encoder == encoder_name]


# Imported weights trained in Keras, whose smp encoder must compute as Keras did.
KERAS_TRAINED = {("mobilenet_v2", "imagenet-dogs160")}


def _tf_same_pad(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: TensorFlow's "same" padding of a 3x3, stride-2 convolution (for an even
    side: nothing before, one pixel after; torch pads one on each side)."""
    x = args[0]
    pads = []
    for n in (x.shape[-1], x.shape[-2]):  # F.pad takes the last dimension first
        total = max((-(-n // 2) - 1) * 2 + 3 - n, 0)
        pads += [total // 2, total - total // 2]
    return (torch.nn.functional.pad(x, pads),)


def keras_mobilenet_v2(encoder: nn.Module) -> nn.Module:
    """Make smp's ``mobilenet_v2`` encoder compute as Keras' MobileNetV2, whose weights it carries.

    Keras pads its stride-2 3x3 convolutions asymmetrically (TensorFlow's "same" padding) and uses
    batch-norm eps 1e-3; torchvision pads 1 on each side and uses 1e-5. Both are changed in place
    (padding by a forward pre-hook), so the parameters and their names, and with them the paper's
    trainable-parameter counts, stay those of smp's encoder.
    """
    for module in encoder.modules():
        if (
            isinstance(module, nn.Conv2d)
            and module.stride == (2, 2)
            and module.kernel_size == (3, 3)
        ):
            module.padding = (0, 0)
            module.register_forward_pre_hook(_tf_same_pad)
        elif isinstance(module, nn.BatchNorm2d):
            module.eps = 1e-3
    return encoder


def encoder_weights_key(encoder_name: str, weights: str | None) -> str:
    """:func:`weights_key` of an smp encoder's weights, found as :func:`resolve_encoder_weights`
    finds them but without loading them (for run keys)."""
    if weights is None:
        return "none/random"
    path = local_weights_path(encoder_name, weights)
    if path is not None:
        return weights_key(weights, path)
    if weights not in smp_weight_names(encoder_name):  # imported weights: the local file or nothing
        return "none/random"
    try:
        from huggingface_hub import hf_hub_download

        settings = smp_pretrained_settings(encoder_name)[weights]
        cached = hf_hub_download(
            repo_id=settings["repo_id"],
            filename="model.safetensors",
            revision=settings["revision"],
            local_files_only=True,
        )
        return weights_key(weights, cached)
    except Exception:
        pass
    return weights_key(weights, how="hub-download") if hub_reachable() else "none/random"


def choose_weights(encoder_name: str, preference) -> str | None:
    """The weights a run will ask for: the first of ``preference`` that is available.

    Args:
        encoder_name: smp encoder name.
        preference: one weights name, or a list in order of preference (e.g. ``["imagenet",
            "imagenet-dogs160"]``: ImageNet itself when a user has the file or a network, else the
            imported natural-image weights); ``None``, ``"none"`` or ``"random"`` for random
            weights.

    Returns:
        The first name whose weights can be loaded; when none can, the first name (the run then
        records ``none/random`` with the reason); ``None`` for random weights.
    """
    return first_available(
        preference, lambda name: encoder_weights_key(encoder_name, name) != "none/random"
    )


def resolve_encoder_weights(
    encoder: nn.Module, encoder_name: str, weights: str | None
) -> WeightsInfo:
    """Load pretrained weights into an smp encoder from the first source that has them.

    Args:
        encoder: the (randomly initialised) smp encoder module.
        encoder_name: smp encoder name, e.g. ``"mobilenet_v2"``.
        weights: smp weight name such as ``"imagenet"``, or None for random.

    Returns:
        What was really loaded.
    """

    if weights is None:
        return WeightsInfo(None, "none/random", "no pretrained weights requested")
    imported = imported_weight_names(encoder_name)
    available = smp_weight_names(encoder_name) + [
        w for w in imported if w not in smp_weight_names(encoder_name)
    ]
    if weights not in available:
        raise KeyError(
            f"Unknown weights '{weights}' for encoder '{encoder_name}'. Available: {available}"
        )
    path = local_weights_path(encoder_name, weights)
    if path is not None:
        try:
            encoder.load_state_dict(_load_state_dict(path))
        except Exception as exc:  # a damaged file, or weights of another encoder
            raise ValueError(
                f"{path} could not be loaded as {encoder_name} '{weights}' weights "
                f"({type(exc).__name__}: {exc}). Replace it with a good copy, or remove it "
                "to use the other sources (or random weights, recorded as such)."
            ) from exc
        if (encoder_name, weights) in KERAS_TRAINED:
            keras_mobilenet_v2(encoder)
            return WeightsInfo(
                weights, f"{weights} (local file {path.name}, Keras padding and BN eps)"
            )
        return WeightsInfo(weights, f"{weights} (local file {path.name})")
    if weights not in smp_weight_names(encoder_name):
        return WeightsInfo(
            weights,
            "none/random",
            f"{encoder_name}.{weights}.safetensors is not in {weights_dirs_text()}: "
            f"run `lus weights import {weights}` (it converts them from a registry wheel)",
        )
    state, how = _hub_weights(encoder_name, weights)
    if state is not None:
        encoder.load_state_dict(state)
        return WeightsInfo(weights, f"{weights} ({how})")
    hint = f"put {encoder_name}.{weights}.safetensors into {weights_write_dir()} to use them"
    return WeightsInfo(weights, "none/random", f"{how}; {hint}")


def create_model(
    name: str, encoder_weights: str | None = None, in_channels: int = 3, classes: int = 1
):
    """Build a registered model and resolve its encoder weights.

    Args:
        name: a key of :data:`MODELS`.
        encoder_weights: e.g. ``"imagenet"``; ignored (must be None) for ``"unet"``.
        in_channels: input channels.
        classes: output channels (1 for binary segmentation with logits).

    Returns:
        ``(model, WeightsInfo)``.

    Raises:
        KeyError: unknown model name (the message lists the known ones).
    """
    lookup(MODELS, name, "model")
    if name == "unet":
        if encoder_weights is not None:
            raise ValueError(
                "The plain U-Net baseline has no pretrained encoder: use encoder_weights=None."
            )
        return UNet(in_channels, classes), WeightsInfo(None, "none (from scratch)")
    import segmentation_models_pytorch as smp

    encoder = MODELS[name]["encoder"]
    model = smp.Unet(encoder, encoder_weights=None, in_channels=3, classes=classes)
    info = resolve_encoder_weights(model.encoder, encoder, encoder_weights)
    if in_channels != 3:
        model.encoder.set_in_channels(in_channels, pretrained=info.used != "none/random")
    return model, info


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of (trainable) parameters of a module."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)

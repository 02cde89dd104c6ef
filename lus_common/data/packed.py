"""Packed data sets: a loader's output at one size, in one small file, for a machine without the
dataset (the GPU machine, which is reached with at most 64 MiB of files; ``lus gpu-pack``).

A pack is a zip of the set's grey images as lossless WebP (8-bit images; float images that are not
8-bit are kept as float32), its masks and layers as bit-packed arrays, and a ``set.json`` with the
ids, groups, pixel sizes, circumferences, ``info``, ``meta`` and the set's fingerprint. Loading it
checks that fingerprint, so a run from a pack is keyed, and reused, exactly as one from the files.

With ``LUS_PACKED_DIR`` set, the real-data loaders (:func:`lus_common.data.hc18.load_hc18`,
:func:`lus_common.data.shenzhen.load_shenzhen`) read the pack of their arguments from that folder
instead of the dataset's files.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from lus_common.data.sets import SegmentationSet

ENV = "LUS_PACKED_DIR"
SUFFIX = ".lus.zip"


def pack_name(dataset: str, **arguments) -> str:
    """The file name of a dataset's pack for the loader arguments given, e.g.
    ``hc18__image_size-512__limit-None.lus.zip``."""
    args = "__".join(f"{k}-{arguments[k]}" for k in sorted(arguments))
    return f"{dataset}__{args}{SUFFIX}" if args else f"{dataset}{SUFFIX}"


def _is_8bit(images: np.ndarray) -> bool:
    codes = np.rint(images * 255)
    return bool(
        images.dtype == np.float32
        and codes.min() >= 0
        and codes.max() <= 255
        and np.array_equal((codes.astype(np.uint8) / np.float32(255)).astype(np.float32), images)
    )


def _bits(arr: np.ndarray) -> dict:
    return {"shape": list(arr.shape), "dtype": str(arr.dtype), "max": int(arr.max(initial=0))}


def save_set(data: SegmentationSet, path: Path) -> Path:
    """Write ``data`` as a pack (written to a temporary name, then renamed).

    Returns:
        The pack's path.
    """
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    eight_bit = _is_8bit(data.images)
    maps = {"masks": data.masks, **{f"layer_{k}": v for k, v in data.layers.items()}}
    doc = {
        "format": 1,
        "n": len(data),
        "shape": list(data.images.shape[1:]),
        "images": "webp" if eight_bit else "float32",
        "ids": data.ids,
        "groups": data.groups,
        "spacing_mm": np.asarray(data.spacing_mm, np.float64).tolist(),
        "hc_mm": np.asarray(data.hc_mm, np.float64).tolist(),
        "source": data.source,
        "synthetic": data.synthetic,
        "info": data.info,
        "maps": {k: _bits(v) for k, v in maps.items()},
        "meta": None if data.meta is None else data.meta.to_json(orient="split"),
        "fingerprint": data.fingerprint(),
    }
    tmp = path.with_name(path.name + ".part")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
        z.writestr("set.json", json.dumps(doc, default=str))
        if eight_bit:
            for i, image in enumerate(np.rint(data.images * 255).astype(np.uint8)):
                buf = io.BytesIO()
                Image.fromarray(image).save(buf, "WEBP", lossless=True, quality=50, method=4)
                z.writestr(f"images/{i:05d}.webp", buf.getvalue())
        else:
            z.writestr("images.npy", _npy(data.images.astype(np.float32)), zipfile.ZIP_DEFLATED)
        for name, arr in maps.items():
            if arr.max(initial=0) <= 1:  # binary: one bit a pixel
                z.writestr(f"{name}.bits", np.packbits(arr.astype(np.uint8)).tobytes(),
                           zipfile.ZIP_DEFLATED)  # fmt: skip
            else:
                z.writestr(f"{name}.npy", _npy(arr), zipfile.ZIP_DEFLATED)
    os.replace(tmp, path)
    return path


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def load_set(path: Path) -> SegmentationSet:
    """Read a pack written by :func:`save_set`.

    Raises:
        FileNotFoundError: there is no such file.
        ValueError: the file is not a pack, or its data do not match the fingerprint it records
            (a damaged or edited pack).
    """
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: make the pack with `lus gpu-pack`.")
    try:
        z = zipfile.ZipFile(path)
    except zipfile.BadZipFile as err:
        raise ValueError(f"{path} is not a data pack (not a zip file): {err}") from None
    with z:
        if "set.json" not in z.namelist():
            raise ValueError(f"{path} is not a data pack: it has no set.json.")
        doc = json.loads(z.read("set.json"))
        n, shape = doc["n"], tuple(doc["shape"])
        if doc["images"] == "webp":
            images = np.stack(
                [
                    np.asarray(Image.open(io.BytesIO(z.read(f"images/{i:05d}.webp"))).convert("L"))
                    for i in range(n)
                ]  # fmt: skip
            ).astype(np.float32) / np.float32(255)
        else:
            images = np.load(io.BytesIO(z.read("images.npy")), allow_pickle=False)
        maps = {}
        for name, spec in doc["maps"].items():
            full = (n, *shape)
            if f"{name}.bits" in z.namelist():
                bits = np.frombuffer(z.read(f"{name}.bits"), np.uint8)
                arr = np.unpackbits(bits)[: int(np.prod(full))].reshape(full)
                maps[name] = arr.astype(spec["dtype"])
            else:
                maps[name] = np.load(io.BytesIO(z.read(f"{name}.npy")), allow_pickle=False)
    meta = doc["meta"]
    data = SegmentationSet(
        images=images,
        masks=maps.pop("masks"),
        ids=doc["ids"],
        groups=doc["groups"],
        spacing_mm=np.asarray(doc["spacing_mm"], np.float64).reshape(n, 2),
        hc_mm=np.asarray(doc["hc_mm"], np.float64),
        source=doc["source"],
        synthetic=doc["synthetic"],
        info={**doc["info"], "packed_from": path.name},
        layers={k.removeprefix("layer_"): v for k, v in maps.items()},
        meta=None if meta is None else pd.read_json(io.StringIO(meta), orient="split"),
    )
    if data.fingerprint() != doc["fingerprint"]:
        raise ValueError(
            f"{path}: the data read back do not match the fingerprint the pack records "
            f"({data.fingerprint()} against {doc['fingerprint']}); make the pack again."
        )
    return data


def packed_set(dataset: str, **arguments) -> SegmentationSet | None:
    """The pack of ``dataset`` for these loader arguments from ``$LUS_PACKED_DIR``, or None when
    that variable is unset.

    Raises:
        FileNotFoundError: ``LUS_PACKED_DIR`` is set but holds no pack for these arguments (the
            message lists the packs it holds).
    """
    folder = os.environ.get(ENV)
    if not folder:
        return None
    path = Path(folder) / pack_name(dataset, **arguments)
    if not path.is_file():
        held = sorted(p.name for p in Path(folder).glob(f"*{SUFFIX}"))
        raise FileNotFoundError(
            f"{ENV}={folder} holds no pack {path.name} (it holds: {', '.join(held) or 'none'}). "
            f"Make it with `lus gpu-pack`, or unset {ENV} to read the dataset's files."
        )
    return load_set(path)

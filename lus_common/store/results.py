"""The results store: one folder per run, named after its parameters, written atomically.

A run folder ``<results_dir>/<study>/<readable name>__<hash>`` holds ``config.json`` (every
parameter, versions, device, date), ``metrics.json``, ``history.csv`` and optional extra files
(``per_image.csv``, ``predictions.npz``). The folder is first written under a temporary name and
renamed into place, so a folder that exists is complete; a run with the same parameters is then
reused instead of recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from lus_common.config.paths import results_dir

REQUIRED = ("config.json", "metrics.json", "history.csv")
MODEL_FILE = "model.safetensors"  # the weights of a run that later runs start from


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and np.isnan(obj):
        return None
    return obj


jsonable = _jsonable


def write_json(path, doc) -> Path:
    """Write ``doc`` as indented JSON (numpy scalars as numbers, NaN as null) atomically: a
    temporary file beside ``path``, then renamed over it, so a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_jsonable(doc), indent=1) + "\n")
    tmp.replace(path)
    return path


def encode_probabilities(probs: np.ndarray) -> np.ndarray:
    """Probabilities in [0, 1] stored as uint8 (steps of 1/255), to keep run folders small."""
    return (np.asarray(probs, dtype=np.float32) * 255).round().astype(np.uint8)


def decode_probabilities(codes: np.ndarray) -> np.ndarray:
    """The inverse of :func:`encode_probabilities` (to within 1/510)."""
    return np.asarray(codes).astype(np.float32) / 255


def params_hash(params: dict) -> str:
    """A short stable hash of a parameter dict (key order does not matter)."""
    text = json.dumps(_jsonable(params), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def run_dir(study: str, params: dict, name_keys: tuple[str, ...] = ()) -> Path:
    """The folder of the run with these parameters.

    Args:
        study: study name, the first level under the results directory.
        params: every parameter that changes the result.
        name_keys: parameters spelled out in the folder name for readability.

    Returns:
        ``<results_dir>/<study>/<k1>-<v1>__...__<hash>``.
    """
    readable = "__".join(f"{k}-{params[k]}" for k in name_keys if k in params)
    name = f"{readable}__{params_hash(params)}" if readable else params_hash(params)
    return results_dir() / study / name.replace("/", "_").replace(" ", "")


def is_complete(folder: Path) -> bool:
    """True when the run folder holds every required file."""
    return all((Path(folder) / f).is_file() for f in REQUIRED)


def reusable_run(folder: Path, weights_key: str | None = None) -> dict | None:
    """The stored run in ``folder`` with ``"reused": True``, or None when there is none to reuse:
    the folder is incomplete, or (with ``weights_key``) the weights the run recorded are not those
    the key names."""
    if not is_complete(folder):
        return None
    run = load_run(folder)
    if weights_key is not None:
        from lus_common.models.weights import weights_agree

        if not weights_agree(weights_key, run["config"]["weights"]["used"]):
            return None
    return {**run, "reused": True}


def settle_weights(
    study: str, params: dict, used: str, name_keys: tuple[str, ...]
) -> tuple[dict, Path]:
    """A run's key and folder once its model is built: when the weights could not be loaded
    (``used`` starts with ``"none"``) although the key named them, the run is keyed and stored as
    ``"none/random"``, never under the weights it did not get."""
    from lus_common.models.weights import loaded_key

    params = {**params, "weights": loaded_key(params["weights"], used)}
    return params, run_dir(study, params, name_keys)


@contextmanager
def atomic_folder(folder: Path, prefix: str | None = None):
    """A temporary folder beside ``folder`` (named ``prefix`` + random, default ``.<name>.``) to
    write into: when the block ends it replaces ``folder`` whole (an incomplete or older copy
    included), and when the block raises it is removed, leaving ``folder`` as it was."""
    folder = Path(folder)
    tmp = Path(tempfile.mkdtemp(prefix=prefix or f".{folder.name}.", dir=folder.parent))
    try:
        yield tmp
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_run(
    folder: Path,
    config: dict,
    metrics: dict,
    history: pd.DataFrame,
    tables: dict[str, pd.DataFrame] | None = None,
    arrays: dict[str, np.ndarray] | None = None,
    state: dict | None = None,
) -> Path:
    """Write a run folder atomically (temporary folder, then rename).

    Args:
        folder: target run folder.
        config: parameters and environment.
        metrics: final metrics.
        history: per-epoch history.
        tables: extra CSV files, name -> frame (``"per_image"`` gives ``per_image.csv``).
        arrays: arrays saved together in ``predictions.npz``.
        state: a model's ``state_dict``, saved as ``model.safetensors`` for runs whose weights a
            later run starts from (:func:`load_state`).

    Returns:
        The folder.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with atomic_folder(folder) as tmp:
        (tmp / "config.json").write_text(json.dumps(_jsonable(config), indent=2, sort_keys=True))
        (tmp / "metrics.json").write_text(json.dumps(_jsonable(metrics), indent=2, sort_keys=True))
        history.to_csv(tmp / "history.csv", index=False)
        for name, table in (tables or {}).items():
            table.to_csv(tmp / f"{name}.csv", index=False)
        if arrays:
            np.savez_compressed(tmp / "predictions.npz", **arrays)
        if state is not None:
            from safetensors.torch import save_file

            save_file({k: v.detach().cpu().contiguous() for k, v in state.items()},
                      tmp / MODEL_FILE)  # fmt: skip
    return folder


def load_state(folder: Path) -> dict:
    """The model weights a run stored (:func:`save_run`'s ``state``).

    Raises:
        FileNotFoundError: the run folder has no ``model.safetensors`` (it names the folder).
    """
    path = Path(folder) / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} holds no model weights ({MODEL_FILE}): rerun the study so that the run "
            "that makes them is trained again."
        )
    from safetensors.torch import load_file

    return load_file(path)


def load_run(folder: Path) -> dict:
    """Read a complete run folder.

    Returns:
        ``{"config", "metrics", "history", <extra csv names>..., "arrays"}``.

    Raises:
        FileNotFoundError: the folder is missing or incomplete.
    """
    folder = Path(folder)
    if not is_complete(folder):
        raise FileNotFoundError(
            f"{folder} is not a complete run folder (needs {', '.join(REQUIRED)})."
        )
    out = {
        "config": json.loads((folder / "config.json").read_text()),
        "metrics": json.loads((folder / "metrics.json").read_text()),
        "history": pd.read_csv(folder / "history.csv"),
        "folder": str(folder),
    }
    for csv in folder.glob("*.csv"):
        if csv.stem != "history":
            out[csv.stem] = pd.read_csv(csv)
    npz = folder / "predictions.npz"
    if npz.is_file():
        with np.load(npz) as data:
            out["arrays"] = {k: data[k] for k in data.files}
    return out

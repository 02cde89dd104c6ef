"""The skeleton every study module stands on, written once.

- :func:`derive_profiles`: the ``paper`` profile (the paper's settings) and the other profiles as
  differences from it, so a profile says only what it changes;
- :func:`check_choice`: a parameter whose value must be one of a few (the lookup's message);
- :func:`cached_run`: the cache check and the save around one run, keyed by what really ran
  (its ``fit`` returns a :func:`run_record`);
- :class:`Collector`: the runs of a study gathered into the tables a chapter shows;
- :func:`export_reference` / :func:`read_reference`: a chapter's recorded reference runs (real
  data, the paper's settings or a stated reduction) as one JSON written from the run folders.

A study module then holds only what is its own: profiles, data, the training of one run, tables and
``findings()``, which writes the Discussion's sentences from the runs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import pandas as pd

from lus_common.config.registry import lookup
from lus_common.store import results

# Set (to anything) where runs must only be read back, never trained: exporting a chapter's JSON
# from run folders made on another machine (`lus gpu-unpack`).
REUSE_ONLY = "LUS_REUSE_ONLY"


def derive_profiles(paper: dict, **differences: dict) -> dict[str, dict]:
    """``{"paper": paper, name: paper | differences[name], ...}``.

    Raises:
        KeyError: a difference names a parameter the paper profile does not have (a typo would
            otherwise add a parameter that nothing reads).
    """
    out = {"paper": dict(paper)}
    for name, diff in differences.items():
        for key in diff:
            lookup(paper, key, f"parameter of the paper profile (in profile '{name}')")
        out[name] = {**paper, **diff}
    return out


def check_choice(p: dict, name: str, allowed: Iterable) -> None:
    """Raise ValueError unless ``p[name]`` is one of ``allowed``."""
    lookup(tuple(allowed), p[name], f"{name} value", error=ValueError)


def cached_run(
    study: str,
    key: dict,
    name_keys: tuple[str, ...],
    build: Callable[[], tuple],
    fit: Callable[..., dict],
    free: Callable[[], None] | None = None,
) -> dict:
    """One run, reused from the results store when a run with the same key is there.

    Args:
        study: the study's name (its folder in the results store).
        key: what identifies the run (:func:`run_params` of the study); ``key["weights"]`` names
            the weights the run will load.
        name_keys: the keys that make the folder's readable name.
        build: ``() -> (model, WeightsInfo)``, called only when the run is not stored.
        fit: ``(model, weights, key) -> {"config", "metrics", "history", "tables", "arrays"}``:
            trains and evaluates; its result is saved atomically.
        free: called once the trained model is dropped (e.g.
            :func:`lus_common.models.keras_unets.free_memory`), so a sweep does not keep every
            model it built.

    Returns:
        The run as :func:`lus_common.store.results.load_run` gives it, plus ``"reused"``. When the
        weights could not be loaded, the run is keyed (and looked up again) as ``none/random``.
    """
    stored = results.reusable_run(results.run_dir(study, key, name_keys), key["weights"])
    if stored is not None:
        return stored
    model, weights = build()
    try:
        key, folder = results.settle_weights(study, key, weights.used, name_keys)
        stored = results.reusable_run(folder, key["weights"])
        if stored is not None:
            return stored
        if os.environ.get(REUSE_ONLY, "") not in ("", "0"):
            raise RuntimeError(
                f"{folder} (weights {key['weights']}) is not in the results store and "
                f"{REUSE_ONLY} is set, so it is not trained here: bring its run folder "
                "(`lus gpu-unpack`), or unset the variable."
            )
        results.save_run(folder, **fit(model, weights, key))
    finally:
        del model
        if free is not None:
            free()
    return {**results.load_run(folder), "reused": False}


def sweep_runs(
    run: Callable[..., dict],
    jobs: list[tuple],
    args: tuple,
    p: dict,
    progress: bool = True,
    desc: str = "runs",
    setup: Callable[[], None] | None = None,
) -> list[tuple[tuple, dict]]:
    """A study's runs through the sweep executor (:mod:`lus_common.training.sweep`) that
    ``p["executor"]`` names (default ``"local"``); a Ray task asks for ``p["ray_cpus"]`` CPUs (1)
    and one GPU when the study runs on CUDA.

    Returns:
        ``[(job, run), ...]`` in job order.

    Raises:
        lus_common.training.sweep.SweepError: some runs failed (after every other one is stored).
    """
    from lus_common.config.device import resolve_device
    from lus_common.training import sweep

    gpus = 1 if resolve_device(p.get("device", "auto")).type == "cuda" else 0
    resources = sweep.Resources(cpus=p.get("ray_cpus", 1), gpus=gpus)
    out = sweep.run_sweep(run, jobs, args, p.get("executor", "local"), resources, setup,
                          progress, desc)  # fmt: skip
    return out.check().runs


def run_record(
    config: dict,
    metrics: dict,
    history: pd.DataFrame,
    per_image: pd.DataFrame | None = None,
    arrays: dict | None = None,
) -> dict:
    """What a ``fit`` of :func:`cached_run` returns: the run's parts, as
    :func:`lus_common.store.results.save_run` stores them."""
    tables = {} if per_image is None else {"per_image": per_image}
    return {
        "config": config,
        "metrics": metrics,
        "history": history,
        "tables": tables,
        "arrays": arrays,
    }


class Collector:
    """The runs of a study, gathered: one row per run, and for the main runs their per-epoch
    history, per-image scores, first predictions and weights."""

    def __init__(self):
        self.rows, self.histories, self.per_image = [], [], []
        self.predictions, self.weights, self.reused = {}, {}, 0

    def add(
        self,
        run: dict,
        labels: dict,
        main: dict | None = None,
        name: str | None = None,
        predictions: Callable[[dict], object] | None = None,
    ) -> None:
        """Add a run.

        Args:
            run: from :func:`cached_run`.
            labels: what tells the run apart (its row's first columns).
            main: for a main run, the labels of its history and per-image rows.
            name: for a main run, its key in ``predictions`` and ``weights`` (the first run of a
                name gives the predictions).
            predictions: ``arrays -> predictions`` of a main run.
        """
        self.reused += run["reused"]
        self.rows.append({**labels, **run["metrics"], "reused": run["reused"]})
        if main is None:
            return
        self.histories.append(run["history"].assign(**main))
        self.per_image.append(run["per_image"].assign(**main))
        if name not in self.predictions and predictions is not None:
            self.predictions[name] = predictions(run["arrays"])
        self.weights[name] = run["config"]["weights"]

    def result(self, **extra) -> dict:
        """``{"runs", "histories", "per_image", "predictions", "weights", "reused", **extra}``."""
        return {
            "runs": pd.DataFrame(self.rows),
            "histories": pd.concat(self.histories, ignore_index=True),
            "per_image": pd.concat(self.per_image, ignore_index=True),
            "predictions": self.predictions,
            "weights": self.weights,
            "reused": self.reused,
            **extra,
        }


# What a reference run keeps of its config besides params, weights and environment (where present).
_REFERENCE_CONFIG_KEYS = ("keras", "n_train", "n_val", "n_test", "strategy_label", "synthetic")
_REFERENCE_ENVIRONMENT_KEYS = ("python", "torch", "numpy", "platform", "date")


def export_reference(
    folders: Iterable,
    what: str,
    command: str,
    device: str,
    path: Path,
    params: dict | None = None,
    keep_runs: list[dict] | None = None,
    extra: dict | None = None,
) -> Path:
    """Write the reference-run JSON a chapter shows, from stored run folders (their params,
    weights, environment, metrics and seconds per epoch: nothing typed by hand).

    Args:
        folders: run folders (:func:`cached_run`'s ``"folder"``), or ``(folder, fields)`` pairs
            whose fields are added to that run's entry (e.g. ``{"encoder_arm": "random"}``).
        what: the caption (one sentence on data, settings and machine).
        command: the command line that made the file.
        device: how the machine is described.
        path: the JSON to write (atomically).
        params: the study parameters the runs share, for the chapter's tables (optional).
        keep_runs: entries of an earlier file of this study that go first (a reference extended
            by a later command, e.g. one more fold; ``command`` then names both commands).
        extra: more top-level fields (e.g. the lung phantom's ``phantom_appearance``).
    """
    runs = list(keep_runs or [])
    for item in folders:
        folder, fields = item if isinstance(item, tuple) else (item, {})
        run = results.load_run(folder)
        c = run["config"]
        runs.append(
            {
                "params": c["params"],
                "weights": c["weights"],
                "device": device,
                "environment": {k: c["environment"].get(k) for k in _REFERENCE_ENVIRONMENT_KEYS},
                **{k: c[k] for k in _REFERENCE_CONFIG_KEYS if k in c},
                "metrics": run["metrics"],
                **_epoch_seconds(run["history"]),
                **fields,
            }
        )
    doc = {"what": what, "command": command, "runs": runs}
    if params is not None:
        doc["study_params"] = params
    doc.update(extra or {})
    return results.write_json(path, doc)


def _epoch_seconds(history: pd.DataFrame) -> dict:
    """``{"epoch_seconds": {"first", "median", "total"}}`` from a run's history (its ``seconds``
    column: the wall time of each epoch's training and evaluation; the first holds any warm-up,
    compilation and cuDNN's search), or ``{}`` for a history without it."""
    if "seconds" not in history or not len(history):
        return {}
    seconds = history["seconds"].astype(float)
    return {"epoch_seconds": {"first": round(float(seconds.iloc[0]), 3),
                              "median": round(float(seconds.median()), 3),
                              "total": round(float(seconds.sum()), 3)}}  # fmt: skip


def timed_run(run: Callable[..., dict], *args) -> tuple[dict, str]:
    """``run(*args)`` (a study's ``run_one``, a :func:`cached_run`) and what happened:
    ``"reused"`` or ``"trained in N s"``."""
    import time

    start = time.perf_counter()
    out = run(*args)
    return out, "reused" if out["reused"] else f"trained in {time.perf_counter() - start:.0f} s"


def reference_command(script: str, argv: list[str] | None) -> str:
    """The command line a reference script records as its provenance: ``LUS_DATA_DIR=../shared/data
    python book/reference_runs/<script> <its arguments, shell-quoted>``."""
    import shlex
    import sys

    args = " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    return f"LUS_DATA_DIR=../shared/data python book/reference_runs/{Path(script).name} {args}"


def reference_rows(
    doc: dict, keys: tuple[str, ...], keep=None, timing: bool = False
) -> pd.DataFrame:
    """One row per run of a reference-run JSON (:func:`read_reference`), like a study's
    ``"runs"``: the run's ``keys`` of its params, its device and its metrics; with ``timing``
    also, where recorded, its training images (``n_train``) and seconds per epoch
    (``epoch_seconds_first``, ``_median``, ``_total``).

    Args:
        doc: the JSON's content.
        keys: the params that tell the runs apart (e.g. ``("strategy", "seed")``).
        keep: ``run -> bool`` choosing the runs (default: all).
    """
    return pd.DataFrame(
        [
            {**{k: r["params"][k] for k in keys}, "device": r["device"], **r["metrics"],
             **({k: r[k] for k in ("n_train",) if k in r} if timing else {}),
             **{f"epoch_seconds_{k}": v
                for k, v in (r.get("epoch_seconds", {}) if timing else {}).items()}}
            for r in doc["runs"]
            if keep is None or keep(r)
        ]
    )  # fmt: skip


def read_reference(path: Path) -> dict:
    """A reference-run JSON (:func:`export_reference`), with a message naming the maker when it is
    missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"No reference runs at {path}: make them with the script beside it "
            "(book/reference_runs/run_*_reference.py)."
        )
    return json.loads(path.read_text())

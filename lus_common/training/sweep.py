"""One sweep executor for every study: the runs of a study, in this process or as Ray tasks.

A study's run loop is a list of jobs (tuples such as ``(arm, fold, seed)``) and a function that
trains one job or reuses its run folder (the study's ``run_one``, built on
:func:`lus_common.studies.base.cached_run`). :func:`run_sweep` runs them with an executor:

- ``"local"`` (the default): one after the other in this process, with a tqdm bar;
- ``"ray"``: each job a Ray task with its CPU/GPU request (:class:`Resources`), on a local Ray
  started here or on an existing cluster named by ``RAY_ADDRESS`` (``ray start --head`` on one
  machine, ``ray start --address=<head>:6379`` on the others). Ray is an optional extra:
  ``pip install .[ray]``.

Both write the same run folders of the results store, so a sweep stopped under one executor is
finished or reused by the other, and a notebook reads the same tables either way. A job that fails
is reported (:class:`Failure`) and the others go on; :meth:`SweepResult.check` then raises one
error naming every failed job, after everything else is stored. Rerunning the sweep reuses the
finished runs and retries only the failed ones.

On a cluster the workers write their run folders under their own results directory; the driver
writes a copy of each finished run into its own store when it is not there already, so the tables
are complete on the driver in every case. Point ``LUS_RESULTS_DIR`` (and ``LUS_DATA_DIR``) at a
shared file system so that runs which start from another run's weights (study 2's X-UNet
pretraining) find them on every node.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from lus_common.config.registry import lookup

EXECUTORS = ("local", "ray")
# Environment variables a Ray worker needs to find the same data, weights and results.
FORWARDED_ENV = (
    "LUS_DATA_DIR", "LUS_RESULTS_DIR", "LUS_WEIGHTS_DIR", "KERAS_BACKEND", "KERAS_HOME"
)  # fmt: skip


@dataclass(frozen=True)
class Resources:
    """What one run asks of a Ray worker (``num_cpus``, ``num_gpus`` of ``ray.remote``)."""

    cpus: float = 1
    gpus: float = 0


@dataclass
class Failure:
    """A job that raised: the job, the error in one line, and its traceback."""

    job: tuple
    error: str
    traceback: str = ""


class SweepError(RuntimeError):
    """Some runs of a sweep failed; the others are stored and are reused by a rerun."""


@dataclass
class SweepResult:
    """The finished runs, in job order, and the failed jobs."""

    runs: list[tuple[tuple, dict]] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    executor: str = "local"

    @property
    def reused(self) -> int:
        """How many runs were read back from the results store."""
        return sum(bool(run.get("reused")) for _, run in self.runs)

    def check(self) -> SweepResult:
        """Raise :class:`SweepError` naming every failed job; return self when none failed."""
        if not self.failures:
            return self
        lines = "\n".join(f"  {f.job}: {f.error}" for f in self.failures)
        tail = "\n".join(self.failures[0].traceback.strip().splitlines()[-12:])
        raise SweepError(
            f"{len(self.failures)} of {len(self.failures) + len(self.runs)} runs failed "
            f"({self.executor} executor):\n{lines}\nThe {len(self.runs)} others are stored in the "
            "results store; fix the cause and run again: finished runs are reused, only the "
            f"failed ones are trained.\nThe first failure's traceback ends:\n{tail}"
        )


def check_executor(executor: str) -> str:
    """Raise ValueError unless ``executor`` is one of :data:`EXECUTORS`."""
    return lookup(EXECUTORS, executor, "sweep executor", error=ValueError)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _ray_task(run: Callable, setup: Callable | None, job: tuple, *args) -> dict:
    """One job in a Ray worker (Ray hands over ``args``, stored once, as the objects)."""
    if setup is not None:
        setup()
    return run(*args, *job)


def run_sweep(
    run: Callable[..., dict],
    jobs: Sequence[tuple],
    args: tuple = (),
    executor: str = "local",
    resources: Resources = Resources(),
    setup: Callable[[], None] | None = None,
    progress: bool = True,
    desc: str = "runs",
) -> SweepResult:
    """Run ``run(*args, *job)`` for every job with the chosen executor.

    Args:
        run: trains one job or reuses its run folder; returns the run as
            :func:`lus_common.studies.base.cached_run` does (``"folder"``, ``"reused"``, ...). A
            module-level function, so that Ray workers import it rather than copy it.
        jobs: the jobs, each a tuple of ``run``'s last arguments.
        args: ``run``'s first arguments, shared by every job (parameters, prepared data); Ray
            stores them once in its object store.
        executor: ``"local"`` or ``"ray"``.
        resources: the CPUs and GPUs one Ray task asks for.
        setup: called in each Ray worker before a job (e.g. Keras' device and precision policy,
            set in the driver's process by the study); it must be idempotent.
        progress: show a progress bar.
        desc: the bar's label.

    Returns:
        A :class:`SweepResult`; call its ``check()`` to raise on failed runs.

    Raises:
        ValueError: an unknown executor.
        ImportError: ``"ray"`` without Ray installed (the message says how to install it).
    """
    check_executor(executor)
    jobs = [tuple(j) for j in jobs]
    if executor == "ray":
        return _ray_sweep(run, jobs, args, resources, setup, progress, desc)
    out = SweepResult(executor="local")
    for job in tqdm(jobs, desc=desc, disable=not progress):
        try:
            out.runs.append((job, run(*args, *job)))
        except Exception as exc:  # a failed run is reported; the others go on
            out.failures.append(Failure(job, _one_line(exc), traceback.format_exc()))
    return out


def import_ray():
    """The ``ray`` module.

    Raises:
        ImportError: Ray is not installed (the message says how to install it).
    """
    try:
        import ray
    except ImportError as exc:
        raise ImportError(
            "The 'ray' executor needs Ray: `pip install .[ray]` in the project (or `pip install "
            "'ray>=2.9'`), or use the default executor 'local'."
        ) from exc
    return ray


def init_ray(num_cpus: int | None = None, num_gpus: int | None = None):
    """Connect to the Ray cluster at ``RAY_ADDRESS``, or start a local Ray with ``num_cpus``
    (default: all), unless Ray is already initialised in this process. Returns ``ray``."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    for k in ("LUS_DATA_DIR", "LUS_RESULTS_DIR", "LUS_WEIGHTS_DIR"):
        if k in env:  # a worker's working directory is not ours
            env[k] = str(Path(env[k]).expanduser().resolve())
    kwargs = dict(runtime_env={"env_vars": env}, include_dashboard=False, log_to_driver=False)
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, **kwargs)
    return ray


def _ray_sweep(run, jobs, args, resources, setup, progress, desc) -> SweepResult:
    from lus_common.store import results

    ray = init_ray()
    task = ray.remote(num_cpus=resources.cpus, num_gpus=resources.gpus, max_retries=0)(_ray_task)
    shared = [ray.put(a) for a in args]
    pending = {task.remote(run, setup, job, *shared): i for i, job in enumerate(jobs)}
    done: dict[int, dict] = {}
    failures: dict[int, Failure] = {}
    bar = tqdm(total=len(jobs), desc=f"{desc} (ray)", disable=not progress)
    refs = list(pending)
    while refs:
        ready, refs = ray.wait(refs, num_returns=1)
        i = pending[ready[0]]
        try:
            run_out = ray.get(ready[0])
            folder = Path(run_out["folder"])
            if not results.is_complete(folder):  # written on another node: keep a copy here
                _store_copy(run_out, folder)
            done[i] = run_out
        except Exception as exc:
            cause = getattr(exc, "cause", None) or exc
            failures[i] = Failure(jobs[i], _one_line(cause), str(exc))
        bar.update()
    bar.close()
    return SweepResult(
        runs=[(jobs[i], done[i]) for i in sorted(done)],
        failures=[failures[i] for i in sorted(failures)],
        executor="ray",
    )


def _store_copy(run: dict, folder: Path) -> None:
    from lus_common.store import results

    skip = {"config", "metrics", "history", "folder", "arrays", "reused"}
    tables = {k: v for k, v in run.items() if k not in skip and hasattr(v, "to_csv")}
    results.save_run(
        folder, run["config"], run["metrics"], run["history"], tables, run.get("arrays")
    )

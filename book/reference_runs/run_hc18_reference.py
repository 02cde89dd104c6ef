"""Make (or extend) the chapter's real-data reference runs of study 4 on the HC18 images.

The ``paper`` profile (the authors' setup) needs a GPU: 512 px, 20 epochs, 4 seeds. On a CPU the
runs are the paper profile with the differences given here (image size, epochs, warm-up, seeds),
stated in the file's caption. Every strategy runs with the study's input range ([0, 1], the
authors'); ``--also-input symmetric --also-strategies decoder baseline`` adds the [-1, 1] range the
imported MobileNetV2 was trained on, for the strategies named. Runs already in the results store
are read back, not retrained. ``hc18_strategies_hc18.json`` is then written from the run folders,
with this command line as its provenance::

    LUS_DATA_DIR=../shared/data python book/reference_runs/run_hc18_reference.py \\
        --image-size 128 --epochs 8 --warmup-epochs 3 --seeds 0 \\
        --also-input symmetric --also-strategies decoder baseline --device "2-core CPU"
"""

from __future__ import annotations

import argparse

from lus_common.config.device import resolve_device
from lus_common.studies import base
from lus_common.studies import s4_hc18_strategies as hs
from lus_common.training.freezing import get_strategy


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--warmup-epochs", type=int, default=5)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3])
    ap.add_argument("--strategies", nargs="+", default=["all"])
    ap.add_argument("--also-input", nargs="*", default=[], help="extra input_norm values")
    ap.add_argument("--also-strategies", nargs="*", default=["decoder"])
    ap.add_argument("--device", default="2-core CPU", help="how the machine is described")
    ap.add_argument("--torch-device", default="auto", help="cpu, cuda or auto")
    ap.add_argument("--out", default=str(hs.REFERENCE_RUNS), help="the JSON to write")
    args = ap.parse_args(argv)
    diffs = dict(
        image_size=args.image_size,
        epochs=args.epochs,
        warmup_epochs=args.warmup_epochs,
        seeds=args.seeds,
        strategies=args.strategies if args.strategies != ["all"] else "all",
    )
    p = hs.study_params("paper", **diffs, device=args.torch_device)
    device = resolve_device(p["device"])
    train, test = hs.load_data(p)
    jobs = [(p, s) for s in p["strategies"]]
    for norm in args.also_input:
        extra = hs.study_params("paper", **diffs, input_norm=norm, device=args.torch_device)
        jobs += [(extra, s) for s in args.also_strategies]
    folders = []
    for q, name in jobs:
        for seed in q["seeds"]:
            run, state = base.timed_run(
                hs.run_one, q, get_strategy(name), seed, train, test, device
            )
            m = run["metrics"]
            print(
                f"{name} ({q['input_norm']}) seed {seed}: {state}; Dice "
                f"{m[hs.report_column(q)]:.4f} ({hs.report_column(q)}), last epoch "
                f"{m['dice_pooled']:.4f}; weights {m['weights_used']}",
                flush=True,
            )
            folders.append(run["folder"])
    command = base.reference_command(__file__, argv)
    reduced = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in diffs.items())
    what = (
        f"Reference runs of the HC18 study on the real HC18 images ({len(train)} train / "
        f"{len(test)} test images, split by subject): the paper profile (batch "
        f"{p['batch_size']}, Adam {p['lr']:g}, the authors' augmentations) with {reduced}; "
        f"on a {args.device}."
    )
    print(f"wrote {hs.export_reference(folders, what, command, args.device, p, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

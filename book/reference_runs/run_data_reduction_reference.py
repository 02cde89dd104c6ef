"""Make the chapter's reference runs of study 1 on the real lus_pleura_rib frames.

156 real frames of one healthy volunteer (12 clips), target the pleural line, split 60/20/20 by
clip. The ``paper`` profile (256 px, 60 + 60 epochs at Adam 3e-5, 120 from scratch, four
initialisations, 19 fractions) needs a GPU or a Ray cluster (``--executor ray``); on a CPU the runs
are the paper profile with the differences given here, stated in the file's caption. Runs already
in the results store are read back. ``data_reduction_lus_pleura_rib.json`` holds every run's
parameters, weights, environment and metrics, read from the run folders, with this command line as
its provenance::

    LUS_DATA_DIR=../shared/data python book/reference_runs/run_data_reduction_reference.py \\
        --image-size 64 --epochs 4 4 8 --lr 1e-3 --batch-size 8 --seeds 0 1 \\
        --fractions 75 50 25 --reduction-seeds 0 1 --device "2-core CPU"
"""

from __future__ import annotations

import argparse

from lus_common.studies import base
from lus_common.studies import s1_data_reduction as s1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--epochs", nargs=3, type=int, default=[60, 60, 120],
                    help="frozen, fine-tuning and scratch epochs")  # fmt: skip
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3])
    ap.add_argument("--fractions", nargs="+", type=int, default=list(range(95, 0, -5)))
    ap.add_argument("--reduction-seeds", nargs="+", type=int, default=[0, 1, 2, 3])
    ap.add_argument("--executor", default="local", help="local or ray")
    ap.add_argument("--device", default="2-core CPU", help="how the machine is described")
    ap.add_argument("--torch-device", default="auto", help="cpu, cuda or auto")
    ap.add_argument("--out", default=str(s1.REFERENCE_RUNS), help="the JSON to write")
    args = ap.parse_args(argv)
    diffs = dict(
        image_size=args.image_size,
        tl_epochs=args.epochs[0],
        ft_epochs=args.epochs[1],
        scratch_epochs=args.epochs[2],
        lr=args.lr,
        batch_size=args.batch_size,
        seeds=args.seeds,
        fractions=args.fractions,
        reduction_seeds=args.reduction_seeds,
    )
    p = s1.study_params("paper", data_source="lus_pleura_rib", executor=args.executor,
                        device=args.torch_device, **diffs)  # fmt: skip
    prep = s1.prepare(p)
    out = s1.run_study(p, prep)
    data = prep["data"]
    reduced = ", ".join(f"{k.replace('_', ' ')} {v:g}" if isinstance(v, float) else
                        f"{k.replace('_', ' ')} {v}" for k, v in diffs.items())  # fmt: skip
    split = {k: len({data.groups[i] for i in prep[k]}) for k in ("train", "val", "test")}
    what = (
        f"Reference runs of study 1 on the real lus_pleura_rib frames ({len(data)} frames of "
        f"{len(set(data.groups))} clips, target the pleural line; split by clip: "
        f"{split['train']} / {split['val']} / {split['test']} clips, {len(prep['train'])} / "
        f"{len(prep['val'])} / {len(prep['test'])} frames); the paper profile (BCE, Adam, "
        f"frozen then fine-tuned, last epoch) with {reduced}; {out['reduction_encoder']} reduced "
        f"(best validation Dice); on a {args.device}."
    )
    path = base.export_reference(out["folders"], what, base.reference_command(__file__, argv),
                                 args.device, args.out,
                                 params={**p, "reduction_encoder": out["reduction_encoder"]},
                                 )  # fmt: skip
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

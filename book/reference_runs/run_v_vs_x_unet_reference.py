"""Make the chapter's reference runs of study 2 on the real lus_pleura_rib frames.

156 real frames of one healthy volunteer (12 clips), target the rib line, despeckled at 512x512
and resized; grouped folds keep a clip (its frames and their flips) together. X-UNet is pretrained
on the real Weizmann horses (grey, 80 % train, 20 % give its "TL" Dice) unless told otherwise.
The ``paper`` profile (256 px, 100 + 100 epochs at Adam 1e-5 / 5e-6) needs a GPU; on a CPU the
runs are the paper profile with the differences given here, stated in the file's caption. Runs
already in the results store are read back. ``v_vs_x_unet_lus_pleura_rib.json`` is written after
every fold from the run folders, with this command line as its provenance::

    LUS_DATA_DIR=../shared/data python book/reference_runs/run_v_vs_x_unet_reference.py \\
        --image-size 48 --epochs 2 3 3 --pretrain-epochs 5 --lr-scale 50 --pretrain-lr-scale 10 \\
        --device "2-core CPU"
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lus_common.studies import base
from lus_common.studies import s2_v_vs_x_unet as s2


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument(
        "--epochs", nargs=3, type=int, default=[100, 100, 100], help="V TL, V FT and X FT epochs"
    )
    ap.add_argument("--pretrain-epochs", type=int, default=100)
    ap.add_argument("--pretrain-source", default="weizmann_horse")
    ap.add_argument("--pretrain-images", type=int, default=328)
    ap.add_argument(
        "--lr-scale", type=float, default=1.0, help="every learning rate times this (few epochs)"
    )
    ap.add_argument(
        "--pretrain-lr-scale", type=float, default=None, help="X-UNet pretraining's (default: same)"
    )
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--device", default="2-core CPU", help="how the machine is described")
    ap.add_argument("--torch-device", default="auto", help="cpu, cuda or auto")
    ap.add_argument("--out", default=str(s2.REFERENCE_RUNS), help="the JSON to write")
    ap.add_argument(
        "--folds", nargs="+", type=int, default=None, help="run only these folds (default: all)"
    )
    ap.add_argument(
        "--extend",
        action="store_true",
        help="keep the runs already in --out (other folds; its pretraining entries) and add these",
    )
    args = ap.parse_args(argv)
    paper = s2.PROFILES["paper"]
    lrs = {k: paper[k] * args.lr_scale for k in ("v_tl_lr", "v_ft_lr", "x_ft_lr")}
    lrs["pretrain_lr"] = paper["pretrain_lr"] * (args.pretrain_lr_scale or args.lr_scale)
    diffs = dict(
        image_size=args.image_size,
        v_tl_epochs=args.epochs[0],
        v_ft_epochs=args.epochs[1],
        x_ft_epochs=args.epochs[2],
        pretrain_epochs=args.pretrain_epochs,
        pretrain_source=args.pretrain_source,
        pretrain_images=args.pretrain_images,
        seeds=args.seeds,
        **lrs,
        curves=False,
    )
    p = s2.study_params("paper", data_source="lus_pleura_rib", **diffs, device=args.torch_device)
    prep = s2.prepare(p)
    data = prep["data"]
    command = base.reference_command(__file__, argv)
    reduced = ", ".join(f"{k.replace('_', ' ')} {v:g}" if isinstance(v, float) else
                        f"{k.replace('_', ' ')} {v}" for k, v in diffs.items())  # fmt: skip
    what = (
        f"Reference runs of study 2 on the real lus_pleura_rib frames ({len(data)} frames of "
        f"{len(set(data.groups))} clips, target {p['target']}, "
        f"{data.info['frames_with'][p['target']]} frames with it; {p['folds']} folds, grouped "
        f"by clip, and the authors' KFold for {', '.join(p['leaky_arms'])}); X-UNet pretrained on "
        f"{p['pretrain_source']}; the paper profile (-Dice loss, Adam, batches 20 / 30, "
        f"augmentation, last epoch) with {reduced}; on a {args.device}."
    )
    folders, keep = [], []
    if args.extend:  # an earlier command's runs of the other folds go first, and its pretraining
        old = base.read_reference(Path(args.out))

        def same(d: dict) -> dict:  # the executor does not change a run
            return {k: v for k, v in base.results.jsonable(d).items() if k != "executor"}

        if same(old["study_params"]) != same(p):
            raise SystemExit("--extend: the file was made with other parameters; rerun it whole.")
        keep = [r for r in old["runs"] if r["params"].get("fold") not in (args.folds or [])]
        command = f"{old['command']}; then {command}"

    def write() -> None:
        path = base.export_reference(folders, what, command, args.device, args.out, params=p,
                                     keep_runs=keep)  # fmt: skip
        print(f"wrote {path}", flush=True)

    for seed in p["seeds"]:
        pre = s2.pretrain_x_unet(p, seed)
        if not keep:
            folders.append(pre["folder"])
    jobs = [j for j in s2.jobs(p) if args.folds is None or j[2] in args.folds]
    for i, (arm, scheme, fold, despeckle, seed) in enumerate(jobs):
        run, state = base.timed_run(s2.run_one, p, prep, arm, scheme, fold, despeckle, seed)
        print(f"{i + 1}/{len(jobs)} {arm} {scheme} fold {fold} despeckle {despeckle}: {state}",
              flush=True)  # fmt: skip
        fields = {}
        if scheme == "grouped" and fold == 0 and "arrays" in run:
            fields["predictions"] = {
                "ids": [str(x) for x in run["arrays"]["ids"]],
                "masks": s2.pack_masks(s2.results.decode_probabilities(run["arrays"]["probs"])),
            }
        folders.append((run["folder"], fields))
        if i + 1 == len(jobs) or jobs[i + 1][2] != fold:
            write()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

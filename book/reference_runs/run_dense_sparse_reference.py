"""Make the chapter's reference runs of study 5: reverse transfer onto the real POCUS clips.

Segmentation weights are learnt on the phantom Part 1 set (the paper's design: four patients,
38 images each, six copies) with dense and with sparse labels. The classifier then learns the real
POCUS frames (3 per second) from those weights or from none, in three patient-grouped folds. With
``--part1`` the Part 1 folds (patient and random) run too, for Table 1 at these settings. The
``paper`` profile (624x464-like 464 px, the 64-512 U-Net, 50 + 12 epochs) needs a GPU; on a CPU
the runs are the paper profile with the differences given here, stated in the file's caption. Runs
already in the results store are read back, not retrained. ``dense_sparse_pocus.json`` is written
after each part from the run folders, with this command line as its provenance::

    LUS_DATA_DIR=../shared/data python book/reference_runs/run_dense_sparse_reference.py \\
        --image-size 64 --features 8 16 32 64 --seg-epochs 30 --part1 --device "2-core CPU"
"""

from __future__ import annotations

import argparse

from lus_common.config.device import resolve_device
from lus_common.phantoms.appearance import DEFAULT_APPEARANCE
from lus_common.studies import base
from lus_common.studies import s5_dense_sparse as s5


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--image-size", type=int, default=464)
    ap.add_argument("--features", nargs=4, type=int, default=[64, 128, 256, 512])
    ap.add_argument("--seg-epochs", type=int, default=50)
    ap.add_argument("--cls-epochs", type=int, default=12)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--max-frames", type=int, default=None, help="POCUS frames per clip")
    ap.add_argument("--part1", action="store_true", help="also run the Part 1 folds")
    ap.add_argument("--device", default="2-core CPU", help="how the machine is described")
    ap.add_argument("--torch-device", default="auto", help="cpu, cuda or auto")
    ap.add_argument("--out", default=str(s5.REFERENCE_RUNS), help="the JSON to write")
    args = ap.parse_args(argv)
    diffs = dict(
        image_size=args.image_size,
        unet_features=args.features,
        seg_epochs=args.seg_epochs,
        cls_epochs=args.cls_epochs,
        seeds=args.seeds,
        pocus_max_frames=args.max_frames,
    )
    p = s5.study_params("paper", data_source="pocus", **diffs, device=args.torch_device)
    device = resolve_device(p["device"])
    seg, cls = s5.load_segmentation(p), s5.load_classification(p)
    command = base.reference_command(__file__, argv)
    reduced = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in diffs.items())
    folders = []

    def write(parts: str) -> None:
        what = (
            f"Reference runs of study 5 ({parts}): segmentation pretrained on the SYNTHETIC "
            f"phantom Part 1 set ({len(seg)} augmented images of {len(set(seg.patients))} "
            "patients), "
            f"classification on the real POCUS clips ({len(cls)} frames of "
            f"{len(set(cls.videos))} clips and images, {len(set(cls.patients))} patients, "
            f"{p['folds']} patient-grouped folds); the paper profile (CE, Adam {p['lr']:g}, batch "
            f"{p['batch_size']}, ReduceLROnPlateau on the training loss, last epoch) with "
            f"{reduced}; on a {args.device}."
        )
        path = base.export_reference(
            folders, what, command, args.device, args.out, params=p,
            extra={"phantom_appearance": DEFAULT_APPEARANCE},
        )  # fmt: skip
        print(f"wrote {path}", flush=True)

    for seed in p["seeds"]:
        pretrained = {}
        for labels in s5.LABELS:
            run, state = base.timed_run(
                s5.run_segmentation, p, seg, labels, "all", None, seed, device
            )
            print(f"pretraining {labels} seed {seed}: {state}", flush=True)
            pretrained[labels] = run
            folders.append(run["folder"])
        for pretrain in p["pretrains"]:
            for fold in range(p["folds"]):
                run, state = base.timed_run(
                    s5.run_classification, p, cls, pretrain, fold, seed, device,
                    pretrained.get(pretrain),
                )  # fmt: skip
                m = run["metrics"]
                print(
                    f"{pretrain} fold {fold} seed {seed}: {state}; accuracy "
                    f"{m['last_accuracy']:.3f}, per video {m['last_video_accuracy']:.3f}",
                    flush=True,
                )
                folders.append(run["folder"])
    write("Part 2 on real POCUS")
    if not args.part1:
        return 0
    for seed in p["seeds"]:
        for split in p["splits"]:
            for fold in range(p["folds"]):
                for labels in s5.LABELS:
                    run, state = base.timed_run(
                        s5.run_segmentation, p, seg, labels, split, fold, seed, device
                    )
                    print(
                        f"{labels} {split} fold {fold} seed {seed}: {state}; mIoU "
                        f"{run['metrics']['last_miou']:.3f}",
                        flush=True,
                    )
                    folders.append(run["folder"])
    write("Part 2 on real POCUS, and Part 1 on phantoms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

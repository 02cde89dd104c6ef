"""Make (or extend) the chapter's real-data reference runs of study 3 on the Shenzhen images.

Each job is ``model:norm:momentum[:weights]`` (e.g. ``unet:batch:0.99``, ``unet:group:0.99``,
``vgg16_unet:batch:0.99:hed-bsds500``; without ``weights``, ``--encoder-weights``); every job runs
the ``paper`` profile (the authors' setup) for each ``--seeds``, or is read back from the results
store when it already ran. ``--random-arm-folders`` adds stored runs that asked for pretrained
weights but trained from a random encoder (recorded ``none/random``) as the random control.
``--train-sizes`` adds the chapter's training-set-size curve: each job with batch norm at Keras'
momentum (0.99) trained on that many images for the main setting's number of steps, for each
``--curve-seeds`` (default ``--seeds``). ``cxr_overfitting_shenzhen.json`` is then written from the
run folders of *all* the jobs named, with this command line as its provenance::

    LUS_DATA_DIR=../shared/data python book/reference_runs/run_cxr_reference.py \
        --jobs unet:batch:0.99 unet:batch:0.9 unet:group:0.99 resnet50_unet:batch:0.99 \
        --device "2-core CPU"
"""

from __future__ import annotations

import argparse

from lus_common.store import results
from lus_common.studies import base
from lus_common.studies import s3_cxr_overfitting as cs


def parse_job(text: str, default_weights: str) -> tuple[str, str, float, str]:
    parts = text.split(":")
    if (
        len(parts) not in (3, 4)
        or parts[0] not in cs.MODELS
        or parts[1] not in ("batch", "group", "none")
    ):
        raise SystemExit(
            f"Bad job '{text}': use model:norm:momentum[:weights] with a model of "
            f"{list(cs.MODELS)} and norm batch, group or none."
        )
    weights = parts[3] if len(parts) == 4 else default_weights
    return parts[0], parts[1], float(parts[2]), weights


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--jobs", nargs="+", required=True, help="model:norm:momentum")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument(
        "--encoder-weights",
        default="imagenet",
        help="asked for; what was really loaded is recorded per run",
    )
    ap.add_argument(
        "--device", default="2-core CPU", help="how the machine is described in the file"
    )
    ap.add_argument(
        "--train-sizes",
        nargs="*",
        type=int,
        default=[],
        help="the size curve: training-set sizes for the jobs with batch norm at momentum 0.99 "
        "(at most the pool of the split; the paper profile's curve is 25 50 100 200 400)",
    )
    ap.add_argument(
        "--curve-seeds", nargs="+", type=int, default=None, help="seeds of the curve (--seeds)"
    )
    ap.add_argument("--no-export", action="store_true", help="only run (or reuse) the jobs")
    ap.add_argument(
        "--random-arm-folders",
        nargs="*",
        default=[],
        help="stored runs that asked for pretrained weights but trained from a random encoder "
        "(weights used none/random), included as the random-encoder control",
    )
    args = ap.parse_args(argv)
    jobs = [parse_job(j, args.encoder_weights) for j in args.jobs]
    p = cs.study_params("paper", seeds=args.seeds, encoder_weights=args.encoder_weights)
    splits = cs.load_splits(p)
    pool = len(splits["pool"])
    if any(n < 1 or n > pool for n in args.train_sizes):
        raise SystemExit(
            f"--train-sizes must lie in 1..{pool} (the training pool left after the "
            f"{p['n_val']} validation and {p['n_test']} test images); got {args.train_sizes}."
        )
    folders = []
    runs = cs.reference_jobs(jobs, args.seeds, p["n_train"], args.train_sizes, args.curve_seeds)
    for model, norm, momentum, weights, seed, n_train in runs:
        q = {**p, "encoder_weights": weights}
        run, state = base.timed_run(cs.run_one, q, model, seed, n_train, momentum, splits, norm)
        m = run["metrics"]
        print(
            f"{model} {norm} {momentum} seed {seed}, {n_train} images: {state}; test Dice "
            f"(paper's definition) {m['test_dice_keras']:.3f}, inference "
            f"{m['test_dice_inference']:.3f}, training mode {m['test_dice_training']:.3f}; "
            f"weights {m['weights_used']}",
            flush=True,
        )
        folders.append(run["folder"])
    for folder in args.random_arm_folders:
        config = results.load_run(folder)["config"]
        if not config["weights"]["used"].startswith("none") or config["params"]["model"] == "unet":
            raise SystemExit(
                f"{folder} is not a random-encoder run (weights used: "
                f"{config['weights']['used']}, model {config['params']['model']})."
            )
        folders.append((folder, {"encoder_arm": "random"}))
    if not args.no_export:
        command = base.reference_command(__file__, argv)
        what = (
            f"Reference runs of the CXR study on the real Shenzhen images with the authors' setup "
            f"(the paper profile: {p['image_size']} px, "
            f"{p['n_train']}/{p['n_val']}/{p['n_test']} split, {p['epochs']} epochs, "
            f"batch {p['batch_size']}, Adam {p['lr']:g}, Dice loss, one 2-98 % "
            f"stretch over the set), seed(s) {', '.join(map(str, args.seeds))}, on a {args.device}."
        )
        if len(runs) > len(jobs) * len(args.seeds):
            curve = sorted({n for *_, n in runs})
            what += (
                f" The size curve: {', '.join(map(str, curve))} training images at about the same "
                f"number of steps, seed(s) "
                f"{', '.join(map(str, args.curve_seeds or args.seeds))}."
            )
        path = cs.export_reference(folders, what, command, args.device)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

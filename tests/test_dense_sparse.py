"""Study 5 (Gare et al.): the reverse-transfer head, the multi-class and classification training
loop, the Part 1 and Part 2 data and folds, the metrics of Tables 1 and 2, and the study end to end.
"""

import json

import nbformat
import numpy as np
import pytest
import torch
from torch import nn

from lus_common.app import runner
from lus_common.data.sets import SegmentationSet
from lus_common.evaluation.stats import format_p, paired_difference
from lus_common.models.torch_seg_classifier import SegmentationClassifier
from lus_common.phantoms.lung import dense_to_sparse, lung_patients_phantom
from lus_common.store import results
from lus_common.studies import base
from lus_common.studies import s5_dense_sparse as s5
from lus_common.training.torch_loop import TrainConfig, augment, predict, train_model


class _Fixed(nn.Module):
    """A 'segmenter' returning given logits, whatever the input."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits


def test_classifier_head_pools_the_softmax_maps():
    logits = torch.zeros(2, 4, 2, 2)
    logits[0, 1] = 10.0  # image 0: class 1 everywhere
    logits[1, 2, :, :1] = 10.0  # image 1: class 2 in the left half, uniform elsewhere
    head = SegmentationClassifier(_Fixed(logits), seg_classes=4, classes=3)
    shares = head.class_shares(torch.zeros(2, 3, 2, 2))
    assert shares.shape == (2, 4)
    torch.testing.assert_close(shares.sum(1), torch.ones(2))
    assert shares[0, 1] > 0.999  # GAP of a softmax, not of the logits
    # left half ~(0, 0, 1, 0), right half (1/4 each): mean 0.125, 0.125, 0.625, 0.125
    torch.testing.assert_close(shares[1], torch.tensor([0.125, 0.125, 0.625, 0.125]), atol=1e-3,
                               rtol=0)  # fmt: skip
    out = head(torch.zeros(2, 3, 2, 2))
    assert out.shape == (2, 3)
    torch.testing.assert_close(out, head.fc(shares))
    assert sum(p.numel() for p in head.fc.parameters()) == 4 * 3 + 3
    with pytest.raises(ValueError, match=r"expected \(N, 7, H, W\)"):
        SegmentationClassifier(_Fixed(logits), seg_classes=7).class_shares(torch.zeros(2, 3, 2, 2))


def test_augment_moves_class_maps_with_the_image_and_keeps_their_classes():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    y = torch.randint(0, 7, (2, 4, 4))
    cfg = TrainConfig(hflip=1.0)
    gen = torch.Generator().manual_seed(0)
    ax, ay = augment(x, y, cfg, gen)
    assert ay.dtype == torch.int64 and ay.shape == y.shape
    torch.testing.assert_close(ax, x.flip(-1))
    torch.testing.assert_close(ay, y.flip(-1))
    rot = TrainConfig(rotation_deg=30)
    _, ry = augment(x, y, rot, torch.Generator().manual_seed(0))
    assert set(ry.unique().tolist()) <= set(range(7))  # nearest: no class in between
    labels = torch.tensor([2, 0])  # one class per image: left as it is
    _, cy = augment(x, labels, cfg, torch.Generator().manual_seed(0))
    torch.testing.assert_close(cy, labels)


def test_multiclass_training_learns_a_three_level_image():
    rng = np.random.default_rng(0)
    images = rng.choice([0.1, 0.5, 0.9], size=(24, 8, 8)).astype(np.float32)
    classes = np.digitize(images, [0.3, 0.7]).astype(np.uint8)  # the grey level is the class
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 3, 1))
    cfg = TrainConfig(epochs=40, batch_size=8, lr=0.05, task="multiclass", input_norm="unit")
    history = train_model(model, images, classes, cfg)
    assert history["train_loss"].iloc[-1] < 0.1 * history["train_loss"].iloc[0]
    with torch.no_grad():
        pred = model(torch.as_tensor(images)[:, None].expand(-1, 3, -1, -1)).argmax(1).numpy()
    assert (pred == classes).mean() == 1.0


def test_classification_training_and_a_plateau_that_halves_the_rate():
    rng = np.random.default_rng(1)
    labels = np.arange(30) % 3
    images = (labels[:, None, None] / 2 + rng.normal(0, 0.05, (30, 8, 8))).astype(np.float32)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    )
    cfg = TrainConfig(epochs=60, batch_size=6, lr=0.05, task="classify", input_norm="unit")
    train_model(model, images, labels, cfg)
    prob = predict(model, images, input_norm="unit", output="proba")
    assert prob.shape == (30, 3) and np.allclose(prob.sum(1), 1, atol=1e-5)
    assert (prob.argmax(1) == labels).mean() >= 0.9
    # A watched score that never improves: with patience 0 the rate halves after every epoch but
    # the first (whose value is the best so far); a row's lr is the one its epoch trained with.
    plateau = TrainConfig(epochs=3, batch_size=6, lr=1e-3, task="classify", input_norm="unit",
                          scheduler="plateau", plateau_on="score", plateau_patience=0)  # fmt: skip
    history = train_model(model, images, labels, plateau, evaluate=lambda m, e: {"score": 1.0})
    assert history["lr"].tolist() == pytest.approx([1e-3, 1e-3, 5e-4])
    assert history["score"].tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="pass evaluate="):
        train_model(model, images, labels, plateau, val_images=images, val_masks=labels)
    with pytest.raises(ValueError, match="Unknown task 'segment'"):
        TrainConfig(task="segment")


def test_patients_drawn_by_diagnosis_have_unique_ids():
    d = lung_patients_phantom(["COVID-19", "healthy", "COVID-19"], 4, 2, image_size=32, seed=3)
    assert len(d) == 12 and d.meta.groupby("patient")["diagnosis"].first().tolist() == [
        "COVID-19", "healthy", "COVID-19"
    ]  # fmt: skip
    assert d.meta.groupby("patient")["video"].nunique().tolist() == [2, 2, 2]
    assert len(set(d.ids)) == 12 and d.groups[0] == "lus0_p000"
    other = lung_patients_phantom(["healthy"], 4, 2, image_size=32, seed=3, id_prefix="b")
    joined = SegmentationSet.concat([d, other])
    assert len(joined) == 16 and len(set(joined.ids)) == 16 and len(joined.meta) == 16
    np.testing.assert_array_equal(joined.layers["sparse"], dense_to_sparse(joined.layers["dense"]))
    with pytest.raises(ValueError, match="share source"):
        SegmentationSet.concat([d, SegmentationSet(d.images, d.masks, d.ids, "x", False)])


def test_semantic_lung_copies_and_folds():
    p = s5.study_params("smoke")
    seg = s5.load_segmentation(p)
    n = seg.info["n_original"]
    assert n == 4 * p["seg_images_per_patient"]
    assert seg.info["copies"] == ["x1", "x0.8", "flip_x1", "flip_x0.8"] and len(seg) == 4 * n
    np.testing.assert_array_equal(seg.sparse, dense_to_sparse(seg.dense))
    flip = seg.info["copies"].index("flip_x0.8")
    np.testing.assert_array_equal(seg.dense[flip * n : (flip + 1) * n], seg.dense[:n, :, ::-1])
    np.testing.assert_allclose(seg.images[flip * n], np.clip(seg.images[0, :, ::-1] * 0.8, 0, 1))
    assert s5.augment_copies(True, [1.0, 0.8, 1.1]).__len__() == 6  # the paper's x6
    by_patient = s5.segmentation_folds(seg, "patient", 3, 0)
    patients = np.asarray(seg.patients)
    for f in range(3):
        assert not set(patients[by_patient == f]) & set(patients[by_patient != f])
    random = s5.segmentation_folds(seg, "random", 3, 0)
    src = seg.source
    leaked = [len(set(src[random == f]) & set(src[random != f])) for f in range(3)]
    assert min(leaked) > 0  # the paper's folds put copies of one image on both sides


def test_classification_folds_keep_patients_and_spread_classes():
    p = s5.study_params("smoke", cls_videos=[4, 5, 3], cls_frames_per_video=3)
    cls = s5.load_classification(p)
    assert np.bincount(cls.labels).tolist() == [12, 15, 9] and cls.synthetic
    assert cls.label == "SYNTHETIC phantom" and len(set(cls.videos)) == 12
    folds = s5.classification_folds(cls, 3, 0)
    patients = np.asarray(cls.patients)
    for f in range(3):
        assert not set(patients[folds == f]) & set(patients[folds != f])
        assert set(cls.labels[folds == f]) == {0, 1, 2}
    with pytest.raises(ValueError, match="at least 3 phantom videos"):
        s5.study_params("smoke", cls_videos=[2, 5, 3])


def test_diagnosis_scores_of_a_known_confusion():
    # true: 2 healthy, 2 COVID-19, 2 pneumonia (DIAGNOSES order); predicted: one COVID-19 frame
    # called healthy, one pneumonia frame called COVID-19
    labels = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 0, 0, 1, 1, 2])
    prob = np.eye(3)[pred] * 0.8 + 0.2 / 3
    videos = ["h", "h", "c", "c", "p1", "p2"]
    s = s5.diagnosis_scores(prob, labels, videos)
    assert s["accuracy"] == pytest.approx(4 / 6)
    assert s["healthy_precision"] == pytest.approx(2 / 3) and s["healthy_recall"] == 1.0
    assert s["covid_19_precision"] == 0.5 and s["covid_19_recall"] == 0.5
    assert s["pneumonia_precision"] == 1.0 and s["pneumonia_recall"] == 0.5
    assert s["confusion"] == [[2, 0, 0], [1, 1, 0], [0, 1, 1]]
    # per video: h right, c a tie (0 wins: wrong), p1 wrong, p2 right
    assert s["video_accuracy"] == 0.5 and s["n_videos"] == 4


def test_paired_difference_of_three_folds():
    r = paired_difference([0.7, 0.8, 0.9], [0.6, 0.65, 0.7])
    assert r["n"] == 3 and r["mean_diff"] == pytest.approx(0.15)
    assert r["p_wilcoxon"] == pytest.approx(0.25)  # the smallest two-sided p with three pairs
    assert 0 < r["p_t"] < 0.1
    assert format_p(r["p_wilcoxon"]) == "p = 0.250" and format_p(1e-9) == "p < 0.001"
    same = paired_difference([1, 2], [1, 2])
    assert same["p_wilcoxon"] == 1.0 and np.isnan(same["p_t"])


def test_run_weights_are_stored_and_read_back(tmp_path):
    state = {"w": torch.arange(6.0).view(2, 3)}
    folder = results.save_run(tmp_path / "run", {"a": 1}, {}, __import__("pandas").DataFrame(),
                              state=state)  # fmt: skip
    torch.testing.assert_close(results.load_state(folder)["w"], state["w"])
    results.save_run(tmp_path / "bare", {"a": 1}, {}, __import__("pandas").DataFrame())
    with pytest.raises(FileNotFoundError, match="holds no model weights"):
        results.load_state(tmp_path / "bare")


def test_study_smoke_end_to_end_and_reverse_transfer_starts_from_the_segmentation(
    isolated_results, tmp_path
):
    p = s5.study_params("smoke", device="cpu")
    seg, cls = s5.load_segmentation(p), s5.load_classification(p)
    out = s5.run_study(p, seg, cls, progress=False)
    runs = out["seg_runs"]
    assert len(runs) == 2 * 2 * 3 and len(out["cls_runs"]) == 3 * 3
    assert set(runs["split"]) == {"patient", "random"} and out["reused"] == 0
    for col in ("last_pixel_accuracy", "best_test_miou", "last_iou_pleural_line"):
        assert runs[col].between(0, 1).all(), col
    assert runs.loc[runs["labels"] == "dense", "last_dense_miou"].notna().all()
    assert (out["cls_runs"]["last_accuracy"].between(0, 1)).all()
    # Part 2's dense classifier starts from the dense pretraining run's weights
    dense_run = out["pretrain_runs"]["dense/0"]
    model, info = s5.build_classifier(p, "dense", 0, {"folder": dense_run})
    state = results.load_state(dense_run)
    torch.testing.assert_close(model.segmenter.head.weight, state["head.weight"])
    assert info.used.startswith("dense segmentation (run ") and model.seg_classes == 7
    weights = {k.split("/")[0]: v["used"] for k, v in out["weights"].items()}
    assert weights["none"] == "none (from scratch)" and "sparse segmentation" in weights["sparse"]
    tables = (s5.table1(runs), s5.table1_dense(runs), s5.table2(out["cls_runs"]))
    assert tables[0].loc["U-Net dense, paper", "mIoU mean"] == "0.711 ± 0.001"
    assert tables[2].loc["none, paper", "accuracy"] == "0.824"
    panels, titles = s5.figure2_panels(out, seg)
    assert len(panels) == 5 * 4 and titles[1] == "dense truth"  # one row per patient
    again = s5.run_study(p, seg, cls, progress=False)
    assert again["reused"] == len(runs) + 2 + len(out["cls_runs"])  # + the two pretraining runs
    # the reference JSON of these run folders reads back as the same tables
    folders = sorted((isolated_results / "dense_sparse").iterdir())
    path = base.export_reference(
        folders, "cap", "cmd", "test CPU", tmp_path / "r.json", params=p,
        extra={"phantom_appearance": "calibrated"},
    )  # fmt: skip
    what, ref_p, ref_cls = s5.reference_runs(path)
    ref_seg = s5.reference_seg_runs(path)
    assert what == "cap" and len(ref_cls) == 9 and len(ref_seg) == 12 and ref_p["folds"] == 3
    # a file recorded before the calibrated phantom says its phantom parts ran on v1
    old = base.export_reference(folders, "cap.", "cmd", "test CPU", tmp_path / "o.json", params=p)
    assert "first generator (`v1`)" in s5.reference_runs(old)[0]
    # the same rows (the JSON keeps the folders' order, the study its own)
    assert s5.table2(ref_cls).sort_index().equals(s5.table2(out["cls_runs"]).sort_index())
    assert s5.table1(ref_seg).equals(s5.table1(runs))
    acc = out["cls_runs"].groupby("pretrain")["last_accuracy"].mean()
    assert f"dense pretraining: frame accuracy {acc['dense']:.3f}" in "\n".join(
        s5.reference_findings(ref_cls, ref_p)
    )


def test_dense_sparse_chapter_smoke(tmp_path):
    out = runner.run_notebook(
        "dense_sparse", {"device": "cpu"}, profile="smoke", output=tmp_path / "nb.ipynb",
        progress=False,
    )  # fmt: skip
    text = "\n".join(
        o.get("text", "") + "".join(o.get("data", {}).get("text/markdown", ""))
        for c in nbformat.read(out, 4).cells
        for o in c.get("outputs", [])
    )
    assert "Part 1 data: SYNTHETIC phantom" in text and "False-positive components" in text


@pytest.mark.realdata
def test_dense_sparse_smoke_on_real_pocus(tmp_path, monkeypatch, real_pocus):
    monkeypatch.setenv("LUS_DATA_DIR", str(real_pocus.parent))
    out = runner.run_notebook(
        "dense_sparse", {"device": "cpu", "data_source": "pocus"}, profile="smoke",
        output=tmp_path / "nb.ipynb", progress=False,
    )  # fmt: skip
    text = json.dumps([c.get("outputs", []) for c in nbformat.read(out, 4).cells])
    assert "Part 2 data: POCUS (real)" in text and "patients in more than one fold: 0" in text
    assert "Part 1 data: SYNTHETIC phantom" in text


def test_findings_read_the_runs_numbers():
    import pandas as pd

    p = s5.study_params("smoke")
    rows = []
    for split, shift in (("patient", 0.0), ("random", 0.1)):
        for fold in range(3):
            for labels, miou, fp in (("dense", 0.5, 1.0), ("sparse", 0.4, 3.0)):
                rows.append(
                    {
                        "labels": labels,
                        "split": split,
                        "fold": fold,
                        "seed": 0,
                        "last_miou": miou + shift,
                        "best_test_miou": miou + shift + 0.02,
                        "last_fp_components_total": fp,
                    }  # fmt: skip
                )
    per_image = pd.DataFrame(
        [
            {
                "split": "patient",
                "selection": "last",
                "labels": labels,
                "id": f"i{k}",
                "fp_components_total": fp + k % 2,
            }  # fmt: skip
            for k in range(8)
            for labels, fp in (("dense", 1), ("sparse", 3))
        ]
    )
    cls = pd.DataFrame(
        [
            {"pretrain": pt, "fold": f, "seed": 0, "last_accuracy": acc, "last_video_accuracy": acc}
            for pt, acc in (("dense", 0.8), ("sparse", 0.7), ("none", 0.6))
            for f in range(3)
        ]
    )
    out = {"seg_runs": pd.DataFrame(rows), "seg_per_image": per_image, "cls_runs": cls}
    text = "\n".join(s5.findings(out, p, "SYNTHETIC phantom", "POCUS (real)"))
    assert "Part 2 from POCUS (real) data" in text
    assert (
        "dense (merged) 0.500 vs sparse 0.400 (+0.100; paper, random folds: 0.711 vs 0.654" in text
    )
    assert "dense 1.00 vs sparse 3.00 (Wilcoxon over 8 paired test images: p = 0.008)" in text
    assert "dense labels give fewer false positives here" in text
    assert "mIoU 0.550 vs 0.450 (+0.100)" in text  # random folds vs folds by patient
    assert "from 0.450 (last epoch) to 0.470 (folds by patient)" in text
    assert (
        "dense 0.800, sparse 0.700, none 0.600 (paper: dense 0.849, sparse 0.843, none 0.824)"
        in text
    )
    assert "pretraining minus none: +0.200 frame accuracy over 3 run(s)" in text

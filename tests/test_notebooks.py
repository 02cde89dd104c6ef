"""Source notebooks are clean and well-formed; the HC18 notebook runs end to end under papermill."""

import json

import nbformat
import pytest

from lus_common.app import runner
from lus_common.config.paths import PROJECT_ROOT
from lus_common.models.keras_unets import keras_weights_key
from lus_common.studies import s3_cxr_overfitting as cxr

SECTIONS = ["Parameters", "Setup", "Data", "Models", "Training", "Results", "Figures", "Discussion"]
# Chapters that are not studies have their own sections.
CHAPTER_SECTIONS = {
    "A1_pretrained_weights.ipynb": [
        "Parameters",
        "Setup",
        "Sources",
        "Checks",
        "What the weights see",
        "How they differ from the papers' weights",
    ],
    "00_phantoms.ipynb": [
        "Parameters",
        "Setup",
        "Image formation",
        "Lung ultrasound",
        "Physical checks",
        "Despeckling",
        "How real is it?",
        "Chest X-ray",
        "Salient objects",
        "Fetal head",
        "Speed",
        "Limits",
    ],
}
NOTEBOOKS = sorted((PROJECT_ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_source_notebook_has_no_outputs(path):
    nb = nbformat.read(path, 4)
    assert all(
        not c.get("outputs") and c.get("execution_count") is None
        for c in nb.cells
        if c.cell_type == "code"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_structure(path):
    nb = nbformat.read(path, 4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[0].metadata.get("tags") == ["parameters"]
    assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1
    # plain literals only in the parameters cell: every line is `name = literal  # comment`
    import ast

    for node in ast.parse(code[0].source).body:
        assert isinstance(node, ast.Assign)
        ast.literal_eval(node.value)
    headings = [
        line[3:].strip()
        for c in nb.cells
        if c.cell_type == "markdown"
        for line in c.source.splitlines()
        if line.startswith("## ")
    ]
    assert headings == CHAPTER_SECTIONS.get(path.name, SECTIONS)


def _outputs(nb):
    text = []
    for c in nb.cells:
        for o in c.get("outputs", []):
            assert o.output_type != "error", f"{o.ename}: {o.evalue}"
            text.append(o.get("text", "") + "".join(o.get("data", {}).get("text/markdown", "")))
    return "\n".join(text)


def test_hc18_smoke_synthetic_end_to_end(tmp_path, isolated_results):
    out = runner.run_notebook(
        "hc18_strategies",
        {"device": "cpu"},
        profile="smoke",
        output=tmp_path / "nb.ipynb",
        progress=False,
    )
    nb = nbformat.read(out, 4)
    text = _outputs(nb)
    assert "SYNTHETIC phantom" in text and "Weights used" in text
    folders = sorted((isolated_results / "hc18_strategies").iterdir())
    # 8 strategies, the random-encoder control and the EfficientNet-Lite0 pair, 1 seed
    assert len(folders) == 11
    for folder in folders:
        metrics = json.loads((folder / "metrics.json").read_text())
        config = json.loads((folder / "config.json").read_text())
        assert 0 <= metrics["dice"] <= 1 and 0 <= metrics["pixel_accuracy"] <= 1
        assert (
            metrics["weights_used"] in ("none (from scratch)", "none/random")
            or "imagenet" in metrics["weights_used"]
        )
        assert config["synthetic"] is True and config["params"]["epochs"] == 1
    # Same parameters again: all runs are reused, none recomputed.
    runner.run_notebook(
        "hc18_strategies",
        {"device": "cpu"},
        profile="smoke",
        output=tmp_path / "nb2.ipynb",
        progress=False,
    )
    assert "11 reused from the results store" in _outputs(nbformat.read(tmp_path / "nb2.ipynb", 4))


def test_hc18_smoke_real_data(tmp_path, real_data):
    out = runner.run_notebook(
        "hc18_strategies",
        {"data_source": "hc18", "strategies": ["baseline", "decoder"]},
        profile="smoke",
        output=tmp_path / "nb.ipynb",
        progress=False,
    )
    text = _outputs(nbformat.read(out, 4))
    assert "HC18 (real)" in text and "SYNTHETIC" not in text


def test_unknown_notebook_parameter_is_refused():
    with pytest.raises(ValueError, match="Unknown parameter.*epoch_count.*Known"):
        runner.run_notebook("hc18_strategies", {"epoch_count": 3})


def test_failed_notebook_is_reported_and_the_good_chapter_kept(tmp_path, empty_data_dir):
    good = tmp_path / "nb.ipynb"
    good.write_text("the good executed chapter")
    with pytest.raises(
        RuntimeError, match="(?s)FileNotFoundError.*hc18.*partly executed.*kept as it was"
    ):
        runner.run_notebook(
            "hc18_strategies", {"data_source": "hc18"}, profile="smoke", output=good, progress=False
        )
    assert good.read_text() == "the good executed chapter"
    failed = runner.failed_path(good)
    assert failed.name == "nb.failed.ipynb" and "FileNotFoundError" in failed.read_text()
    assert not list(tmp_path.glob(".*running*"))  # no temporary file left behind


def test_phantoms_chapter_smoke(tmp_path):
    out = runner.run_notebook(
        "phantoms", profile="smoke", output=tmp_path / "nb.ipynb", progress=False
    )
    nb = nbformat.read(out, 4)
    text = _outputs(nb)  # fails on any error output
    html = "".join(
        o.get("data", {}).get("text/html", "") for c in nb.cells for o in c.get("outputs", [])
    )
    assert "Rayleigh" in html and "paper-1-sized set" in text
    # the realism section: generated from the recorded check and the calibration record
    assert "Trained on phantom frames only" in text and "Domain classifier" in text
    assert "phantom-check" in text and "phantom-calibrate" in text
    figures = [
        o["data"]["application/vnd.plotly.v1+json"]
        for c in nb.cells
        for o in c.get("outputs", [])
        if "application/vnd.plotly.v1+json" in o.get("data", {})
    ]
    assert len(figures) >= 15
    for fig in figures:  # every figure says its images are synthetic
        assert "SYNTHETIC phantom" in fig["layout"]["title"]["text"]


def _cxr_runs(results_root):
    return [
        json.loads((f / "metrics.json").read_text())
        | {"params": json.loads((f / "config.json").read_text())["params"]}
        for f in sorted((results_root / "cxr_overfitting").iterdir())
    ]


def test_cxr_smoke_synthetic_end_to_end(tmp_path, isolated_results):
    out = runner.run_notebook(
        "cxr_overfitting",
        {"device": "cpu"},
        profile="smoke",
        output=tmp_path / "nb.ipynb",
        progress=False,
    )
    text = _outputs(nbformat.read(out, 4))
    assert "SYNTHETIC phantom" in text and "Weights used" in text
    runs = _cxr_runs(isolated_results)
    # VGG16's natural-image weights, when `lus weights import` has converted them
    hed = keras_weights_key("vgg16_unet", cxr.NATURAL_WEIGHTS) != "none/random"
    # 3 models at momentum 0.99 and at 0.9, GroupNorm controls of U-Net and VGG16-U-Net, the
    # random-encoder control of a pretrained VGG16-U-Net, and the 3 models at the other curve size
    assert len(runs) == 3 + 3 + 2 + hed + 3
    steps = {}
    for m in runs:
        assert 0 <= m["test_dice_inference"] <= 1 and 0 <= m["test_dice_recomputed_bn"] <= 1
        assert 0 <= m["test_dice_keras"] <= 1
        asked = m["params"]["encoder_weights"] != "none"
        if hed and asked and m["params"]["model"] == "vgg16_unet":  # the key names what loaded
            assert m["params"]["weights"].startswith("hed-bsds500:sha256:")
            assert m["weights_used"].startswith("hed-bsds500 (local file")
        else:
            assert m["params"]["weights"] == "none/random"
            assert m["weights_used"] in ("none (from scratch)", "none/random")
        if m["params"]["norm"] == "group":  # no moving statistics: both modes agree
            assert m["bn_layers"] == 0
            assert m["test_dice_inference"] == pytest.approx(m["test_dice_training"], abs=1e-3)
        else:
            assert m["bn_layers"] > 0
        steps.setdefault(m["params"]["n_train"], set()).add(m["steps"])
    assert steps == {8: {2}, 4: {2}}  # the size curve holds the number of steps fixed
    runner.run_notebook(
        "cxr_overfitting",
        {"device": "cpu"},
        profile="smoke",
        output=tmp_path / "nb2.ipynb",
        progress=False,
    )
    again = _outputs(nbformat.read(tmp_path / "nb2.ipynb", 4))
    assert f"{len(runs)} reused from the results store" in again


def test_cxr_smoke_real_shenzhen(tmp_path, real_data, isolated_results):
    if not (real_data / "shenzhen_cxr").is_dir():
        pytest.skip("Shenzhen data not present")
    out = runner.run_notebook(
        "cxr_overfitting",
        {"data_source": "shenzhen", "device": "cpu"},
        profile="smoke",
        output=tmp_path / "nb.ipynb",
        progress=False,
    )
    text = _outputs(nbformat.read(out, 4))
    assert "SHENZHEN (real)" in text and "SYNTHETIC" not in text
    assert all(
        not json.loads((f / "config.json").read_text())["synthetic"]
        for f in (isolated_results / "cxr_overfitting").iterdir()
    )

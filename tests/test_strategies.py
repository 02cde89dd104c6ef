import json

import pandas as pd
import pytest
import torch

from lus_common.models.torch_smp import count_parameters, create_model
from lus_common.studies import s4_hc18_strategies as hc18_study
from lus_common.training.freezing import (
    STRATEGIES,
    apply_strategy,
    get_strategy,
    head_parameters,
    trainable_parameters,
)

# The authors' figures and the digit they stop at (paper Fig. 1 / the issue's table). They are
# truncated, not rounded: D-0,1,2 has 4,365,568 and is given as 4.36M.
PAPER = {
    "d0": (3.76e6, 0.01e6),
    "d01": (4.24e6, 0.01e6),
    "d012": (4.36e6, 0.01e6),
    "d234": (0.164e6, 0.001e6),
    "decoder": (4.4e6, 0.1e6),
    "encoder": (2.22e6, 0.01e6),
    "baseline": (31e6, 1e6),
}


@pytest.fixture(scope="module")
def models():
    out = {}
    for s in STRATEGIES.values():
        model, _ = create_model(s.model)
        out[s.name] = (apply_strategy(model, s), s)
    return out


@pytest.mark.parametrize("name", list(PAPER))
def test_trainable_parameters_match_paper(models, name):
    model, s = models[name]
    value, step = PAPER[name]
    assert trainable_parameters(model, s) // step == round(value / step)


def test_exact_counts_of_the_authors_code(models):
    # D-4 is block 4 alone (the head frozen); the whole decoder's 4,405,073 is the authors' printed
    # trainable count, head included; the encoder alone is 2,223,872.
    assert trainable_parameters(models["d4"][0]) == 6976
    assert trainable_parameters(models["decoder"][0]) == 4_405_073
    assert trainable_parameters(models["encoder"][0]) == 2_223_872
    assert trainable_parameters(models["decoder_random"][0]) == 4_405_073
    assert [s.name for s in STRATEGIES.values() if s.head_trains] == [
        "baseline",
        "decoder",
        "decoder_random",
        "effnet_decoder",
        "effnet_decoder_random",
    ]


def test_encoder_family_control_trains_the_decoder_and_head_only(models):
    for name in ("effnet_decoder", "effnet_decoder_random"):
        model, s = models[name]
        assert model.encoder.__class__.__name__.startswith("EfficientNet")
        assert not any(p.requires_grad for p in model.encoder.parameters())
        parts = [*model.decoder.parameters(), *model.segmentation_head.parameters()]
        assert trainable_parameters(model) == sum(p.numel() for p in parts) > 0
    assert get_strategy("effnet_decoder").pretrained
    assert not get_strategy("effnet_decoder_random").pretrained


def test_random_encoder_control():
    s = get_strategy("decoder_random")
    assert not s.pretrained and not s.train_encoder and s.decoder_blocks == (0, 1, 2, 3, 4)


def test_baseline_unet_parameter_count():
    model, info = create_model("unet")
    assert count_parameters(model) == 31_037_633
    assert info.used == "none (from scratch)"


def test_whole_decoder_cuts_trainable_parameters_by_85_8_percent(models):
    dec = trainable_parameters(*models["decoder"])
    base = trainable_parameters(*models["baseline"])
    assert round(100 * (1 - dec / base), 1) == 85.8


def test_frozen_parts_get_no_gradient(models):
    model, s = models["d234"]
    model.train()
    model(torch.randn(2, 3, 64, 64)).mean().backward()
    assert model.encoder.features[0][0].weight.grad is None
    assert model.decoder.blocks[0].conv1[0].weight.grad is None
    assert model.decoder.blocks[3].conv1[0].weight.grad is not None
    assert model.segmentation_head[0].weight.grad is None  # frozen with the blocks, as the authors
    model.zero_grad(set_to_none=True)
    model, s = models["decoder"]
    model(torch.randn(2, 3, 64, 64)).mean().backward()
    assert model.segmentation_head[0].weight.grad is not None
    model.zero_grad(set_to_none=True)


def test_unknown_strategy_lists_known():
    with pytest.raises(KeyError, match="Known strategies.*baseline"):
        get_strategy("d9")
    with pytest.raises(KeyError):
        hc18_study.study_params("smoke", strategies=["decoder", "nope"])


def test_head_parameters():
    # a 3x3 convolution from 16 decoder channels to 1 class, with its bias
    assert head_parameters() == 16 * 9 + 1 == 145


def test_findings_are_generated_from_the_runs_and_the_paper():
    p = hc18_study.study_params("quick")
    col = hc18_study.report_column(p)
    dice = {"baseline": [0.90, 0.92], "decoder": [0.95, 0.97], "decoder_random": [0.80, 0.82],
            "effnet_decoder": [0.93, 0.93], "effnet_decoder_random": [0.70, 0.72]}  # fmt: skip
    runs = pd.DataFrame(
        [
            {"strategy": s, "seed": i, col: d, "weights_used": "imagenet-dogs160 (local file x)"}
            for s, values in dice.items()
            for i, d in enumerate(values)
        ]
    )
    runs.loc[~runs.strategy.isin(["decoder", "effnet_decoder"]), "weights_used"] = "none/random"
    weights = {s: {"used": u} for s, u in zip(runs.strategy, runs.weights_used)}
    text = "\n".join(hc18_study.findings(runs, p, "SYNTHETIC phantom", weights))
    assert "Best mean Dice: **decoder** (96.00 %)" in text
    assert "paper's best is the decoder strategy (96.28 %)" in text
    assert "minus baseline: +5.00 Dice points (paper: +0.75)" in text  # 96.28 - 95.53
    assert "pretrained (imagenet-dogs160 (local file x)) vs random: 96.00 % vs 81.00 %" in text
    assert "encoder-only" not in text  # no encoder runs, no sentence about them
    assert "EfficientNet-Lite0 frozen, pretrained (imagenet-dogs160 (local file x)) vs random: " \
        "93.00 % vs 71.00 % Dice, beside MobileNetV2's 96.00 % vs 81.00 %." in text  # fmt: skip
    runs["weights_used"] = "none/random"  # nothing pretrained: the page says the test is not made
    text = "\n".join(hc18_study.findings(runs, p, "SYNTHETIC phantom", weights))
    assert "comparison that measures transfer is not made" in text


def test_reference_runs_round_trip_with_the_input_range_control(tmp_path, isolated_results):
    """A reference JSON written from run folders reads back as run rows: the main runs (the study's
    [0, 1] input) feed the summary table, the [-1, 1] rerun of a strategy the input-range table,
    and the sentences carry the runs' own numbers."""
    from lus_common.studies import base

    p = hc18_study.study_params("smoke", strategies=["decoder", "decoder_random"], device="cpu")
    q = hc18_study.study_params("smoke", strategies=["decoder"], input_norm="symmetric")
    train, test = hc18_study.load_data(p)
    runs = [
        hc18_study.run_one(r, get_strategy(s), 0, train, test, torch.device("cpu"))
        for r, s in ((p, "decoder"), (p, "decoder_random"), (q, "decoder"))
    ]
    assert runs[0]["folder"] != runs[2]["folder"]  # the input range is part of the run key
    path = hc18_study.export_reference(
        [r["folder"] for r in runs], "caption", "cmd", "test CPU", p, tmp_path / "ref.json"
    )
    entry = json.loads(path.read_text())["runs"][0]
    seconds = runs[0]["history"]["seconds"]
    assert entry["epoch_seconds"] == {"first": round(seconds.iloc[0], 3),
                                      "median": round(seconds.median(), 3),
                                      "total": round(seconds.sum(), 3)}  # fmt: skip
    what, ref_p, rows = hc18_study.reference_runs(path)
    assert what == "caption" and ref_p["input_norm"] == "unit" and len(rows) == 3
    main = rows[rows["input_norm"] == "unit"]
    assert set(hc18_study.summary_table(main, ref_p).index) == {"decoder", "decoder_random"}
    table = hc18_study.input_range_table(rows, ref_p)
    assert list(table.index) == ["decoder"]
    unit, sym = (r["metrics"][hc18_study.report_column(p)] * 100 for r in (runs[0], runs[2]))
    assert table.loc["decoder", "Dice % ([0, 1] input)"] == pytest.approx(round(unit, 2))
    assert table.loc["decoder", "Dice % ([-1, 1] input)"] == pytest.approx(round(sym, 2))
    (line,) = hc18_study.input_range_findings(rows, ref_p)
    assert f"{round(sym, 2):.2f} % with [-1, 1] input against {round(unit, 2):.2f} %" in line
    with pytest.raises(FileNotFoundError, match="run_\\*_reference.py"):
        base.read_reference(tmp_path / "missing.json")


def test_timing_table_puts_epoch_seconds_beside_the_papers():
    """The reference runs recorded before epoch times were give no table and no sentence; with
    them, the median over each strategy's runs beside the paper's ~75 s (U-Net from scratch) and
    ~25 s (MobileNetV2 decoder) on a T4, and a sentence that says what differs."""
    from lus_common.studies import base

    doc = base.read_reference(hc18_study.REFERENCE_RUNS)
    keys = ("strategy", "seed", "input_norm")
    runs = base.reference_rows(doc, keys, timing=True)
    assert hc18_study.timing_table(runs).empty
    assert hc18_study.timing_findings(runs, doc["study_params"]) == []
    median = {"baseline": 30.0, "decoder": 10.0}
    for r in doc["runs"]:
        m = median.get(r["params"]["strategy"], 1.0)
        r["epoch_seconds"] = {"first": 2 * m, "median": m, "total": 5 * m}
    assert "epoch_seconds_median" not in base.reference_rows(doc, keys)  # other studies' rows
    runs = base.reference_rows(doc, keys, timing=True)
    table = hc18_study.timing_table(runs)
    assert table.loc["baseline", "s per epoch (median)"] == 30.0
    assert table.loc["decoder", "first epoch (s)"] == 20.0
    assert table.loc["decoder", "runs"] == 2  # both input ranges
    paper = "paper (NVIDIA Tesla T4, s per epoch)"
    assert table.loc["baseline", paper] == 75.0 and pd.isna(table.loc["d0", paper])
    found = hc18_study.timing_findings(runs, doc["study_params"])
    assert found[0].startswith("- baseline: 30.00 s per epoch on 2-core CPU at 64 px, batch 10, ")
    assert "639 images per epoch (0.40 of the paper's ~75 s" in found[0]
    assert found[1].startswith("- decoder: 10.00 s") and "not comparable" in found[1]
    same = hc18_study.timing_findings(runs, {**doc["study_params"], "image_size": 512})
    assert "the paper's image size and batch" in same[0]

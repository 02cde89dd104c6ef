"""The study registry, the one lookup and the shared study skeleton."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from lus_common.config.paths import PROJECT_ROOT
from lus_common.config.registry import lookup, plural
from lus_common.models.weights import WeightsInfo
from lus_common.store import results
from lus_common.studies import REGISTRY, STUDIES, base, get_study


def _toc_chapters() -> list[str]:
    toc = yaml.safe_load((PROJECT_ROOT / "book" / "_toc.yml").read_text())
    files = [c["file"] for part in toc["parts"] for c in part["chapters"]]
    return [f.split("/", 1)[1] for f in files if f.startswith("chapters/")]


def test_the_book_and_the_notebooks_are_the_registry():
    assert _toc_chapters() == [s.chapter for s in REGISTRY.values()]
    notebooks = sorted(p.name for p in (PROJECT_ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks == sorted(s.notebook for s in STUDIES.values())
    for study in REGISTRY.values():
        if study.built:
            nb = json.loads((PROJECT_ROOT / "notebooks" / study.notebook).read_text())
            first = "".join(nb["cells"][0]["source"]).splitlines()[0]
        else:
            first = (PROJECT_ROOT / "book" / "chapters" / f"{study.chapter}.md").read_text()
            first = first.splitlines()[0]
        assert first == f"# {study.title}", study.name


def test_each_study_module_has_one_spelling():
    for study in STUDIES.values():
        if study.module is None:
            continue
        module = study.load()
        number, rest = study.module[1:].split("_", 1)
        assert module.STUDY == study.name == rest and study.chapter == f"0{number}_{rest}"
        assert set(module.PROFILES) == {"paper", "quick", "smoke"}


def test_unknown_study_lists_the_built_ones():
    with pytest.raises(KeyError, match=r"Unknown study 'data_reductoin'.*data_reduction"):
        get_study("data_reductoin")
    assert get_study("hc18_strategies").notebook == "04_hc18_strategies.ipynb"


def test_lookup_names_the_options():
    assert lookup({"a": 1, "b": 2}, "b", "model") == 2
    assert lookup(("x", "y"), "y", "norm", error=ValueError) == "y"
    with pytest.raises(ValueError, match=r"Unknown norm 'z'\. Known norms: \['x', 'y'\]"):
        lookup(("x", "y"), "z", "norm", error=ValueError)
    with pytest.raises(KeyError, match="Unknown strategy"):
        lookup({"a": 1}, ["a"], "strategy")  # an unhashable value is unknown, not a TypeError
    assert [plural(k) for k in ("study", "model", "weights", "key")] == [
        "studies",
        "models",
        "weights",
        "keys",
    ]


def test_profiles_are_the_paper_plus_differences():
    profiles = base.derive_profiles(dict(epochs=20, lr=1e-4), quick=dict(epochs=3))
    assert profiles == {"paper": {"epochs": 20, "lr": 1e-4}, "quick": {"epochs": 3, "lr": 1e-4}}
    with pytest.raises(KeyError, match="Unknown parameter of the paper profile.*'epoch'"):
        base.derive_profiles(dict(epochs=20), quick=dict(epoch=3))  # a typo adds nothing


def test_cached_run_reuses_and_rekeys_weights_that_did_not_load(isolated_results):
    calls = []

    def build(used):
        def make():
            calls.append("build")
            return object(), WeightsInfo("imagenet", used)

        return make

    def fit(model, weights, key):
        calls.append("fit")
        history = pd.DataFrame({"epoch": [1], "loss": [0.5]})
        return {
            "config": {"weights": weights.as_dict(), "params": key},
            "metrics": {"dice": 0.8},
            "history": history,
        }

    key = {"lr": 1e-3, "weights": "imagenet:sha256:abc"}
    run = base.cached_run("demo", key, ("lr",), build("none/random"), fit)
    # the weights did not load: the run is stored as none/random, not under the weights it missed
    assert not run["reused"] and run["config"]["params"]["weights"] == "none/random"
    assert calls == ["build", "fit"]
    # the same request again: the stored random run is found after the build, not trained again
    again = base.cached_run("demo", key, ("lr",), build("none/random"), fit)
    assert again["reused"] and calls == ["build", "fit", "build"]
    # a run whose weights loaded is stored under its own key and reused without a build
    ok = base.cached_run("demo", key, ("lr",), build("imagenet (local file)"), fit)
    assert not ok["reused"] and ok["config"]["params"]["weights"] == "imagenet:sha256:abc"
    assert base.cached_run("demo", key, ("lr",), build("x"), fit)["reused"]
    assert calls == ["build", "fit", "build", "build", "fit"]


def test_collector_gathers_main_runs_only_where_asked():
    def run(dice, reused):
        return {
            "metrics": {"dice": dice},
            "reused": reused,
            "config": {"weights": {"used": "w"}},
            "history": pd.DataFrame({"epoch": [1, 2]}),
            "per_image": pd.DataFrame({"id": [7]}),
            "arrays": {"probs": np.full((1, 2, 2), 255, np.uint8)},
        }

    c = base.Collector()
    decode = lambda arrays: results.decode_probabilities(arrays["probs"])
    c.add(
        run(0.9, True), {"model": "a", "seed": 0}, main={"model": "a"}, name="a", predictions=decode
    )
    c.add(
        run(0.7, False),
        {"model": "a", "seed": 1},
        main={"model": "a"},
        name="a",
        predictions=decode,
    )
    c.add(run(0.1, False), {"model": "a", "seed": 0, "n_train": 4})  # a side run: one row only
    out = c.result(device="cpu")
    assert out["runs"]["dice"].tolist() == [0.9, 0.7, 0.1] and out["reused"] == 1
    assert len(out["histories"]) == 4 and len(out["per_image"]) == 2 and out["device"] == "cpu"
    assert out["predictions"]["a"].max() == 1.0 and out["weights"] == {"a": {"used": "w"}}

import json

import numpy as np
import pandas as pd

from lus_common.store import results


def test_hash_ignores_key_order_and_name_is_readable():
    assert results.params_hash({"a": 1, "b": [1, 2]}) == results.params_hash({"b": [1, 2], "a": 1})
    assert results.params_hash({"a": 1}) != results.params_hash({"a": 2})
    folder = results.run_dir("s", {"strategy": "d4", "seed": 1, "lr": 1e-4}, ("strategy", "seed"))
    assert folder.name.startswith("strategy-d4__seed-1__")


def test_save_and_load_roundtrip(isolated_results):
    folder = results.run_dir("s", {"x": 1})
    hist = pd.DataFrame({"epoch": [1, 2], "train_loss": [0.7, 0.5]})
    results.save_run(
        folder,
        {"x": 1},
        {"dice": np.float32(0.5), "nan": float("nan")},
        hist,
        tables={"per_image": pd.DataFrame({"dice": [0.4, 0.6]})},
        arrays={"probs": np.arange(4, dtype=np.uint8)},
    )
    assert results.is_complete(folder)
    run = results.load_run(folder)
    assert run["metrics"] == {"dice": 0.5, "nan": None}
    assert run["history"].train_loss.tolist() == [0.7, 0.5]
    assert run["per_image"].dice.tolist() == [0.4, 0.6]
    assert run["arrays"]["probs"].tolist() == [0, 1, 2, 3]
    assert not list(folder.parent.glob(".*"))  # no temporary folder left behind


def test_incomplete_folder_is_not_reused_and_is_replaced(isolated_results):
    folder = results.run_dir("s", {"x": 2})
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    assert not results.is_complete(folder)
    results.save_run(folder, {"x": 2}, {"dice": 1.0}, pd.DataFrame({"epoch": [1]}))
    assert json.loads((folder / "metrics.json").read_text()) == {"dice": 1.0}


def test_failed_write_leaves_nothing(isolated_results):
    folder = results.run_dir("s", {"x": 3})

    class Boom:
        def to_csv(self, *a, **k):
            raise OSError("disk full")

    try:
        results.save_run(folder, {}, {}, Boom())
    except OSError:
        pass
    assert not folder.exists()
    assert not list(folder.parent.iterdir())


def test_probability_codec_rounds_to_1_over_255():
    probs = np.linspace(0, 1, 1001, dtype=np.float32)
    codes = results.encode_probabilities(probs)
    assert codes.dtype == np.uint8 and codes[0] == 0 and codes[-1] == 255
    assert np.abs(results.decode_probabilities(codes) - probs).max() <= 0.5 / 255 + 1e-7

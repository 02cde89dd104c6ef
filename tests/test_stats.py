import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from lus_common.stats import anova_tukey, format_mean_std, mean_std, welch_t


def test_anova_of_textbook_groups():
    df = pd.DataFrame({"g": ["a"] * 3 + ["b"] * 3, "v": [1, 2, 3, 4, 5, 6]})
    anova, pairs = anova_tukey(df, "g", "v")
    assert anova["F"] == pytest.approx(13.5)  # SSB 13.5 / (SSW 4 / 4)
    assert pairs.loc[0, "mean_diff"] == pytest.approx(-3.0)
    # With two groups Tukey's HSD equals the pooled two-sample t-test.
    assert pairs.loc[0, "p_tukey"] == pytest.approx(sps.ttest_ind([1, 2, 3], [4, 5, 6]).pvalue, rel=1e-3)


def test_anova_refuses_single_observations():
    df = pd.DataFrame({"g": ["a", "b", "b"], "v": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match="two observations"):
        anova_tukey(df, "g", "v")


def test_welch_matches_hand_computation():
    a, b = np.array([1.0, 2, 3, 4]), np.array([2.0, 4, 6, 8, 10])
    t = (a.mean() - b.mean()) / np.sqrt(a.var(ddof=1) / 4 + b.var(ddof=1) / 5)
    assert welch_t(a, b)["t"] == pytest.approx(t)


def test_mean_std_and_format():
    df = pd.DataFrame({"s": ["x", "x", "y"], "dice": [0.9, 0.8, 0.7]})
    ms = mean_std(df, "s", ["dice"])
    assert ms.loc["x", "dice_mean"] == pytest.approx(0.85)
    assert ms.loc["x", "dice_std"] == pytest.approx(np.std([0.9, 0.8], ddof=1))
    assert np.isnan(ms.loc["y", "dice_std"])
    assert format_mean_std(0.9628, 0.0031, 100) == "96.28 ± 0.31"
    assert format_mean_std(0.5, float("nan"), 100) == "50.00"

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from lus_common.evaluation import stats
from lus_common.evaluation.stats import anova_tukey, format_mean_std, mean_std, welch_t


def test_anova_of_textbook_groups():
    df = pd.DataFrame({"g": ["a"] * 3 + ["b"] * 3, "v": [1, 2, 3, 4, 5, 6]})
    anova, pairs = anova_tukey(df, "g", "v")
    assert anova["F"] == pytest.approx(13.5)  # SSB 13.5 / (SSW 4 / 4)
    assert pairs.loc[0, "mean_diff"] == pytest.approx(-3.0)
    # With two groups Tukey's HSD equals the pooled two-sample t-test.
    assert pairs.loc[0, "p_tukey"] == pytest.approx(
        sps.ttest_ind([1, 2, 3], [4, 5, 6]).pvalue, rel=1e-3
    )


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


def test_paired_comparison_sees_what_an_unpaired_test_misses():
    """Strategies scored on the same test images: a small, consistent shift on very different
    images."""
    rng = np.random.default_rng(0)
    base = rng.uniform(0.5, 0.95, 20)  # image difficulty varies a lot
    df = pd.DataFrame(
        {
            "id": np.tile(np.arange(20), 3),
            "strategy": np.repeat(["a", "b", "c"], 20),
            "dice": np.concatenate(
                [base, base + 0.01 + rng.normal(0, 0.002, 20), base + rng.normal(0, 0.002, 20)]
            ),
        }
    )
    friedman, pairs = stats.friedman_wilcoxon(df, "strategy", "dice", block="id")
    assert (friedman["k"], friedman["n"]) == (3, 20) and friedman["p"] < 1e-4
    ab = pairs[(pairs.a == "a") & (pairs.b == "b")].iloc[0]
    assert ab.p_wilcoxon == pytest.approx(sps.wilcoxon(base - df.dice[20:40].to_numpy()).pvalue)
    assert ab.p_wilcoxon < 1e-4 and ab.median_diff == pytest.approx(-0.01, abs=0.002)
    # Welch's unpaired test sees nothing in the same numbers.
    assert stats.welch_t(df.dice[:20], df.dice[20:40])["p"] > 0.5
    # Holm: the smallest p times 3, then times 2, ..., never decreasing.
    order = pairs.sort_values("p_wilcoxon")
    expected = np.maximum.accumulate(np.minimum(1, order.p_wilcoxon.to_numpy() * [3, 2, 1]))
    np.testing.assert_allclose(order.p_holm, expected)


def test_paired_comparison_needs_two_groups_and_blocks():
    df = pd.DataFrame({"id": [0, 1], "strategy": ["a", "a"], "dice": [0.5, 0.6]})
    with pytest.raises(ValueError, match="at least two groups"):
        stats.friedman_wilcoxon(df, "strategy", "dice", block="id")

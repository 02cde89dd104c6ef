"""Statistics across seeds and strategies: mean ± std, one-way ANOVA + Tukey HSD and Welch's t-test
for independent runs; Friedman + Wilcoxon signed-rank (Holm) for paired per-image scores; the paired
t-test and Wilcoxon test of two conditions on the same units."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats


def mean_std(df: pd.DataFrame, by: str, columns: list[str]) -> pd.DataFrame:
    """Mean and standard deviation (ddof=1; NaN for one value) of ``columns`` per ``by`` group.

    Returns:
        A frame indexed by group with ``<col>_mean`` and ``<col>_std`` columns and ``n``.
    """
    grouped = df.groupby(by, sort=False)[columns]
    out = grouped.mean().add_suffix("_mean").join(grouped.std(ddof=1).add_suffix("_std"))
    out["n"] = grouped.size()
    return out


def format_mean_std(mean: float, std: float, scale: float = 1.0, digits: int = 2) -> str:
    """``"96.28 ± 0.31"`` (``std`` NaN gives the mean alone; ``mean`` NaN gives "–")."""
    if np.isnan(mean):
        return "–"
    if np.isnan(std):
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def anova_tukey(df: pd.DataFrame, group: str, value: str) -> tuple[dict, pd.DataFrame]:
    """One-way ANOVA across groups, then Tukey's HSD for every pair.

    Args:
        df: one row per observation.
        group: column naming the group (e.g. strategy).
        value: column with the observed value (e.g. Dice).

    Returns:
        ``(anova, pairs)``: ``anova`` has ``F``, ``p``, ``k`` groups and ``n`` observations;
        ``pairs`` one row per pair with the mean difference, its 95 % interval and Tukey's p.

    Raises:
        ValueError: fewer than two groups, or a group with fewer than two observations.
    """
    names = list(dict.fromkeys(df[group]))
    samples = [df.loc[df[group] == g, value].to_numpy(float) for g in names]
    if len(samples) < 2:
        raise ValueError("ANOVA needs at least two groups.")
    small = [g for g, s in zip(names, samples) if len(s) < 2]
    if small:
        raise ValueError(f"ANOVA needs at least two observations per group; too few in {small}.")
    f, p = stats.f_oneway(*samples)
    tukey = stats.tukey_hsd(*samples)
    ci = tukey.confidence_interval(confidence_level=0.95)
    rows = []
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            rows.append(
                {
                    "a": names[i],
                    "b": names[j],
                    "mean_diff": samples[i].mean() - samples[j].mean(),
                    "ci_low": ci.low[i, j],
                    "ci_high": ci.high[i, j],
                    "p_tukey": tukey.pvalue[i, j],
                }
            )
    anova = {"F": float(f), "p": float(p), "k": len(names), "n": int(sum(map(len, samples)))}
    return anova, pd.DataFrame(rows)


def welch_t(a, b) -> dict:
    """Welch's unequal-variance t-test between two samples.

    Returns:
        ``{"t", "p", "mean_a", "mean_b"}``.
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    res = stats.ttest_ind(a, b, equal_var=False)
    return {
        "t": float(res.statistic),
        "p": float(res.pvalue),
        "mean_a": a.mean(),
        "mean_b": b.mean(),
    }


def friedman_wilcoxon(
    df: pd.DataFrame, group: str, value: str, block: str
) -> tuple[dict, pd.DataFrame]:
    """Paired comparison of groups measured on the same blocks (e.g. strategies on the same test
    images).

    Scores of one block and group (several seeds) are averaged first. Friedman's test across groups,
    then Wilcoxon's signed-rank test for every pair, with Holm's step-down correction.

    Args:
        df: one row per (block, group) observation.
        group: column naming the group (e.g. strategy).
        value: the observed value (e.g. Dice).
        block: the pairing unit (e.g. test image id); only blocks seen under every group are used.

    Returns:
        ``(friedman, pairs)``: ``friedman`` has ``chi2``, ``p``, ``k`` groups and ``n`` blocks;
        ``pairs`` one row per pair with the median paired difference, Wilcoxon's p and Holm's p.

    Raises:
        ValueError: fewer than two groups, or fewer than two complete blocks.
    """
    table = df.pivot_table(
        index=block, columns=group, values=value, aggfunc="mean", sort=False
    ).dropna()
    names = list(dict.fromkeys(df[group]))
    table = table[names]
    if len(names) < 2 or len(table) < 2:
        raise ValueError(
            "A paired comparison needs at least two groups and two blocks seen under every group."
        )
    if len(names) >= 3:
        chi2, p = stats.friedmanchisquare(*(table[g].to_numpy(float) for g in names))
    else:
        chi2, p = float("nan"), float("nan")
    rows = []
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            diff = table[names[i]].to_numpy(float) - table[names[j]].to_numpy(float)
            p_w = float(stats.wilcoxon(diff).pvalue) if np.any(diff != 0) else 1.0
            rows.append(
                {
                    "a": names[i],
                    "b": names[j],
                    "median_diff": float(np.median(diff)),
                    "p_wilcoxon": p_w,
                }
            )
    pairs = pd.DataFrame(rows)
    order = np.argsort(pairs["p_wilcoxon"].to_numpy())
    m, running, holm = len(pairs), 0.0, np.empty(len(pairs))
    for rank, idx in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pairs["p_wilcoxon"].iloc[idx]))
        holm[idx] = running
    pairs["p_holm"] = holm
    return {"chi2": float(chi2), "p": float(p), "k": len(names), "n": len(table)}, pairs


def paired_difference(a, b) -> dict:
    """Two conditions measured on the same units (e.g. dense and sparse labels on the same folds and
    seeds): the mean difference ``a - b``, the paired t-test and Wilcoxon's signed-rank test.

    Returns:
        ``{"n", "mean_a", "mean_b", "mean_diff", "p_t", "p_wilcoxon"}``; the p-values are NaN with
        fewer than two pairs, and Wilcoxon's is 1.0 when every difference is zero. With n pairs
        the smallest two-sided Wilcoxon p is 2 / 2**n (0.25 for three folds).
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.shape} vs {b.shape}")
    diff = a - b
    n = len(diff)
    p_t = p_w = float("nan")
    if n >= 2:
        p_t = float(stats.ttest_rel(a, b).pvalue) if np.ptp(diff) > 0 else float("nan")
        p_w = float(stats.wilcoxon(diff).pvalue) if np.any(diff != 0) else 1.0
    return {
        "n": n,
        "mean_a": float(a.mean()) if n else float("nan"),
        "mean_b": float(b.mean()) if n else float("nan"),
        "mean_diff": float(diff.mean()) if n else float("nan"),
        "p_t": p_t,
        "p_wilcoxon": p_w,
    }


def format_p(p: float) -> str:
    """``"p = 0.034"``, ``"p < 0.001"`` below a thousandth, ``"p n/a"`` for NaN."""
    if p is None or np.isnan(p):
        return "p n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"

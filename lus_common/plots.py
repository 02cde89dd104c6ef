"""Plotly figures for the chapters. Each function returns a figure; none shows or saves it.

Every title carries the data label (e.g. "SYNTHETIC phantom") so no synthetic figure can be
mistaken for real data.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from skimage.segmentation import find_boundaries

TRUTH_RGB = (0, 220, 0)
PRED_RGB = (255, 40, 40)


def learning_curves(histories: pd.DataFrame, data_label: str, metric: str = "val_dice") -> go.Figure:
    """Training loss and a validation metric per epoch, mean over seeds, one line per group.

    Args:
        histories: rows with ``strategy, seed, epoch, train_loss`` and ``metric``.
        data_label: e.g. ``"SYNTHETIC phantom"``.
        metric: validation column for the right panel.
    """
    mean = histories.groupby(["strategy", "epoch"], sort=False)[["train_loss", metric]].mean().reset_index()
    fig = make_subplots(rows=1, cols=2, subplot_titles=("training loss (BCE)", f"test {metric.replace('val_', '')}"))
    for i, (name, g) in enumerate(mean.groupby("strategy", sort=False)):
        color = _palette(i)
        fig.add_trace(go.Scatter(x=g.epoch, y=g.train_loss, name=name, legendgroup=name, line=dict(color=color)), 1, 1)
        fig.add_trace(go.Scatter(x=g.epoch, y=g[metric], name=name, legendgroup=name, showlegend=False,
                                 line=dict(color=color)), 1, 2)
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(title=f"Learning curves, mean over seeds — {data_label}", height=420)
    return fig


def bar_with_error(runs: pd.DataFrame, metric: str, data_label: str, paper: dict | None = None,
                   scale: float = 100.0, unit: str = "%") -> go.Figure:
    """Mean ± std over seeds of one metric per strategy, with the paper's value where known."""
    g = runs.groupby("strategy", sort=False)[metric]
    mean, std = g.mean() * scale, g.std(ddof=1).fillna(0) * scale
    fig = go.Figure(go.Bar(x=mean.index, y=mean.values, error_y=dict(type="data", array=std.values),
                           name="this run"))
    if paper:
        keys = [k for k in mean.index if paper.get(k) is not None and not pd.isna(paper.get(k))]
        fig.add_trace(go.Scatter(x=keys, y=[paper[k] for k in keys], mode="markers", name="paper",
                                 marker=dict(symbol="diamond", size=12, color="black")))
    fig.update_layout(title=f"{metric} ({unit}) per strategy, mean ± std over seeds — {data_label}",
                      yaxis_title=f"{metric} ({unit})", height=420)
    return fig


def params_vs_metric(runs: pd.DataFrame, metric: str, data_label: str, scale: float = 100.0) -> go.Figure:
    """Trainable parameters (log scale) against a metric, one point per strategy (paper Fig. 1b)."""
    g = runs.groupby("strategy", sort=False).agg(params=("trainable_params", "first"),
                                                  mean=(metric, "mean"), std=(metric, "std"))
    fig = go.Figure(go.Scatter(x=g.params, y=g["mean"] * scale, text=g.index, mode="markers+text",
                               textposition="top center",
                               error_y=dict(type="data", array=g["std"].fillna(0).values * scale)))
    fig.update_xaxes(type="log", title_text="trainable parameters (log)")
    fig.update_layout(title=f"Trainable parameters vs {metric} — {data_label}", yaxis_title=f"{metric} (%)",
                      height=420)
    return fig


def overlay_rgb(image: np.ndarray, truth: np.ndarray, prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Grey image with the true outline in green and the predicted outline in red, uint8 RGB."""
    rgb = np.repeat((np.clip(image, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=-1)
    rgb[find_boundaries(truth > 0, mode="inner")] = TRUTH_RGB
    rgb[find_boundaries(prob > threshold, mode="inner")] = PRED_RGB
    return rgb


def overlay_slider(images: np.ndarray, truths: np.ndarray, probs: dict[str, np.ndarray], data_label: str,
                   threshold: float = 0.5) -> go.Figure:
    """Image / truth (green) / prediction (red) overlays with a slider over test images.

    A plotly slider runs in the static book with no server and no network.

    Args:
        images: (N, H, W) test images.
        truths: (N, H, W) true masks.
        probs: strategy -> (N, H, W) predicted probabilities; one panel per strategy.
        data_label: data label for the title.
        threshold: cut-off for the predicted outline.
    """
    names = list(probs)
    n = min(len(images), *(len(p) for p in probs.values()))
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, horizontal_spacing=0.01)
    for k in range(n):
        for j, name in enumerate(names):
            fig.add_trace(go.Image(z=overlay_rgb(images[k], truths[k], probs[name][k], threshold),
                                   visible=(k == 0), name=f"{name} #{k}"), 1, j + 1)
    steps = []
    for k in range(n):
        visible = [False] * (n * len(names))
        visible[k * len(names):(k + 1) * len(names)] = [True] * len(names)
        steps.append(dict(method="update", args=[{"visible": visible}], label=str(k)))
    fig.update_layout(sliders=[dict(active=0, steps=steps, currentvalue=dict(prefix="test image "))],
                      title=f"Truth (green) and prediction (red) at {threshold} — {data_label}",
                      height=360 + 40, margin=dict(l=10, r=10, t=80, b=10))
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    return fig


def image_grid(images: np.ndarray, masks: np.ndarray, data_label: str, n: int = 6) -> go.Figure:
    """A row of sample images with their mask outlines (green)."""
    n = min(n, len(images))
    fig = make_subplots(rows=1, cols=n, horizontal_spacing=0.01)
    for k in range(n):
        rgb = overlay_rgb(images[k], masks[k], np.zeros_like(images[k]))
        fig.add_trace(go.Image(z=rgb), 1, k + 1)
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    fig.update_layout(title=f"Sample images with the head outline — {data_label}", height=260,
                      margin=dict(l=10, r=10, t=60, b=10))
    return fig


def _palette(i: int) -> str:
    import plotly.colors

    colors = plotly.colors.qualitative.Plotly
    return colors[i % len(colors)]

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

from lus_common.store.environment import environment_line

TRUTH_RGB = (0, 220, 0)
PRED_RGB = (255, 40, 40)
BOOK_RENDERER = "lus_book"


def notebook_setup(packages=("numpy", "pandas"), device: str | None = None) -> None:
    """Set up a chapter: plotly figures that work in JupyterLab and in the book, offline, with
    plotly.js once per book; then print the environment line (versions of ``packages``, and the
    device) that every Setup cell shows
    (:func:`lus_common.store.environment.environment_line`).

    Each figure's output carries the plotly mimetype (drawn by JupyterLab's plotly extension) and an
    HTML ``div`` with the figure's data that calls ``Plotly.newPlot``. The HTML carries neither
    plotly.js nor MathJax: the book loads plotly.js once, from its own ``_static/plotly.min.js``
    (:func:`lus_common.app.runner.build_book` puts it there), so pages stay small and need no
    network.
    """
    import plotly.io as pio
    from plotly.io.base_renderers import MimetypeRenderer

    class BookRenderer(MimetypeRenderer):
        def to_mimebundle(self, fig_dict):
            html = pio.to_html(
                fig_dict,
                include_plotlyjs=False,
                include_mathjax=False,
                full_html=False,
                validate=False,
            )
            return {"text/html": html}

    pio.renderers[BOOK_RENDERER] = BookRenderer()
    pio.renderers.default = f"plotly_mimetype+{BOOK_RENDERER}"
    print(environment_line(packages, device))


def plotly_js_path():
    """The plotly.js bundled with the installed plotly package (the one the figures were made
    for)."""
    from pathlib import Path

    import plotly

    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: the plotly package is incomplete; reinstall it."
        )
    return path


def learning_curves(
    histories: pd.DataFrame,
    data_label: str,
    metric: str = "val_dice",
    group: str = "strategy",
    loss_name: str = "BCE",
    metric_name: str | None = None,
) -> go.Figure:
    """Training loss and a validation metric per epoch, mean over seeds, one line per group.

    Args:
        histories: rows with ``group, seed, epoch, train_loss`` and ``metric``.
        data_label: e.g. ``"SYNTHETIC phantom"``.
        metric: validation column for the right panel.
        group: column naming the line (strategy, model).
        loss_name: the training loss, for the left panel's title.
        metric_name: title of the right panel (default: "test <metric>").
    """
    mean = (
        histories.groupby([group, "epoch"], sort=False)[["train_loss", metric]].mean().reset_index()
    )
    right = metric_name or f"test {metric.replace('val_', '')}"
    fig = make_subplots(rows=1, cols=2, subplot_titles=(f"training loss ({loss_name})", right))
    for i, (name, g) in enumerate(mean.groupby(group, sort=False)):
        color = _palette(i)
        fig.add_trace(
            go.Scatter(
                x=g.epoch, y=g.train_loss, name=name, legendgroup=name, line=dict(color=color)
            ),
            1,
            1,
        )
        fig.add_trace(
            go.Scatter(
                x=g.epoch,
                y=g[metric],
                name=name,
                legendgroup=name,
                showlegend=False,
                line=dict(color=color),
            ),
            1,
            2,
        )
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(title=f"Learning curves, mean over seeds — {data_label}", height=420)
    return fig


def bar_with_error(
    runs: pd.DataFrame,
    metric: str,
    data_label: str,
    paper: dict | None = None,
    scale: float = 100.0,
    unit: str = "%",
) -> go.Figure:
    """Mean ± std over seeds of one metric per strategy, with the paper's value where known."""
    g = runs.groupby("strategy", sort=False)[metric]
    mean, std = g.mean() * scale, g.std(ddof=1).fillna(0) * scale
    fig = go.Figure(
        go.Bar(
            x=mean.index,
            y=mean.values,
            error_y=dict(type="data", array=std.values),
            name="this run",
        )
    )
    if paper:
        keys = [k for k in mean.index if paper.get(k) is not None and not pd.isna(paper.get(k))]
        fig.add_trace(
            go.Scatter(
                x=keys,
                y=[paper[k] for k in keys],
                mode="markers",
                name="paper",
                marker=dict(symbol="diamond", size=12, color="black"),
            )
        )
    fig.update_layout(
        title=f"{metric} ({unit}) per strategy, mean ± std over seeds — {data_label}",
        yaxis_title=f"{metric} ({unit})",
        height=420,
    )
    return fig


def params_vs_metric(
    runs: pd.DataFrame, metric: str, data_label: str, scale: float = 100.0
) -> go.Figure:
    """Trainable parameters (log scale) against a metric, one point per strategy (paper Fig. 1b)."""
    g = runs.groupby("strategy", sort=False).agg(
        params=("trainable_params", "first"), mean=(metric, "mean"), std=(metric, "std")
    )
    fig = go.Figure(
        go.Scatter(
            x=g.params,
            y=g["mean"] * scale,
            text=g.index,
            mode="markers+text",
            textposition="top center",
            error_y=dict(type="data", array=g["std"].fillna(0).values * scale),
        )
    )
    fig.update_xaxes(type="log", title_text="trainable parameters (log)")
    fig.update_layout(
        title=f"Trainable parameters vs {metric} — {data_label}",
        yaxis_title=f"{metric} (%)",
        height=420,
    )
    return fig


def overlay_rgb(
    image: np.ndarray, truth: np.ndarray, prob: np.ndarray, threshold: float = 0.5
) -> np.ndarray:
    """Grey image with the true outline in green and the predicted outline in red, uint8 RGB."""
    rgb = np.repeat((np.clip(image, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=-1)
    rgb[find_boundaries(truth > 0, mode="inner")] = TRUTH_RGB
    rgb[find_boundaries(prob > threshold, mode="inner")] = PRED_RGB
    return rgb


def overlay_slider(
    images: np.ndarray,
    truths: np.ndarray,
    probs: dict[str, np.ndarray],
    data_label: str,
    threshold: float = 0.5,
) -> go.Figure:
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
            fig.add_trace(
                go.Image(
                    z=overlay_rgb(images[k], truths[k], probs[name][k], threshold),
                    visible=(k == 0),
                    name=f"{name} #{k}",
                ),
                1,
                j + 1,
            )
    steps = []
    for k in range(n):
        visible = [False] * (n * len(names))
        visible[k * len(names) : (k + 1) * len(names)] = [True] * len(names)
        steps.append(dict(method="update", args=[{"visible": visible}], label=str(k)))
    fig.update_layout(
        sliders=[dict(active=0, steps=steps, currentvalue=dict(prefix="test image "))],
        title=f"Truth (green) and prediction (red) at {threshold} — {data_label}",
        height=360 + 40,
        margin=dict(l=10, r=10, t=80, b=10),
    )
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
    fig.update_layout(
        title=f"Sample images with the head outline — {data_label}",
        height=260,
        margin=dict(l=10, r=10, t=60, b=10),
    )
    return fig


def _palette(i: int) -> str:
    import plotly.colors

    colors = plotly.colors.qualitative.Plotly
    return colors[i % len(colors)]


# Paper 5's Fig. 2 colours, by dense class index (background, A-line, B-line, healthy pleural line,
# unhealthy pleural line, healthy region, unhealthy region).
CLASS_RGB = np.array(
    [[0, 0, 0], [0, 120, 255], [255, 200, 0], [0, 230, 0], [255, 0, 0], [0, 90, 40], [110, 0, 40]],
    dtype=np.uint8,
)


# The sparse classes (background, A-line, B-line, pleural line): A- and B-lines as in the dense map,
# the merged pleural line in its own colour.
SPARSE_RGB = np.array([[0, 0, 0], [0, 120, 255], [255, 200, 0], [255, 0, 255]], dtype=np.uint8)


def class_overlay_rgb(
    image: np.ndarray, classes: np.ndarray, alpha: float = 0.45, palette: np.ndarray = CLASS_RGB
) -> np.ndarray:
    """Grey image with a class map blended on top (class 0 left uncoloured); ``palette`` gives one
    RGB colour per class (default the dense classes', :data:`SPARSE_RGB` for sparse maps)."""
    grey = np.repeat((np.clip(image, 0, 1) * 255)[..., None], 3, axis=2)
    colour = np.asarray(palette)[classes].astype(float)
    a = np.where(classes[..., None] > 0, alpha, 0.0)
    return ((1 - a) * grey + a * colour).astype(np.uint8)


def class_legend(names, palette: np.ndarray = CLASS_RGB) -> str:
    """A markdown line naming each class beside a square of its colour."""
    return " · ".join(
        f'<span style="color:rgb({r},{g},{b})">■</span> {name}'
        for name, (r, g, b) in zip(names, np.asarray(palette).tolist())
    )


def png_source(panel: np.ndarray) -> str:
    """A PNG data URI of a grey image in [0, 1] or an RGB uint8 image (compact in the book's
    HTML)."""
    import base64
    import io

    from PIL import Image

    z = panel if panel.ndim == 3 else (np.clip(panel, 0, 1) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(z).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def gallery(
    panels: list[np.ndarray],
    titles: list[str],
    data_label: str,
    title: str,
    cols: int = 4,
    height_per_row: int = 260,
) -> go.Figure:
    """Images (grey 2-D in [0, 1], or RGB uint8) in a grid with a title per panel."""
    rows = -(-len(panels) // cols)
    fig = make_subplots(
        rows=rows, cols=cols, subplot_titles=titles, horizontal_spacing=0.01, vertical_spacing=0.06
    )
    for i, panel in enumerate(panels):
        fig.add_trace(go.Image(source=png_source(panel)), i // cols + 1, i % cols + 1)
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    fig.update_annotations(font_size=11)
    fig.update_layout(
        title=f"{title} — {data_label}",
        height=height_per_row * rows + 60,
        margin=dict(l=10, r=10, t=80, b=10),
    )
    return fig


def speckle_histogram(samples: np.ndarray, data_label: str) -> go.Figure:
    """Histogram of envelope samples (scaled to unit mean) against the Rayleigh density of the same
    mean."""
    x = np.asarray(samples, dtype=float) / np.mean(samples)
    sigma = 1 / np.sqrt(np.pi / 2)  # Rayleigh scale for unit mean
    grid = np.linspace(0, x.max(), 200)
    fig = go.Figure()
    fig.add_trace(
        go.Histogram(x=x, histnorm="probability density", nbinsx=60, name="phantom envelope")
    )
    fig.add_trace(
        go.Scatter(
            x=grid,
            y=grid / sigma**2 * np.exp(-(grid**2) / (2 * sigma**2)),
            name="Rayleigh",
            line=dict(width=3),
        )
    )
    fig.update_layout(
        title=f"Envelope in fully developed speckle vs Rayleigh — {data_label}",
        xaxis_title="envelope / mean",
        yaxis_title="density",
        height=380,
    )
    return fig


def profile_plot(
    profiles: dict[str, np.ndarray],
    data_label: str,
    title: str,
    x_title: str = "depth (pixels)",
    marks: dict[str, float] | None = None,
) -> go.Figure:
    """Lines of 1-D profiles by name, with optional vertical marks (e.g. expected A-line depths)."""
    fig = go.Figure()
    for i, (name, y) in enumerate(profiles.items()):
        fig.add_trace(go.Scatter(y=y, name=name, line=dict(color=_palette(i))))
    for name, x in (marks or {}).items():
        fig.add_vline(x=x, line_dash="dot", annotation_text=name)
    fig.update_layout(
        title=f"{title} — {data_label}", xaxis_title=x_title, yaxis_title="intensity", height=380
    )
    return fig


def video_player(frames: np.ndarray, data_label: str, title: str) -> go.Figure:
    """Frames of one video with a play button and a frame slider."""
    sources = [png_source(f) for f in frames]
    fig = go.Figure(
        go.Image(source=sources[0]),
        frames=[go.Frame(data=[go.Image(source=s)], name=str(i)) for i, s in enumerate(sources)],
    )
    steps = [
        dict(
            method="animate",
            label=str(i),
            args=[[str(i)], dict(mode="immediate", frame=dict(duration=0))],
        )
        for i in range(len(sources))
    ]
    fig.update_layout(
        title=f"{title} — {data_label}",
        height=460,
        xaxis=dict(visible=False),
        yaxis=dict(visible=False),
        updatemenus=[
            dict(
                type="buttons",
                x=0.0,
                y=-0.02,
                buttons=[
                    dict(
                        label="play",
                        method="animate",
                        args=[None, dict(frame=dict(duration=80), fromcurrent=True)],
                    )
                ],
            )
        ],
        sliders=[dict(steps=steps, x=0.12, len=0.88, currentvalue=dict(prefix="frame "))],
    )
    return fig

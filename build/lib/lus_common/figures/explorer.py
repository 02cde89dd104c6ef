"""An ipywidgets explorer for JupyterLab: image slider, threshold slider, strategy choice, overlay.

The static book cannot run widgets; there the plotly slider of
:func:`lus_common.figures.plots.overlay_slider` plays the same role.
"""

from __future__ import annotations

import numpy as np


def segmentation_explorer(
    images: np.ndarray, truths: np.ndarray, probs: dict[str, np.ndarray], data_label: str
):
    """Interactive overlay of truth (green) and prediction (red) with sliders.

    Args:
        images: (N, H, W) test images in [0, 1].
        truths: (N, H, W) true masks.
        probs: strategy -> (N, H, W) probabilities.
        data_label: shown above the image.

    Returns:
        An ``ipywidgets.VBox`` (display it in a notebook).
    """
    import io

    import ipywidgets as w
    from PIL import Image

    from lus_common.evaluation.metrics import segmentation_scores
    from lus_common.figures.plots import overlay_rgb

    n = min(len(images), *(len(p) for p in probs.values()))
    index = w.IntSlider(0, 0, n - 1, description="image")
    threshold = w.FloatSlider(value=0.5, min=0.01, max=0.99, step=0.01, description="threshold")
    strategy = w.Dropdown(options=list(probs), description="strategy")
    picture = w.Image(format="png", width=384)
    caption = w.HTML()

    def update(*_):
        rgb = overlay_rgb(
            images[index.value],
            truths[index.value],
            probs[strategy.value][index.value],
            threshold.value,
        )
        buf = io.BytesIO()
        Image.fromarray(rgb).resize((384, 384), Image.NEAREST).save(buf, format="png")
        picture.value = buf.getvalue()
        k = index.value
        dice = segmentation_scores(
            probs[strategy.value][k : k + 1], truths[k : k + 1], threshold.value
        ).dice[0]
        caption.value = f"<b>{data_label}</b> — truth green, prediction red — Dice {dice:.3f}"

    for control in (index, threshold, strategy):
        control.observe(update, names="value")
    update()
    return w.VBox([w.HBox([strategy, index, threshold]), caption, picture])

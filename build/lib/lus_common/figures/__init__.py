"""Figures: ``plots`` (plotly curves, bars, overlays, galleries; the book's renderer) and
``explorer`` (the ipywidgets segmentation explorer)."""

"""The registry of studies: one entry per chapter, read by the runner,
``lus studies``, the tests and CI.

Each study has one spelling everywhere: ``lus run hc18_strategies`` <->
``notebooks/04_hc18_strategies.ipynb`` <-> :mod:`lus_common.studies.s4_hc18_strategies`. Chapters
whose study is not built yet are listed with ``built=False`` (the book shows a placeholder page).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from lus_common.config.registry import lookup


@dataclass(frozen=True)
class Study:
    """One chapter of the book.

    Attributes:
        name: what ``lus run`` takes.
        chapter: the page's file name without suffix, in ``notebooks/`` and ``book/chapters/``.
        title: the chapter's title.
        module: the study module in :mod:`lus_common.studies` (None for the phantom chapter, whose
            code is :mod:`lus_common.phantoms`).
        built: False while the chapter is a placeholder page (``book/chapters/<chapter>.md``).
        smoke: the parameters the tests and CI add to the ``smoke`` profile.
        kind: ``"data"`` (the phantoms), ``"study"`` (a paper, on phantoms by default) or
            ``"appendix"`` (reference pages on real files, e.g. the pretrained weights).
    """

    name: str
    chapter: str
    title: str
    module: str | None = None
    built: bool = True
    smoke: dict = field(default_factory=dict)
    kind: str = "study"

    @property
    def notebook(self) -> str:
        """The source notebook's file name."""
        return f"{self.chapter}.ipynb"

    def load(self):
        """The study module (imported on first use: the Keras studies import Keras)."""
        if self.module is None:
            raise ValueError(f"'{self.name}' has no study module.")
        return importlib.import_module(f"{__name__}.{self.module}")


_ALL = [
    Study(
        "phantoms",
        "00_phantoms",
        "The phantoms: synthetic images with exact ground truth",
        kind="data",
    ),
    Study(
        "data_reduction",
        "01_data_reduction",
        "Data reduction (Muñoz et al. 2025)",
        "s1_data_reduction",
        smoke={"device": "cpu"},
    ),
    Study(
        "v_vs_x_unet",
        "02_v_vs_x_unet",
        "V-UNet vs X-UNet for rib segmentation (Cheng & Lam 2021)",
        "s2_v_vs_x_unet",
        smoke={"device": "cpu"},
    ),
    Study(
        "cxr_overfitting",
        "03_cxr_overfitting",
        "Chest X-ray lung segmentation under data constraints (Kim)",
        "s3_cxr_overfitting",
        smoke={"device": "cpu"},
    ),
    Study(
        "hc18_strategies",
        "04_hc18_strategies",
        "Fine-tuning strategies for fetal head segmentation (HC18)",
        "s4_hc18_strategies",
        smoke={"device": "cpu"},
    ),
    Study(
        "dense_sparse",
        "05_dense_sparse",
        "Dense vs sparse reverse transfer (Gare et al.)",
        "s5_dense_sparse",
        smoke={"device": "cpu"},
    ),
    Study("pretrained_weights", "A1_pretrained_weights", "Pretrained weights", kind="appendix"),
]
REGISTRY: dict[str, Study] = {s.name: s for s in _ALL}
# The chapters that execute (the others are placeholder pages).
STUDIES: dict[str, Study] = {s.name: s for s in _ALL if s.built}


def get_study(name: str) -> Study:
    """The built study of that name.

    Raises:
        KeyError: an unknown or not yet built study (the message lists the built ones).
    """
    return lookup(STUDIES, name, "study")

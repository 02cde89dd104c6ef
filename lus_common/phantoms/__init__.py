"""Synthetic images with exact ground truth, so every study runs with no dataset.

All phantoms share one interface: a ``seed`` (int or ``np.random.Generator``) in, a
:class:`~lus_common.data.sets.SegmentationSet` marked ``synthetic=True`` out (images, masks,
metadata).

- :func:`lung_ultrasound_phantom` (papers 1, 2 and 5): B-mode videos formed by :mod:`.bmode`;
  :func:`lung_patients_phantom` draws them patient by patient, with the diagnoses given. Their look
  is an :class:`~.appearance.Appearance`: ``"calibrated"`` (the default, fitted to real frames by
  :mod:`.calibration`) or ``"v1"`` (the first generator); :mod:`.realism` measures how real each
  is (``lus phantom-check``).
- :func:`fetal_head_phantom` (paper 4, HC18).
- :func:`chest_xray_phantom` (paper 3, Shenzhen-like chest X-rays).
- :func:`salient_object_phantom` (paper 2's X-UNet pretraining, XPIE-like scenes).
"""

from lus_common.phantoms.bmode import RAYLEIGH_MEAN_OVER_STD
from lus_common.phantoms.cxr import chest_xray_phantom
from lus_common.phantoms.fetal_head import ellipse_circumference, fetal_head_phantom
from lus_common.phantoms.lung import (
    DENSE_CLASSES,
    DIAGNOSES,
    SPARSE_CLASSES,
    STRUCTURES,
    dense_to_sparse,
    lung_patients_phantom,
    lung_ultrasound_phantom,
)
from lus_common.phantoms.salient import salient_object_phantom

__all__ = [
    "RAYLEIGH_MEAN_OVER_STD",
    "ellipse_circumference",
    "fetal_head_phantom",
    "lung_patients_phantom",
    "lung_ultrasound_phantom",
    "chest_xray_phantom",
    "salient_object_phantom",
    "DENSE_CLASSES",
    "SPARSE_CLASSES",
    "DIAGNOSES",
    "STRUCTURES",
    "dense_to_sparse",
]

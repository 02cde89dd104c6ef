"""Paper 5's reverse transfer (Gare et al., Fig. 1): a segmentation network turned into a diagnostic
classifier by pooling its softmax maps.

The segmentation output's softmax (one map per tissue or artefact class) is averaged over the image
(channel-wise global average pooling), so each image becomes the share of its pixels given to each
segmentation class; one fully connected layer maps these shares to the diagnostic classes, and the
softmax of cross-entropy gives their scores. The segmentation classes stay readable in the middle:
the layer's weights say which tissue share votes for which diagnosis.
"""

from __future__ import annotations

import torch
from torch import nn


class SegmentationClassifier(nn.Module):
    """Segmentation softmax -> channel-wise global average pooling -> one linear layer.

    Args:
        segmenter: a network returning segmentation logits (N, C, H, W).
        seg_classes: C, its number of output classes.
        classes: the diagnostic classes (paper 5: healthy, COVID-19, pneumonia).

    ``forward`` returns diagnostic logits (N, classes): the final softmax is the loss's (and
    :func:`lus_common.training.torch_loop.predict` with ``output="proba"``).
    """

    def __init__(self, segmenter: nn.Module, seg_classes: int, classes: int = 3):
        super().__init__()
        self.segmenter = segmenter
        self.seg_classes = int(seg_classes)
        self.fc = nn.Linear(self.seg_classes, classes)

    def class_shares(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled softmax maps (N, C): each image's mean probability per segmentation class
        (rows sum to 1)."""
        logits = self.segmenter(x)
        if logits.ndim != 4 or logits.shape[1] != self.seg_classes:
            raise ValueError(
                f"The segmenter returned {tuple(logits.shape)}; expected (N, {self.seg_classes}, "
                "H, W) segmentation logits."
            )
        return torch.softmax(logits.float(), dim=1).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.class_shares(x))

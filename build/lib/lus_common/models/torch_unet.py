"""The plain U-Net (Ronneberger et al.) trained from scratch: the HC18 study's baseline."""

from __future__ import annotations

import torch
from torch import nn


class DoubleConv(nn.Sequential):
    """Two 3x3 convolutions, each followed by batch norm and ReLU."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """The plain U-Net baseline of the HC18 paper (Ronneberger et al. 2015), trained from scratch.

    Four encoder levels with ``features`` channels, a bottleneck of twice the last, four
    transposed-convolution decoder levels and a 1x1 head. With features (64, 128, 256, 512),
    3 input channels and 1 class it has 31,037,633 parameters (the paper's "about 31M").
    """

    def __init__(self, in_channels: int = 3, classes: int = 1, features=(64, 128, 256, 512)):
        super().__init__()
        self.downs = nn.ModuleList()
        ch = in_channels
        for f in features:
            self.downs.append(DoubleConv(ch, f))
            ch = f
        self.bottleneck = DoubleConv(features[-1], features[-1] * 2)
        self.ups = nn.ModuleList()
        self.up_convs = nn.ModuleList()
        for f in reversed(features):
            self.ups.append(nn.ConvTranspose2d(f * 2, f, kernel_size=2, stride=2))
            self.up_convs.append(DoubleConv(f * 2, f))
        self.head = nn.Conv2d(features[0], classes, kernel_size=1)
        self.depth = len(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for down in self.downs:
            x = down(x)
            skips.append(x)
            x = nn.functional.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for up, conv, skip in zip(self.ups, self.up_convs, reversed(skips)):
            x = conv(torch.cat([skip, up(x)], dim=1))
        return self.head(x)

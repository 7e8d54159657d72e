"""Atrous Spatial Pyramid Pooling, DeepLabV3's head before the classifiers (docs/method.md §3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Atrous rates per output stride: 6/12/18 at stride 16, doubled at stride 8.
ATROUS_RATES = {16: (6, 12, 18), 8: (12, 24, 36), 32: (3, 6, 9)}


class ConvBNReLU(nn.Module):
    """Conv (no bias) -> BatchNorm -> ReLU."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1
    ):
        super().__init__()
        padding = dilation * (kernel_size - 1) // 2
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class ASPP(nn.Module):
    """Five parallel branches, concatenated, projected, then refined by a 3x3 conv.

    branches[0] is the 1x1 conv, branches[1:] the three atrous 3x3 convs;
    `pooling` is the image-level branch (global average, 1x1 conv, broadcast
    back). `project` (1x1 with dropout 0.1) and `fuse` (3x3) follow, both with
    BN and ReLU, so the output is non-negative — which is what makes the
    decomposition of docs/method.md §3 meaningful.
    """

    def __init__(
        self, in_channels: int, channels: int = 256, output_stride: int = 16, dropout: float = 0.1
    ):
        super().__init__()
        rates = ATROUS_RATES[output_stride]
        self.branches = nn.ModuleList(
            [ConvBNReLU(in_channels, channels, 1)]
            + [ConvBNReLU(in_channels, channels, 3, dilation=r) for r in rates]
        )
        self.pooling = ConvBNReLU(in_channels, channels, 1)
        self.project = ConvBNReLU(channels * (len(rates) + 2), channels, 1)
        self.dropout = nn.Dropout(dropout)
        self.fuse = ConvBNReLU(channels, channels, 3)
        self.out_channels = channels

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [N, C_in, h, w] -> [N, channels, h, w]
        pooled = self.pooling(F.adaptive_avg_pool2d(x, 1))  # [N, channels, 1, 1]
        # Bilinear upsampling of a 1x1 map is a broadcast; expand is the same numbers, no kernel.
        pooled = pooled.expand(-1, -1, *x.shape[-2:])
        out = torch.cat([branch(x) for branch in self.branches] + [pooled], dim=1)
        return self.fuse(self.dropout(self.project(out)))

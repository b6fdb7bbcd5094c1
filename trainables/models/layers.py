"""Building blocks shared by the model families."""

from __future__ import annotations

import torch.nn as nn


def conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Sequential:
    """Convolution, BatchNorm, ReLU: the seed puts BN after every convolution (SEED.md, 4)."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def raise_lower_head(features: int, num_classes: int, dropout: float) -> nn.Sequential:
    """The seed's dense head: first raise the dimension, then lower it, then classify, with
    Dropout between the dense layers (SEED.md, "Models" 2: 升维再降维)."""
    up, down = 2 * features, max(features // 2, num_classes)
    return nn.Sequential(
        nn.Dropout(dropout),
        nn.Linear(features, up),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(up, down),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(down, num_classes),
    )

"""The seed's 4-layer CNN, exactly as its layer table (docs/seed.md, "Models" 1).

Conv-ReLU-BN blocks, only two max-pools because the images are small: spatial sizes
28 -> 26 -> 24 -> 12 -> 10 -> 8 -> 4, then dense 2048 -> 512 -> 128 -> classes.
1,219,754 trainable parameters for one input channel and ten classes. The model is one
nn.Sequential, so the layers can be walked in the seed's order. The seed gives no Dropout rate;
``dropout`` sets all five.

    from trainables.models import get_model
    model = get_model("cnn")
"""

from __future__ import annotations

import torch.nn as nn

from trainables.models.layers import Dropout
from trainables.models.registry import register_model


def _conv(cin: int, cout: int) -> list[nn.Module]:
    # The seed's order is convolution, ReLU, then BatchNorm.
    return [nn.Conv2d(cin, cout, 3), nn.ReLU(inplace=True), nn.BatchNorm2d(cout)]


# The seed's choices: offline expansion (its 7x training set), a fixed width; compiling does not
# pay (bench/train_step.py: 0.93x eager in fp32 on a 2-core AVX2 CPU).
@register_model("cnn", augment="offline")
def cnn(in_channels: int = 1, num_classes: int = 10, dropout: float = 0.25) -> nn.Sequential:
    return nn.Sequential(
        *_conv(in_channels, 32),                           # 26x26
        *_conv(32, 32),                                    # 24x24
        nn.MaxPool2d(2), Dropout(dropout),              # 12x12
        *_conv(32, 64), Dropout(dropout),               # 10x10
        *_conv(64, 128),                                   # 8x8
        nn.MaxPool2d(2), Dropout(dropout),              # 4x4
        nn.Flatten(),                                      # 2048
        nn.Linear(128 * 4 * 4, 512), nn.ReLU(inplace=True), nn.BatchNorm1d(512),
        Dropout(dropout),
        nn.Linear(512, 128), nn.ReLU(inplace=True), nn.BatchNorm1d(128), Dropout(dropout),
        nn.Linear(128, num_classes),
    )

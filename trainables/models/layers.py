"""Building blocks shared by the ResNet and Inception families."""

from __future__ import annotations

import torch.nn as nn


def conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Sequential:
    """Convolution, BatchNorm, ReLU, "same" padding. The seed puts BN after every convolution
    (docs/seed.md, "Tuning"); the conv has no bias because BN's shift replaces it."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def raise_lower_head(features: int, num_classes: int, dropout: float) -> nn.Sequential:
    """The seed's dense head (docs/seed.md, "Models" 2: 升维再降维): raise the dimension to 2C,
    lower it to C//2, then classify, with Dropout between the dense layers. C//2 never drops below
    ``num_classes`` so a very narrow net still lowers towards, not past, the classifier."""
    up, down = 2 * features, max(features // 2, num_classes)
    return nn.Sequential(
        nn.Linear(features, up),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(up, down),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(down, num_classes),
    )


def init_weights(model: nn.Module) -> None:
    """He (Kaiming) normal initialisation for convolutions, BN weight 1 and bias 0, as
    torchvision's resnet.py does (He et al. 2015, "Delving Deep into Rectifiers")."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

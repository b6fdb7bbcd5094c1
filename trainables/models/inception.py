"""An Inception network (Szegedy et al. 2015, "Going Deeper with Convolutions") for 28x28 input.

docs/seed.md, "Models" 3: stacked GoogLeNet Inception modules, each with parallel 1x1, 3x3 and 5x5
convolutions and a max-pool branch, concatenated; a multi-layer dense head with Dropout.
The modules and their channel numbers are GoogLeNet's (its table 1), with BatchNorm after every
convolution as the seed does. GoogLeNet's stem shrinks 224 pixels to 28 before module 3a; a
28x28 image needs no shrinking, so the stem here is two 3x3 stride-1 convolutions (64 and 192
channels, as GoogLeNet's conv2) and the three module groups run at 14 (3a-3b), 7 (4a-4e) and
4 (5a-5b) pixels, each group after a 3x3 stride-2 max-pool, as in GoogLeNet.
``width`` scales every channel count by width/64; 64 gives GoogLeNet's own.

    from trainables.models import card, get_model
    model = get_model("inception", width=card("inception").width_in("quick"))  # a profile's
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from trainables.models.layers import conv_bn_relu, init_weights, raise_lower_head
from trainables.models.registry import register_model

# GoogLeNet table 1, one row per module: (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj).
# Rows are grouped by the resolution they run at; a 3x3/2 max-pool precedes every group.
GOOGLENET = (
    ((64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64)),        # 3a 3b      at 14x14
    ((192, 96, 208, 16, 48, 64), (160, 112, 224, 24, 64, 64),         # 4a 4b      at 7x7
     (128, 128, 256, 24, 64, 64), (112, 144, 288, 32, 64, 64),        # 4c 4d
     (256, 160, 320, 32, 128, 128)),                                  # 4e
    ((256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128)),   # 5a 5b      at 4x4
)
STEM = (64, 192)  # GoogLeNet's conv1 and conv2 output channels

# Smallest channel count after scaling: a 1- or 2-channel branch carries almost nothing.
MIN_CHANNELS = 4


class InceptionModule(nn.Module):
    """Four parallel branches, concatenated along channels (the paper's figure 2b)."""

    def __init__(self, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, cp: int):
        super().__init__()
        self.b1 = conv_bn_relu(cin, c1, 1)
        self.b3 = nn.Sequential(conv_bn_relu(cin, c3r, 1), conv_bn_relu(c3r, c3, 3))
        self.b5 = nn.Sequential(conv_bn_relu(cin, c5r, 1), conv_bn_relu(c5r, c5, 5))
        self.bp = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), conv_bn_relu(cin, cp, 1))
        self.out_channels = c1 + c3 + c5 + cp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], 1)


class Inception(nn.Module):
    """Stem, then per group of ``table``: a max-pool and the group's Inception modules; global
    average pool and the seed's raise-then-lower dense head."""

    def __init__(self, width: int = 64, in_channels: int = 1, num_classes: int = 10,
                 dropout: float = 0.25, table: Sequence[Sequence[Sequence[int]]] = GOOGLENET):
        super().__init__()

        def scale(c: int) -> int:
            return max(MIN_CHANNELS, round(c * width / 64))

        layers: list[nn.Module] = [conv_bn_relu(in_channels, scale(STEM[0]), 3),
                                   conv_bn_relu(scale(STEM[0]), scale(STEM[1]), 3)]
        cin = scale(STEM[1])
        for group in table:
            # GoogLeNet's overlapping 3x3/2 pool; padding 1 gives 28 -> 14 -> 7 -> 4 (its
            # ceil_mode without padding would give 7 -> 3).
            layers.append(nn.MaxPool2d(3, stride=2, padding=1))
            for row in group:
                module = InceptionModule(cin, *(scale(c) for c in row))
                layers.append(module)
                cin = module.out_channels
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = raise_lower_head(cin, num_classes, dropout)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.features(x)), 1))


# The profiles' widths: narrow on the CPU, GoogLeNet's 64 for the seed's grid; compiled in fp32
# on a CPU, 1.32-1.43x eager (bench/train_step.py).
@register_model("inception", width=64, widths={"smoke": 4, "quick": 8, "standard": 8},
                compile_pays=True)
def inception(width: int = 64, in_channels: int = 1, num_classes: int = 10,
              dropout: float = 0.25) -> Inception:
    return Inception(width, in_channels, num_classes, dropout)

"""ResNet with BasicBlocks (He et al. 2016, "Deep Residual Learning"), ResNet18 = [2, 2, 2, 2].

docs/seed.md, "Models" 2: BasicBlock, not Bottleneck; a dense head that first raises then lowers the
dimension, with Dropout between the dense layers. The ImageNet stem (7x7 stride-2 convolution and
a max-pool) would shrink a 28x28 image to 7x7 before the first block, so the stem here is one
3x3 stride-1 convolution (as the paper's CIFAR-10 nets, section 4.2): the four stages have
``width``, 2, 4 and 8 times ``width`` channels, strides 1, 2, 2, 2, and run at 28, 14, 7 and 4
pixels. ``width=64`` gives the standard 64-128-256-512. Variants are data (``layers``,
``width``), as torchvision's ``ResNet(BasicBlock, [2, 2, 2, 2])``.

    from trainables.models import get_model
    model = get_model("resnet18", width=16)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from trainables.models.layers import conv_bn_relu, init_weights, raise_lower_head
from trainables.models.registry import register_model


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BN, plus the shortcut (the paper's figure 2)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:  # projection shortcut where shapes change (option B)
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """``layers[i]`` BasicBlocks in stage i; the first block of every stage but the first
    halves the image (stride 2) and doubles the channels."""

    def __init__(self, layers: Sequence[int] = (2, 2, 2, 2), width: int = 64,
                 in_channels: int = 1, num_classes: int = 10, dropout: float = 0.25,
                 zero_init_residual: bool = True):
        super().__init__()
        self.stem = conv_bn_relu(in_channels, width, 3)  # 28x28 stays 28x28
        stages, cin = [], width
        for i, blocks in enumerate(layers):
            cout = width * 2**i
            stage = []
            for b in range(blocks):
                stage.append(BasicBlock(cin, cout, 2 if b == 0 and i > 0 else 1))
                cin = cout
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)  # torchvision's layer1..layer4
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = raise_lower_head(cin, num_classes, dropout)
        init_weights(self)
        if zero_init_residual:
            # Each residual branch starts as zero, so every block starts as the identity
            # (torchvision's zero_init_residual; Goyal et al. 2017): helps short runs.
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


# The profiles' widths: narrow on the CPU (a multiple of 16, which the bf16 kernels vectorise:
# 1.5x as fast as width 12 in fp32, bench/train_step.py), the paper's 64 for the seed's grid;
# compiled in fp32 on a CPU, 1.20-1.21x eager (bench/train_step.py); --model resnet, as the seed
# calls it.
@register_model("resnet18", width=64, widths={"smoke": 4, "quick": 16, "standard": 16},
                compile_pays=True, aliases=("resnet",))
def resnet18(width: int = 64, in_channels: int = 1, num_classes: int = 10,
             dropout: float = 0.25) -> ResNet:
    return ResNet((2, 2, 2, 2), width, in_channels, num_classes, dropout)

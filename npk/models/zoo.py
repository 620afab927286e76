"""VGG-11 with batch norm and the CIFAR-style ResNet-18, written as torchvision and the CIFAR literature
write them (plain modules: torchvision does not import with the CPU torch build here), to be traced by
`npk.models.from_module`.

    vgg11_bn(num_classes=10, width=64)        features: [64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M]
                                              (conv3x3-BN-ReLU, M = MaxPool2d(2, 2)), adaptive average
                                              pooling to 1, a 3-layer classifier with dropout
    resnet18(num_classes=10, width=64)        3x3 stem (stride 1, no max pool), BasicBlocks [2, 2, 2, 2]
                                              with stride-2 stages and 1x1-conv + BN projection shortcuts,
                                              adaptive average pooling to 1, a linear head

`width` scales every channel count (64 is the standard model), and `cfg` / `layers` give reduced
copies for brute-force checks. Call .eval() before tracing (batch norms are folded with running stats).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG(nn.Module):
    """torchvision's VGG: features, adaptive average pooling, flatten, classifier (here pooled to 1 x 1)."""

    def __init__(self, features: nn.Sequential, channels: int, num_classes: int = 10, hidden: int = 512,
                 dropout: float = 0.5):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def make_layers(cfg: Sequence, in_channels: int = 3, batch_norm: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = []
    for v in cfg:
        if v == "M":
            layers += [nn.MaxPool2d(kernel_size=2, stride=2)]
        else:
            conv = nn.Conv2d(in_channels, v, kernel_size=3, padding=1)
            layers += [conv, nn.BatchNorm2d(v), nn.ReLU(inplace=True)] if batch_norm else [conv, nn.ReLU(inplace=True)]
            in_channels = v
    return nn.Sequential(*layers)


def vgg11_bn(num_classes: int = 10, width: int = 64, cfg: Sequence | None = None, in_channels: int = 3,
             hidden: int | None = None) -> VGG:
    """VGG-11 with batch norm; `width` scales the channels (64: the standard widths), `cfg` overrides the features."""
    cfg = [v if v == "M" else max(1, v * width // 64) for v in (VGG11 if cfg is None else cfg)]
    channels = [v for v in cfg if v != "M"][-1]
    return VGG(make_layers(cfg, in_channels), channels, num_classes, hidden or max(1, 512 * width // 64))


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """The CIFAR ResNet: a 3x3 stride-1 stem without max pool, four stages, adaptive average pooling, fc."""

    def __init__(self, layers: Sequence[int] = (2, 2, 2, 2), num_classes: int = 10, width: int = 64,
                 in_channels: int = 3):
        super().__init__()
        self.inplanes = width
        self.conv1 = conv3x3(in_channels, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        stages = [self._make_layer(width * 2**s, n, 1 if s == 0 else 2) for s, n in enumerate(layers)]
        self.layer1, self.layer2, self.layer3, self.layer4 = (stages + [nn.Identity()] * 4)[:4]
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.inplanes, num_classes)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def resnet18(num_classes: int = 10, width: int = 64, layers: Sequence[int] = (2, 2, 2, 2),
             in_channels: int = 3) -> ResNet:
    """CIFAR-style ResNet-18 (BasicBlock, [2, 2, 2, 2]); `width` is the first stage's channels, `layers` the
    blocks per stage (up to four stages)."""
    return ResNet(layers, num_classes, width, in_channels)


@torch.no_grad()
def randomize_batch_norms(module: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Draw running statistics and affine parameters, as after training (so folding is not the identity)."""
    for m in module.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            for t, lo, hi in ((m.running_mean, -0.5, 0.5), (m.running_var, 0.5, 2.0), (m.weight, 0.5, 1.5),
                              (m.bias, -0.5, 0.5)):
                t.copy_(torch.rand(t.shape, generator=generator, dtype=t.dtype) * (hi - lo) + lo)
    return module

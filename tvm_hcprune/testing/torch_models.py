"""Standard CNNs written in plain ``torch.nn`` (torchvision is not installable beside the
CPU torch wheel here): ResNet-18/50 and MobileNetV2 with torchvision's layer layout, for
the peer benchmark and the PyTorch tests. torch is an optional extra (``.[peer]``).

Examples
--------
>>> from tvm_hcprune.testing.torch_models import resnet18  # doctest: +SKIP
>>> model = resnet18(seed=0)  # random weights, randomised batch-norm statistics
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["mobilenet_v2", "randomise", "resnet18", "resnet50", "transformer_encoder"]


class _Basic(nn.Module):
    expansion = 1

    def __init__(self, cin, width, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.down = None
        if stride != 1 or cin != width:
            self.down = nn.Sequential(nn.Conv2d(cin, width, 1, stride, bias=False),
                                      nn.BatchNorm2d(width))

    def forward(self, x):
        idt = x if self.down is None else self.down(x)
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + idt)


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, width, stride):
        super().__init__()
        out = width * 4
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.down = None
        if stride != 1 or cin != out:
            self.down = nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False),
                                      nn.BatchNorm2d(out))

    def forward(self, x):
        idt = x if self.down is None else self.down(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + idt)


class ResNet(nn.Module):
    """torchvision's ResNet layout: 7x7/2 stem, 3x3/2 max pool, four stages, avg pool, fc."""

    def __init__(self, block, layers, num_classes=1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, cin = [], 64
        for i, n in enumerate(layers):
            width = 64 * 2**i
            blocks = []
            for j in range(n):
                blocks.append(block(cin, width, 2 if (j == 0 and i > 0) else 1))
                cin = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _cbr(cin, cout, k, stride, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class _InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        layers = [] if expand == 1 else [_cbr(cin, hidden, 1, 1)]
        layers += [_cbr(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision's MobileNetV2 (width 1.0)."""

    _CFG = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
            (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, num_classes=1000):
        super().__init__()
        layers, cin = [_cbr(3, 32, 3, 2)], 32
        for t, c, n, s in self._CFG:
            for i in range(n):
                layers.append(_InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(_cbr(cin, 1280, 1, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


class _EncoderLayer(nn.Module):
    """Post-norm transformer encoder layer with explicit multi-head attention."""

    def __init__(self, dim, heads, ffn):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = (nn.Linear(dim, dim) for _ in range(3))
        self.proj = nn.Linear(dim, dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.GELU(), nn.Linear(ffn, dim))

    def forward(self, x):
        b, n, d = x.shape
        h = self.heads

        def split(t):
            return t.reshape(b, n, h, d // h).permute(0, 2, 1, 3)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        att = torch.softmax(q @ k.transpose(-1, -2) * (d // h) ** -0.5, dim=-1)
        y = (att @ v).permute(0, 2, 1, 3).reshape(b, n, d)
        x = self.norm1(x + self.proj(y))
        return self.norm2(x + self.ffn(x))


class TransformerEncoder(nn.Module):
    """A small ViT-style encoder over a token sequence: embedding, layers, mean-pool head."""

    def __init__(self, dim=64, heads=4, ffn=128, layers=2, tokens=16, features=32,
                 num_classes=10):
        super().__init__()
        self.embed = nn.Linear(features, dim)
        self.pos = nn.Parameter(torch.zeros(1, tokens, dim))
        self.layers = nn.Sequential(*[_EncoderLayer(dim, heads, ffn) for _ in range(layers)])
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.layers(self.embed(x) + self.pos)
        return self.head(x.mean(dim=1))


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights (He-normal) and random batch-norm statistics and affine parameters, so
    magnitudes differ per channel as in a trained model; returns ``model`` in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.01)
            elif isinstance(m, TransformerEncoder):
                m.pos.copy_(torch.randn(m.pos.shape, generator=gen) * 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(0.5 + torch.rand(n, generator=gen))
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
    return model.eval()


def resnet18(num_classes: int = 1000, seed: int = 0) -> nn.Module:
    """ResNet-18 with random weights and batch-norm statistics."""
    return randomise(ResNet(_Basic, [2, 2, 2, 2], num_classes), seed)


def resnet50(num_classes: int = 1000, seed: int = 0) -> nn.Module:
    """ResNet-50 with random weights and batch-norm statistics."""
    return randomise(ResNet(_Bottleneck, [3, 4, 6, 3], num_classes), seed)


def mobilenet_v2(num_classes: int = 1000, seed: int = 0) -> nn.Module:
    """MobileNetV2 with random weights and batch-norm statistics."""
    return randomise(MobileNetV2(num_classes), seed)


def transformer_encoder(num_classes: int = 10, seed: int = 0, **sizes) -> nn.Module:
    """A small transformer encoder (input ``[1, tokens, features]``) with random weights."""
    return randomise(TransformerEncoder(num_classes=num_classes, **sizes), seed)

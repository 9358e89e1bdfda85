"""Networks for the bring-your-own-model tests, built as `MODULE:FACTORY` architectures
(`byom_nets:build`): every BN arrangement the folding and the adaptation must get right; and
`randomise_batchnorm`, which makes a fresh network's BN layers look trained."""
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm


class ScaledBatchNorm2d(nn.BatchNorm2d):
    """A BN subclass nobody handles on purpose: its forward does more than normalise."""

    def forward(self, x):
        return 2 * super().forward(x)


class Block(nn.Module):
    """A ResNet-style block: convs and BNs as attributes, not neighbours in a Sequential."""

    def __init__(self, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)

    def forward(self, x):
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class Skip(nn.Module):
    """A forward with an optional argument: traced with a placeholder it would take the wrong branch."""

    def __init__(self, width: int):
        super().__init__()
        self.conv = nn.Conv2d(2 * width, width, 1)
        self.bn = nn.BatchNorm2d(width)

    def forward(self, x, skip=None):
        if skip is not None:
            x = torch.cat([x, skip], 1)
        else:
            x = torch.cat([x, x], 1)
        return F.relu(self.bn(self.conv(x)))


class Net(nn.Module):
    """traceable=False: a shape test in forward stops torch.fx at the top, so only the parts of the
    network that trace on their own are folded."""

    def __init__(self, num_classes: int, width: int = 8, traceable: bool = True):
        super().__init__()
        self.traceable = traceable
        self.stem = nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.stem_bn = nn.BatchNorm2d(width)
        self.block = Block(width)
        self.shared = nn.Conv2d(width, width, 3, padding=1)  # used twice: never folded
        self.shared_bn = nn.BatchNorm2d(width)
        self.after_pool = nn.BatchNorm2d(width)  # follows no conv: adapted, never folded
        self.plain = nn.BatchNorm2d(width, affine=False)  # no weight or bias
        self.scaled = ScaledBatchNorm2d(width)  # unknown subclass: left as it is
        self.skip = Skip(width)
        self.head = nn.Conv2d(width, num_classes, 1)

    def forward(self, x):
        size = x.shape[-2:]
        if not self.traceable and x.shape[-1] % 2:
            raise ValueError("even widths only")
        x = F.relu(self.stem_bn(self.stem(x)))
        x = self.block(x)
        x = self.shared_bn(self.shared(x)) + self.shared(x)
        x = self.after_pool(F.avg_pool2d(x, 3, 1, 1))
        x = self.plain(x)
        x = self.scaled(x)
        x = self.skip(x, x)
        return F.interpolate(self.head(x), size=size, mode="bilinear", align_corners=False)


def build(num_classes: int, width: int = 8, traceable: bool = True) -> nn.Module:
    return Net(num_classes, width, traceable)


class NoBatchNorm(nn.Module):
    def __init__(self, num_classes: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(), nn.Conv2d(8, num_classes, 1))

    def forward(self, x):
        return self.body(x)


def build_without_bn(num_classes: int) -> nn.Module:
    return NoBatchNorm(num_classes)


def not_a_module(num_classes: int):
    return "a string"


@torch.no_grad()
def randomise_batchnorm(model: nn.Module, seed: int = 1) -> nn.Module:
    """Every BN layer's (any _BatchNorm subclass) statistics and affine parameters away from 0 / 1."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, _BatchNorm) and m.running_mean is not None:
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
            if m.affine:
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model

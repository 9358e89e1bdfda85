"""Segmentation networks by registry name (torchvision builds them; no weights are downloaded)."""
import copy
from collections.abc import Callable, Container, Sequence

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.models import segmentation as tvseg

_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "lraspp_mobilenet_v3_large": tvseg.lraspp_mobilenet_v3_large,
    "deeplabv3_mobilenet_v3_large": tvseg.deeplabv3_mobilenet_v3_large,
    "deeplabv3_resnet50": tvseg.deeplabv3_resnet50,
}


def list_architectures() -> list[str]:
    return sorted(_BUILDERS)


class SegmentationNet(nn.Module):
    """A torchvision segmentation network that takes raw RGB in [0, 1] and returns logits.

    Normalisation lives inside the network so that everything before it (FDA, decoding)
    works on raw pixels and an exported graph needs no separate preprocessing.
    """

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net((images - self.mean) / self.std)["out"]


def create_model(
    arch: str, num_classes: int, mean: Sequence[float], std: Sequence[float], **arch_kwargs
) -> SegmentationNet:
    """Build `arch` from scratch for `num_classes` classes."""
    if arch not in _BUILDERS:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {list_architectures()}")
    net = _BUILDERS[arch](weights=None, weights_backbone=None, num_classes=num_classes, **arch_kwargs)
    return SegmentationNet(net, mean, std)


def names_of(model: nn.Module, kind) -> list[str]:
    """The names of `model`'s modules of type `kind` (a type or tuple of types), in module order."""
    return [name for name, m in model.named_modules() if isinstance(m, kind)]


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put `module` where `model.get_submodule(name)` is (in place)."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def fold_batchnorm(model: nn.Module, keep: Container[str] = ()) -> nn.Module:
    """A copy of `model` (in eval mode) with every BatchNorm2d that follows a Conv2d in a Sequential
    folded into the conv's weights, except those named in `keep`: the frozen network as a server
    runs it, and the fair baseline for the adapted one, whose BN layers cannot be folded."""
    folded = copy.deepcopy(model).eval()
    for prefix, module in folded.named_modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        for (_, first), (name, second) in zip(children, children[1:]):
            qualified = f"{prefix}.{name}" if prefix else name
            if isinstance(first, nn.Conv2d) and isinstance(second, nn.BatchNorm2d) and qualified not in keep:
                fused = fuse_conv_bn_eval(first, second)
                first.weight, first.bias = fused.weight, fused.bias
                setattr(module, name, nn.Identity())
    return folded

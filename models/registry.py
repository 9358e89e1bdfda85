"""Segmentation networks by architecture string (no weights are downloaded):

    lraspp_mobilenet_v3_large, deeplabv3_mobilenet_v3_large, deeplabv3_resnet50   the registry's own
    torchvision:NAME          any torchvision.models.segmentation builder (fcn_resnet50, ...)
    smp:ARCH:ENCODER          segmentation_models_pytorch (the 'models' extra), e.g. smp:Unet:resnet18
    MODULE:FACTORY            `MODULE.FACTORY(num_classes=C, **arch_kwargs)`, a module trusted to be
                              imported (DRIFTSEG_TRUSTED_MODULES, see `trusted`)

The network takes normalised images and returns logits [B, C, h, w] (any h, w: the pipeline resizes
them), a dict holding them under "out" (torchvision) or a tuple whose first item they are.
"""
import importlib
import os
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models import segmentation as tvseg

_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "lraspp_mobilenet_v3_large": tvseg.lraspp_mobilenet_v3_large,
    "deeplabv3_mobilenet_v3_large": tvseg.deeplabv3_mobilenet_v3_large,
    "deeplabv3_resnet50": tvseg.deeplabv3_resnet50,
}
FAMILIES = "torchvision:NAME, smp:ARCH:ENCODER or MODULE:FACTORY"
TRUSTED_ENV = "DRIFTSEG_TRUSTED_MODULES"
MODELS_EXTRA = "pip install 'driftseg[models]'"
_trusted_here: set[str] = set()


def list_architectures() -> list[str]:
    """The registry's own architectures (`driftseg train source --arch`)."""
    return sorted(_BUILDERS)


def _logits(out) -> torch.Tensor:
    if isinstance(out, dict):
        return out["out"]
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


class SegmentationNet(nn.Module):
    """A segmentation network that takes raw RGB in [0, 1] and returns logits.

    Normalisation lives inside the network so that everything before it (FDA, decoding)
    works on raw pixels and an exported graph needs no separate preprocessing.
    """

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return _logits(self.net((images - self.mean) / self.std))


def trust_module(module: str) -> None:
    """Allow MODULE:FACTORY architectures of `module` (and its submodules) in this process, as
    DRIFTSEG_TRUSTED_MODULES does; `driftseg import` trusts the module its user named."""
    _trusted_here.add(module)


def trusted(module: str) -> bool:
    """Whether a checkpoint may make this process import `module` to build its network: it (or a
    package above it) is in DRIFTSEG_TRUSTED_MODULES (comma-separated) or was trusted by `trust_module`.
    A checkpoint is data read without running code; the code it names runs only where allowed."""
    allowed = {m.strip() for m in os.environ.get(TRUSTED_ENV, "").split(",") if m.strip()} | _trusted_here
    return any(module == m or module.startswith(m + ".") for m in allowed)


def factory_module(arch: str) -> str | None:
    """MODULE of a MODULE:FACTORY architecture string, None for any other."""
    if arch in _BUILDERS or arch.startswith(("torchvision:", "smp:")) or ":" not in arch:
        return None
    return arch.rpartition(":")[0]


def _torchvision(name: str, num_classes: int, **kwargs) -> nn.Module:
    from torchvision import models

    names = models.list_models(module=tvseg)
    if name not in names:
        raise ValueError(f"unknown torchvision segmentation model {name!r}; expected one of {sorted(names)}")
    return models.get_model(name, weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)


def _smp(arch: str, encoder: str, num_classes: int, **kwargs) -> nn.Module:
    try:
        import segmentation_models_pytorch as smp
    except ModuleNotFoundError as e:
        raise ValueError(f"architecture smp:{arch}:{encoder} needs segmentation-models-pytorch ({e}), in "
                         f"driftseg's 'models' extra: {MODELS_EXTRA}") from None
    archs = {key.lower(): cls.__name__ for key, cls in getattr(smp, "MODEL_ARCHITECTURES_MAPPING", {}).items()}
    if archs and arch.lower() not in archs:
        raise ValueError(f"unknown smp architecture {arch!r}; expected one of {sorted(archs.values())}")
    try:
        return smp.create_model(arch, encoder_name=encoder, encoder_weights=None, classes=num_classes, **kwargs)
    except (KeyError, RuntimeError) as e:  # smp: KeyError for its encoders, timm: RuntimeError for its models
        message = str(e.args[0] if e.args else e)
        if "encoder" in message.lower() or "unknown model" in message.lower():
            raise ValueError(f"unknown smp encoder {encoder!r} (smp:ARCH:ENCODER, e.g. smp:Unet:resnet18 or a "
                             f"timm encoder as smp:Unet:tu-efficientnet_b0): {message[:300]}") from None
        raise ValueError(f"cannot build smp:{arch}:{encoder}: {message[:300]}") from None


def _factory(target: str, num_classes: int, **kwargs) -> nn.Module:
    module_name, _, name = target.rpartition(":")
    if not module_name or not name or not all(part.isidentifier() for part in [*module_name.split("."), name]):
        raise ValueError(f"unknown architecture {target!r}: expected one of {list_architectures()} or {FAMILIES}")
    if not trusted(module_name):
        raise ValueError(f"architecture {target!r} is built by code from module {module_name!r}, which a checkpoint "
                         f"cannot vouch for: allow it with {TRUSTED_ENV}={module_name} (comma-separated)")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ValueError(f"architecture {target!r}: cannot import {module_name!r} ({e}); is it installed, or on "
                         "PYTHONPATH?") from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ValueError(f"architecture {target!r}: module {module_name!r} has no callable {name!r}")
    net = factory(num_classes=num_classes, **kwargs)
    if not isinstance(net, nn.Module):
        raise ValueError(f"architecture {target!r}: {name}(num_classes=...) returned {type(net).__name__}, "
                         "not a torch.nn.Module")
    return net


def create_model(
    arch: str, num_classes: int, mean: Sequence[float], std: Sequence[float], **arch_kwargs
) -> SegmentationNet:
    """Build `arch` from scratch for `num_classes` classes; ValueError naming what is wrong with `arch`."""
    if arch in _BUILDERS:
        net = _BUILDERS[arch](weights=None, weights_backbone=None, num_classes=num_classes, **arch_kwargs)
    elif arch.startswith("torchvision:"):
        net = _torchvision(arch.removeprefix("torchvision:"), num_classes, **arch_kwargs)
    elif arch.startswith("smp:"):
        parts = arch.split(":")
        if len(parts) != 3 or not all(parts[1:]):
            raise ValueError(f"smp architectures read smp:ARCH:ENCODER (e.g. smp:Unet:resnet18), got {arch!r}")
        net = _smp(parts[1], parts[2], num_classes, **arch_kwargs)
    elif factory_module(arch) is not None:
        net = _factory(arch, num_classes, **arch_kwargs)
    else:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {list_architectures()} or {FAMILIES}")
    return SegmentationNet(net, mean, std)


def check_classifier_features(arch: str, who: str) -> None:
    """ValueError unless `arch` is one whose classifier features `classifier_features` can read."""
    if not arch.removeprefix("torchvision:").startswith("lraspp"):
        raise ValueError(f"{who} reads the classifier's input features, which driftseg takes from the LRASPP head "
                         f"only: use a checkpoint of lraspp_mobilenet_v3_large, not {arch}")


def feature_channels(model: SegmentationNet) -> int:
    """Channels of `classifier_features`' features: the LRASPP head's low-level and high-level branches."""
    head = model.net.classifier
    return head.low_classifier.in_channels + head.high_classifier.in_channels


def classifier_features(model: SegmentationNet, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`model(images)` written out for the LRASPP head, keeping what its classifier sees: (logits at the
    images' size, logits on the classifier's grid, the classifier's input features on that grid).

    The head ends in two 1x1 convolutions summed, low_classifier(low) + high_classifier(branch), `branch`
    being the high-level features through cbr and the attention scale, upsampled to the low-level grid
    (stride 8): together one linear classifier on the concatenation [low, branch], whose channels are the
    features here. The arithmetic is torchvision's LRASPP.forward and LRASPPHead.forward, so the logits
    are those of `model(images)`."""
    net = model.net
    x = (images - model.mean) / model.std
    parts = net.backbone(x)
    low, high = parts["low"], parts["high"]
    head = net.classifier
    branch = head.cbr(high) * head.scale(high)
    branch = F.interpolate(branch, size=low.shape[-2:], mode="bilinear", align_corners=False)
    coarse = head.low_classifier(low) + head.high_classifier(branch)
    logits = F.interpolate(coarse, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return logits, coarse, torch.cat([low, branch], 1)


def names_of(model: nn.Module, kind) -> list[str]:
    """The names of `model`'s modules of type `kind` (a type or tuple of types), in module order."""
    return [name for name, m in model.named_modules() if isinstance(m, kind)]


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put `module` where `model.get_submodule(name)` is (in place)."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def wrap_modules(model: nn.Module, names: Sequence[str], wrap: Callable[[nn.Module], nn.Module]) -> list[nn.Module]:
    """Put `wrap(module)` in place of each named module of `model` (in place); the new modules, in order."""
    wrapped = []
    for name in names:
        wrapped.append(wrap(model.get_submodule(name)))
        replace_module(model, name, wrapped[-1])
    return wrapped

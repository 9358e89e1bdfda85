"""BatchNorm layers for batches that carry source frames first and target frames after them.

In a forward pass inside `source_first(model, n)`, the first n samples of the batch are source
frames. Two ways to normalise such a batch, each a wrapper that `plain()` takes off again:
- SourceStatsBatchNorm2d normalises every sample with the statistics of the source samples and
  keeps its running statistics from them alone, as a served network normalises target frames with
  source statistics. (Normalising dusk frames with dusk statistics costs this model mIoU on dusk,
  as the `ptbn` row of the benchmark shows; mixing them into the batch statistics did too.)
- DualBatchNorm2d (SEAT) has a source and a target copy of the layer, statistics and affine
  transform each, and sends each domain's samples through its own.
"""
import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from driftseg.models.registry import names_of, replace_module


class SourceStatsBatchNorm2d(nn.Module):
    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__()
        self.bn = bn
        self.source_count: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, bn = self.source_count, self.bn
        if not self.training or n is None:
            return bn(x)
        source = x[:n]
        mean, var = source.mean((0, 2, 3)), source.var((0, 2, 3), unbiased=False)
        with torch.no_grad():  # as BatchNorm2d: the running variance is the unbiased one
            bn.num_batches_tracked += 1
            # momentum None: BatchNorm2d's cumulative average
            momentum = bn.momentum if bn.momentum is not None else 1 / float(bn.num_batches_tracked)
            count = source.numel() // source.shape[1]
            bn.running_mean.lerp_(mean, momentum)
            bn.running_var.lerp_(var * count / max(count - 1, 1), momentum)
        # by hand: F.batch_norm takes no gradient through given statistics, and these carry one
        scale = bn.weight * torch.rsqrt(var + bn.eps)
        return x * scale[:, None, None] + (bn.bias - mean * scale)[:, None, None]


class DualBatchNorm2d(nn.Module):
    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__()
        self.source, self.target = copy.deepcopy(bn), copy.deepcopy(bn)
        self.source_count: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.source_count
        if n is None:  # outside source_first(): the branch the service will run
            return self.target(x)
        return torch.cat([self.source(x[:n]), self.target(x[n:])])


WRAPPERS = (SourceStatsBatchNorm2d, DualBatchNorm2d)


def wrap(model: nn.Module, wrapper: Callable[[nn.BatchNorm2d], nn.Module]) -> nn.Module:
    """`model` with every BatchNorm2d wrapped (in place)."""
    for name in names_of(model, nn.BatchNorm2d):
        replace_module(model, name, wrapper(model.get_submodule(name)))
    return model


@contextmanager
def source_first(model: nn.Module, count: int) -> Iterator[None]:
    """Within the block, the first `count` samples of a batch are source frames."""
    layers = [m for m in model.modules() if isinstance(m, WRAPPERS)]
    for m in layers:
        m.source_count = count
    try:
        yield
    finally:
        for m in layers:
            m.source_count = None


def check_prefixes(model: nn.Module, prefixes: Sequence[str]) -> None:
    names = names_of(model, (nn.BatchNorm2d, *WRAPPERS))
    unknown = [p for p in prefixes if not any(n.startswith(p) for n in names)]
    if unknown:
        raise ValueError(f"--source-branch {unknown} names no BN layer; BN layers are named like {names[:3]}")


def plain(model: nn.Module, source_prefixes: Sequence[str] = ()) -> nn.Module:
    """A copy of `model` with plain BatchNorm2d layers again: a dual layer gives its source branch
    where its name starts with one of `source_prefixes` (SEAT's layer switch), else its target branch."""
    check_prefixes(model, source_prefixes)
    out = copy.deepcopy(model)
    for name in names_of(out, WRAPPERS):
        m = out.get_submodule(name)
        if isinstance(m, SourceStatsBatchNorm2d):
            replace_module(out, name, m.bn)
        else:
            replace_module(out, name, m.source if name.startswith(tuple(source_prefixes)) else m.target)
    return out

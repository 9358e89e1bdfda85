"""`driftseg train seat`: adversarial adaptation with Separate Affine Transformations (seed paper 003).

Every BN layer of the network gets two branches, each with its own normalisation statistics and
affine transform: source frames go through the source branches, target frames through the
target branches, in the same forward pass. The adversarial part is `driftseg train adversarial`'s,
by default in SEAT's multi-level variant (the auxiliary output added to the main one with a weight
before a single discriminator). The checkpoint is a plain network for the service: each BN layer
takes its target branch, or its source branch where --source-branch names it (the layer switch).
"""
import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from training import adversarial, finetune
from training.networks import MultiLevelNet


class DualBatchNorm2d(nn.Module):
    """Two copies of a BatchNorm2d: `source` for the first `source_count` samples of a batch,
    `target` for the rest (all of them outside a source_first() block)."""

    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__()
        self.source, self.target = copy.deepcopy(bn), copy.deepcopy(bn)
        self.source_count: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.source_count
        if n is None:
            return self.target(x)
        return torch.cat([self.source(x[:n]), self.target(x[n:])])


def names_of(model: nn.Module, kind: type) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, kind)]


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def to_dual(model: nn.Module) -> nn.Module:
    """`model` with every BatchNorm2d split into source and target branches (in place)."""
    for name in names_of(model, nn.BatchNorm2d):
        _replace(model, name, DualBatchNorm2d(model.get_submodule(name)))
    return model


@contextmanager
def source_first(model: nn.Module, count: int) -> Iterator[None]:
    """Within the block, the first `count` samples of a batch take the source branches."""
    duals = [m for m in model.modules() if isinstance(m, DualBatchNorm2d)]
    for m in duals:
        m.source_count = count
    try:
        yield
    finally:
        for m in duals:
            m.source_count = None


def check_prefixes(model: nn.Module, prefixes: Sequence[str]) -> None:
    names = names_of(model, (nn.BatchNorm2d, DualBatchNorm2d))
    unknown = [p for p in prefixes if not any(n.startswith(p) for n in names)]
    if unknown:
        raise ValueError(f"--source-branch {unknown} names no BN layer; BN layers are named like {names[:3]}")


def to_plain(model: nn.Module, source_prefixes: Sequence[str] = ()) -> nn.Module:
    """A copy of a dual model with plain BatchNorm2d layers: the source branch for layers whose
    names start with one of `source_prefixes`, the target branch for all others."""
    check_prefixes(model, source_prefixes)
    plain = copy.deepcopy(model)
    for name in names_of(plain, DualBatchNorm2d):
        dual = plain.get_submodule(name)
        _replace(plain, name, dual.source if name.startswith(tuple(source_prefixes)) else dual.target)
    return plain


def main(argv=None) -> None:
    args = adversarial.parse_args(
        argv, prog="driftseg train seat", description=__doc__, levels="fused",
        extra=lambda p: p.add_argument(
            "--source-branch", nargs="*", default=[], metavar="PREFIX",
            help="BN layers whose names start with PREFIX (e.g. net.backbone.1) serve with their source branch; "
                 "all others with the target branch"))
    job = finetune.prepare(args, "seat")
    model = job.parent.build_model(job.ctx.device)
    check_prefixes(model, args.source_branch)
    to_dual(model)
    net = MultiLevelNet(model, job.parent.num_classes).train()  # BN in train mode: statistics per domain
    seconds = adversarial.train(job, net, source_first=lambda n: source_first(model, n))
    finetune.finish(job, to_plain(model, args.source_branch), seconds)

"""Which normalisation layers of any network adaptation may take over, and folding the rest.

Adapted: layers that are exactly `nn.BatchNorm2d` and have source statistics, and the subclasses
handled on purpose (`KNOWN_SUBCLASSES`: timm's BatchNormAct2d, whose dropout and activation run
after the normalisation). Any other subclass of BatchNorm is left as the network has it: its
forward may do more than normalise, and replacing it would silently change the network.

Folding: a BN layer whose input is the output of a plain `nn.Conv2d` used nowhere else is folded
into that convolution's weights. Which pairs those are is read from a torch.fx trace of the
largest traceable part of the network (the whole network where the graph allows; where tracing
fails, each child is tried in turn), so a conv-BN pair counts wherever it sits (a ResNet block's
conv1/bn1 as well as a Sequential's neighbours). The trace is only read: the folded network keeps
the original modules and their eager forward, with the conv's weights fused and the BN module
replaced by an identity (or, for BatchNormAct2d, by its dropout and activation).
"""
import copy
import inspect
from collections import Counter
from collections.abc import Callable, Container

import torch
from torch import fx, nn
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_eval


def _timm_bn_act_after(bn: nn.Module) -> nn.Module:
    """timm's BatchNormAct2d: normalise, then `drop`, then `act`."""
    return nn.Sequential(bn.drop, bn.act)


# (module prefix, class name) -> what of the layer runs after its normalisation. Matched by name, so
# that neither timm nor any other library has to be installed (or imported) to serve a network.
KNOWN_SUBCLASSES: dict[tuple[str, str], Callable[[nn.Module], nn.Module]] = {
    ("timm.", "BatchNormAct2d"): _timm_bn_act_after,
}


def _known(module: nn.Module) -> Callable[[nn.Module], nn.Module] | None:
    cls = type(module)
    for (prefix, name), after in KNOWN_SUBCLASSES.items():
        if cls.__name__ == name and cls.__module__.startswith(prefix) and isinstance(module, nn.BatchNorm2d):
            return after
    return None


def is_adaptable(module: nn.Module) -> bool:
    """A BN layer adaptation may take over: exactly nn.BatchNorm2d or a known subclass, with running
    statistics (one without normalises every batch by its own statistics, even in eval mode)."""
    if type(module) is not nn.BatchNorm2d and _known(module) is None:
        return False
    return module.track_running_stats and module.running_mean is not None and module.running_var is not None


def after_norm(module: nn.Module) -> nn.Module | None:
    """What an adaptable layer does after normalising (a known subclass's activation), or None."""
    after = _known(module)
    return after(module) if after is not None else None


def adaptable_norms(model: nn.Module) -> list[str]:
    """The names of `model`'s adaptable BN layers (`is_adaptable`), in module order."""
    return [name for name, m in model.named_modules() if is_adaptable(m)]


def other_norms(model: nn.Module) -> list[str]:
    """The names of BN layers (any _BatchNorm) that are not adaptable: left as the network has them."""
    return [name for name, m in model.named_modules() if isinstance(m, _BatchNorm) and not is_adaptable(m)]


class _Tracer(fx.Tracer):
    """Stops at every BN layer (a timm subclass would otherwise be traced into) and torch.nn layer."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _BatchNorm) or super().is_leaf_module(m, qualname)


def _plainly_called(module: nn.Module) -> bool:
    """Its forward takes only required positional arguments: a trace with placeholders then follows
    the path every call takes (an argument with a default, such as `skip=None`, would be traced as
    given and could send the trace down another branch than the real calls)."""
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return False
    return all(p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
               for p in params)


def _pairs_in_trace(root: nn.Module, prefix: str) -> list[tuple[str, str]] | None:
    """(conv, bn) names (qualified by `prefix`) whose conv output feeds the BN alone, from an fx trace
    of `root`; None where `root` cannot be traced."""
    if not _plainly_called(root):
        return None
    try:
        graph = _Tracer().trace(root)
    except Exception:  # tracing runs arbitrary forward code: any failure means "not traceable"
        return None
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        source = node.args[0]
        if not isinstance(source, fx.Node) or source.op != "call_module":
            continue
        bn, conv = root.get_submodule(node.target), root.get_submodule(source.target)
        # exactly Conv2d: a subclass may transform its weights in forward (timm's StdConv2d standardises them)
        if type(conv) is not nn.Conv2d or not is_adaptable(bn) or conv._forward_hooks or conv._forward_pre_hooks \
                or bn._forward_hooks or bn._forward_pre_hooks:
            continue
        if len(source.users) != 1 or calls[source.target] != 1 or calls[node.target] != 1:
            continue
        qualify = (lambda n: f"{prefix}.{n}") if prefix else (lambda n: n)
        pairs.append((qualify(source.target), qualify(node.target)))
    return pairs


def foldable_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """Every (conv, bn) pair of `model` that folding may fuse, by name: from a trace of the whole
    network, or where that fails, of the largest traceable parts of it."""

    def visit(module: nn.Module, prefix: str) -> list[tuple[str, str]]:
        if isinstance(module, _BatchNorm) or not any(isinstance(m, _BatchNorm) for m in module.modules()):
            return []
        found = _pairs_in_trace(module, prefix)
        if found is not None:
            return found
        return [pair for name, child in module.named_children()
                for pair in visit(child, f"{prefix}.{name}" if prefix else name)]

    return visit(model, "")


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def fold_batchnorm(model: nn.Module, keep: Container[str] = ()) -> nn.Module:
    """A copy of `model` (in eval mode) with every BN layer that directly follows a convolution
    (`foldable_pairs`) folded into the conv's weights, except those named in `keep`: the frozen
    network as a server runs it, and the fair baseline for the adapted one, whose BN layers cannot be
    folded. Layers that follow no convolution stay as they are (they compute the same either way)."""
    folded = copy.deepcopy(model).eval()
    # traced on a copy of its own: a forward that keeps what it saw (self.last = x) keeps a tracing proxy
    pairs = foldable_pairs(copy.deepcopy(folded))
    with torch.no_grad():
        for conv_name, bn_name in pairs:
            if bn_name in keep:
                continue
            conv, bn = folded.get_submodule(conv_name), folded.get_submodule(bn_name)
            fused = fuse_conv_bn_eval(conv, bn)
            conv.weight, conv.bias = fused.weight, fused.bias
            after = after_norm(bn)
            _replace(folded, bn_name, after if after is not None else nn.Identity())
    return folded


def instance_moments(x: torch.Tensor, stride: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample and channel, the mean and the second moment [B, C] (float32) of `x` [B, C, H, W], over
    every stride-th pixel of every stride-th row: two plain reductions, on the CPU 20x faster than
    torch.var_mean, and no x.square() copy. Exported, the copy instead: onnxruntime's ReduceL2 (and its
    ReduceSumSquare) takes 3x as long as a Mul and a ReduceMean."""
    xs = (x[:, :, ::stride, ::stride] if stride > 1 else x).float()
    mean = xs.mean((2, 3))
    if torch.onnx.is_in_onnx_export():
        return mean, (xs * xs).mean((2, 3))  # Mul: its Pow is slower still
    return mean, torch.linalg.vector_norm(xs, dim=(2, 3)).square_().div_(xs.shape[2] * xs.shape[3])


def normalize_per_sample(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor, eps: float) -> torch.Tensor:
    """`x` [B, C, H, W] normalised with each sample's own statistics `mean`, `var` [B, C], then scaled and
    shifted by `weight`, `bias` [C]: sample b's channels become channels b*C.. of one sample, so that one
    fused batch_norm normalises them all (on the CPU 1.5x faster than scale-and-shift by hand).
    Compiled, the scale and shift per channel are computed first instead, each into a buffer of its own
    (`per_channel`). Exported the same way: the exporter writes batch_norm as a Mul and an Add over the pixels
    too."""
    b, c, h, w = x.shape
    if torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export():
        scale = per_channel(weight * torch.rsqrt(var + eps))  # [B, C]
        shift = per_channel(bias - mean * scale)
        return torch.addcmul(shift[:, :, None, None], x, scale[:, :, None, None])
    if b > 1:
        weight, bias = weight.repeat(b), bias.repeat(b)
    return F.batch_norm(x.reshape(1, b * c, h, w), mean.reshape(-1), var.reshape(-1), weight, bias,
                        False, 0.0, eps).view(b, c, h, w)


def per_channel(t: torch.Tensor) -> torch.Tensor:
    """`t` ([B, C], a normalisation's scale or shift) computed into a buffer of its own when compiled: inductor
    inlines a small expression into every loop that reads it, and in `auto`'s layers, whose statistics come out
    of a decision over the layer's channels, it inlined the variance, its rsqrt and the shift into the loop over
    every pixel, which made up most of what the decision cost there (docs/results/cost.md). Inductor realises a
    buffer it must keep in the given strides, which `t` already has; eager or exported (torch.export compiles
    too), `t` itself (adapters/backends.compile_step registers the op)."""
    if not torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export():
        return t
    return torch.ops.prims.inductor_force_stride_order(t, t.stride())

"""EMA AdaBN with alpha-blended source statistics: the adapted network as a pure function.

    AdaptedNet(frames[B], norm_state[B], momentum[B], alpha[B] or [B, layers]) -> (logits, new norm_state)

Sample b's state belongs to its own stream, so one batch can carry frames of many streams.
A stream's state is one tensor [2, N]: row 0 the EMA of the per-channel mean of every BN layer's
input, row 1 the EMA of the per-channel second moment, the layers' channels laid end to end.
Keeping the second moment (not the variance) pools the statistics over frames, so the variation
between frames counts, as AdaBN over a whole target domain does.

Each BN layer, inside the one forward pass (update, then normalise):
    mu_t  <- (1 - m) mu_t  + m mean_b(x)          sq_t <- (1 - m) sq_t + m mean_b(x^2)
    var_t  = sq_t - mu_t^2
    mean   = a mu_s + (1 - a) mu_t                  (the moments of the alpha-mixture of the
    var    = a var_s + (1 - a) var_t + a (1 - a) (mu_s - mu_t)^2      source and target domains)
m = 1, a = 0 is prediction-time BN (each frame's own statistics); a = 1 is the frozen model.
The alpha is given per sample (or per sample and layer), or decided inside each layer by an AlphaRule
from the state the frame has just updated there (auto's shift score): then a frame's own statistics
decide how much of them it is normalised with, with no frame's delay.
With `lag` the frame is normalised with the mixture of the source and the old state (nothing of the
frame, whose moments enter the state for the next one): a layer's affine is then known before its
input, and is folded per sample into the convolution before it (FoldedStreamBatchNorm2d).
That variance is already the exact variance of the mixture that TTN (Lim et al. 2023) uses, the
a (1 - a) (mu_s - mu_t)^2 term included (tests/adapters/test_ema_bn.py checks it against the closed form);
`rbn` is this with m = 0.05, a = 0, and DIGA's and norm_alpha's linear mix of variances is mixbn's
(adapters/diga.py), not this.
"""
import copy
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from driftseg.adapters.component import FEATURES, NETWORK, Component, run_network
from driftseg.models.batchnorm import (adaptable_norms, after_norm, fold_batchnorm, foldable_pairs,
                                       instance_moments, normalize_per_sample, other_norms)
from driftseg.models.registry import replace_module


def layer_divergence(stats: torch.Tensor, reference: torch.Tensor, source: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """[B, L]: per BN layer, the mean over channels of

        (mu - mu_ref)^2 / var_s  +  (log(var + f) - log(var_ref + f))^2

    between the moments `stats` [B, 2, N] (mean, second moment) and `reference` [2, N] or [B, 2, N]:
    the squared mean difference in units of the source variance var_s, plus the squared log-ratio
    of the variances (f = 1% of var_s). Unlike a KL divergence between the Gaussians it keeps its
    scale when a domain shrinks the activations' variance (dark frames, dead channels): the KL
    divides by that variance and explodes."""
    reference = reference.expand_as(stats)
    inverse_var_s, floor = divergence_scale(source)
    d = channel_divergence(stats[:, 0], stats[:, 1], reference[:, 0],
                           torch.log(variance(reference[:, 0], reference[:, 1]) + floor), inverse_var_s, floor)
    return torch.stack([part.mean(1) for part in d.split(sizes, dim=1)], dim=1)


def variance(mean: torch.Tensor, sq: torch.Tensor) -> torch.Tensor:
    return (sq - mean.square()).clamp_min(0)


def divergence_scale(source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """1 / var_s and f = 1% of var_s (var_s: the source variance + 1e-5), per channel, from the source
    moments [2, N]: what layer_divergence takes from the source."""
    var_s = variance(source[0], source[1]) + 1e-5
    return 1 / var_s, 0.01 * var_s


def channel_divergence(mean: torch.Tensor, sq: torch.Tensor, mean_ref: torch.Tensor, log_var_ref: torch.Tensor,
                       inverse_var_s: torch.Tensor, floor: torch.Tensor) -> torch.Tensor:
    """layer_divergence's terms per channel, [B, C], of the moments `mean`, `sq` [B, C] against a reference
    given by its mean and log(var_ref + f), with divergence_scale's 1 / var_s and f."""
    return (mean - mean_ref).square() * inverse_var_s + (torch.log(variance(mean, sq) + floor) - log_var_ref).square()


# alpha [B] of BN layer `index`, decided inside it from its state just updated with the frame: its mean and
# second moment, [B, C] each
AlphaRule = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


class Blend(NamedTuple):
    """A layer's mixture for a given alpha, linear in the frame's moments: base + gain * frame."""

    base_mean: torch.Tensor
    base_sq: torch.Tensor
    gain: torch.Tensor


class Decide(NamedTuple):
    """What a layer decides its alpha from: the old state's moments, the momentum [B, 1] and the rule (bound to
    the layer); and the source moments it blends in (slices of AdaptedNet.source: one input to a compiled graph
    for every layer, not two a layer)."""

    old_mean: torch.Tensor
    old_sq: torch.Tensor
    momentum: torch.Tensor
    rule: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    source_mean: torch.Tensor
    source_sq: torch.Tensor


class StreamBatchNorm2d(nn.Module):
    """A BatchNorm2d whose statistics come from each sample's stream state; what a known subclass does
    after normalising (timm's BatchNormAct2d: dropout, activation) runs after it as `after`."""

    def __init__(self, bn: nn.BatchNorm2d, stride: int = 1):
        super().__init__()
        self.num_features, self.eps, self.stride = bn.num_features, bn.eps, stride
        ones = torch.ones(bn.num_features, device=bn.running_mean.device)
        weight, bias = (bn.weight, bn.bias) if bn.affine else (ones, torch.zeros_like(ones))  # affine=False: identity
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.after = after_norm(bn)
        self.register_buffer("source_mean", bn.running_mean.detach().clone().float())
        self.register_buffer("source_var", bn.running_var.detach().clone().float())
        # set by AdaptedNet for the duration of one forward call, never kept across calls
        self._inputs: Blend | Decide | None = None
        self._outputs: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._inputs is None:
            raise RuntimeError("StreamBatchNorm2d runs only inside AdaptedNet.forward")
        frame_mean, frame_sq = self._outputs = instance_moments(x, self.stride)
        if isinstance(self._inputs, Decide):  # the alpha decided here, from the state this frame updates
            old_mean, old_sq, m, rule, source_mean, source_sq = self._inputs
            mean, sq = torch.lerp(old_mean, frame_mean, m), torch.lerp(old_sq, frame_sq, m)
            a = rule(mean, sq)[:, None]
            mean, sq = torch.lerp(mean, source_mean, a), torch.lerp(sq, source_sq, a)
            var = sq.addcmul_(mean, mean, value=-1).clamp_min_(0)
        else:  # the mixture's moments are linear in the frame's: everything else was done for all layers at once
            base_mean, base_sq, gain = self._inputs
            mean = torch.addcmul(base_mean, gain, frame_mean)
            var = torch.addcmul(base_sq, gain, frame_sq).addcmul_(mean, mean, value=-1).clamp_min_(0)
        out = normalize_per_sample(x, mean, var, self.weight, self.bias, self.eps)
        return self.after(out) if self.after is not None else out


class FoldedStreamBatchNorm2d(StreamBatchNorm2d):
    """A BN layer with a one-frame lag (AdaptedNet(lag=True)) folded into the convolution before it: its
    statistics are known before its input is, so for a single frame the affine scales the conv's weights,
    and the layer costs no pass of its own beyond its frame statistics, read off the convolution's output
    and mapped back through the affine. Installed in the conv's place; the BN's place keeps only what runs
    after it (`after`)."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, stride: int = 1):
        super().__init__(bn, stride)
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._inputs is None:
            raise RuntimeError("FoldedStreamBatchNorm2d runs only inside AdaptedNet.forward")
        mean, sq, _ = self._inputs  # lagged: the gain on the frame's own moments is 0
        var = (sq - mean.square()).clamp_min(0)
        # unfolded in batches, where the per-sample weights would make the convolution a grouped one (slower in
        # oneDNN and inductor than the statistics and the normalisation), and in ONNX, whose Conv takes its
        # groups as a constant while the exported batch is not
        if x.shape[0] > 1 or torch.onnx.is_in_onnx_export():
            y = self.conv(x)
            self._outputs = instance_moments(y, self.stride)
            z = normalize_per_sample(y, mean, var, self.weight, self.bias, self.eps)
            return self.after(z) if self.after is not None else z
        scale = self.weight * torch.rsqrt(var + self.eps)  # [1, C]
        shift = self.bias - mean * scale  # the BN's output z = scale y + shift, y the conv's output
        conv = self.conv
        weight = (conv.weight * scale[0, :, None, None, None]).to(x.dtype)
        bias = shift[0] if conv.bias is None else torch.addcmul(shift[0], conv.bias, scale[0])
        z = F.conv2d(x, weight, bias.to(x.dtype), conv.stride, conv.padding, conv.dilation, conv.groups)
        # y = (z - shift) / scale; a channel scaled to 0 (BN weight 0) shows nothing of y: the source moments
        z_mean, z_sq = instance_moments(z, self.stride)
        live = scale.abs() > 1e-12
        inverse = torch.where(live, 1 / torch.where(live, scale, 1.0), 0.0)
        y_mean = torch.where(live, (z_mean - shift) * inverse, self.source_mean)
        y_sq = torch.where(live, (z_sq - 2 * shift * z_mean + shift.square()) * inverse.square(),
                           self.source_var + self.source_mean.square())
        self._outputs = y_mean, y_sq
        return self.after(z) if self.after is not None else z


NO_BN = ("the network has no BatchNorm layer that BN adaptation can take over (exactly nn.BatchNorm2d, or "
         "timm's BatchNormAct2d, with running statistics): ema, ptbn, auto and tent cannot run on it; label "
         "calibration and FDA still can (method `source+lc`, `fda+lc`)")


class AdaptedNet(nn.Module):
    """A copy of `model` whose BN layers (models/batchnorm.py: exactly nn.BatchNorm2d, or a subclass
    handled on purpose) normalise with per-stream blended statistics. Other BN subclasses, whose
    forward may do more than normalise, stay as the model has them (`self.left`)."""

    def __init__(self, model: nn.Module, layers: int | None = None, stride: int = 1, lag: bool = False):
        """Adapt the first `layers` BN layers in module order (all when None, or when the model has
        fewer); the rest are folded into their convolutions, as in the frozen model: cheaper, for
        shifts that the early layers' statistics carry (light, colour, noise, blur). `stride`: each
        layer's frame statistics from every stride-th pixel of every stride-th row (1: all pixels).
        `lag`: normalise a frame with its stream's statistics up to the frame before (its own moments
        enter the state only after it), so that an adapted layer that follows a convolution is folded
        into it per sample (FoldedStreamBatchNorm2d)."""
        super().__init__()
        names = adaptable_norms(model)
        if not names:
            raise ValueError(NO_BN)
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        if layers is not None and layers < 1:
            raise ValueError(f"layers must be >= 1 (the model has {len(names)} BN layers), got {layers}")
        self.left = other_norms(model)
        self.layer_names = adapted = names[:layers]  # of the adapted layers, as in `model`
        self.model = fold_batchnorm(model, keep=set(adapted)) if layers is not None else copy.deepcopy(model)
        self.lag = lag
        folded = {bn: conv for conv, bn in foldable_pairs(copy.deepcopy(self.model))
                  if self.model.get_submodule(conv).padding_mode == "zeros"} if lag else {}
        self.norms: list[StreamBatchNorm2d] = []
        for name in adapted:
            bn = self.model.get_submodule(name)
            if name in folded:
                conv = folded[name]
                self.norms.append(FoldedStreamBatchNorm2d(self.model.get_submodule(conv), bn, stride))
                replace_module(self.model, conv, self.norms[-1])
                replace_module(self.model, name, self.norms[-1].after or nn.Identity())
            else:
                self.norms.append(StreamBatchNorm2d(bn, stride))
                replace_module(self.model, name, self.norms[-1])
        self.sizes = [n.num_features for n in self.norms]
        mean = torch.cat([n.source_mean for n in self.norms])
        self.register_buffer("source", torch.stack([mean, torch.cat([n.source_var for n in self.norms]) + mean.square()]))
        self.register_buffer("channel_layer", torch.arange(len(self.sizes)).repeat_interleave(torch.tensor(self.sizes)))
        self.requires_grad_(False)  # backprop-free: batch_norm refuses statistics that carry grad

    @property
    def state_size(self) -> int:
        return sum(self.sizes)

    def source_state(self) -> torch.Tensor:
        """[2, N]: the source means and second moments, the state every stream starts from."""
        return self.source.clone()

    def forward(
        self, images: torch.Tensor, state: torch.Tensor, momentum: torch.Tensor, alpha: torch.Tensor | AlphaRule,
        scratch: dict[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, new state); the classifier's features too, into `scratch`, where it asks
        (component.run_network). `alpha`: [B] or [B, layers], or an AlphaRule that each layer asks."""
        b = images.shape[0]
        if state.shape != (b, 2, self.state_size):
            raise ValueError(f"state should be [{b}, 2, {self.state_size}], got {list(state.shape)}")
        layers = len(self.norms)
        shapes = ((b,), (b, layers))
        if momentum.shape != (b,) or not (callable(alpha) or alpha.shape in shapes):
            raise ValueError(f"momentum should be [{b}] and alpha [{b}] or [{b}, {layers}] (one per BN layer), "
                             f"got {list(momentum.shape)}, {list(getattr(alpha, 'shape', []))}")
        if callable(alpha) and self.lag:
            raise ValueError("an alpha decided inside the layers needs the frame's own statistics: not with lag")
        state = state.float()
        m = momentum.float()[:, None, None]
        if callable(alpha):
            olds = zip(state[:, 0].split(self.sizes, 1), state[:, 1].split(self.sizes, 1),
                       self.source[0].split(self.sizes), self.source[1].split(self.sizes))
            parts = (Decide(mean, sq, m[:, 0], partial(alpha, i), source_mean, source_sq)
                     for i, (mean, sq, source_mean, source_sq) in enumerate(olds))
        else:
            a = (alpha.float()[:, None] if alpha.ndim == 1 else alpha.float()[:, self.channel_layer])[:, None]  # [B, 1, N]
            if self.lag:  # mixture = a source + (1 - a) old: nothing of the frame
                base, gain = torch.lerp(state, self.source, a), state.new_zeros(b, self.state_size)
            else:  # mixture = a source + (1 - a) ((1 - m) old + m frame) = base + gain frame, in both moments
                base = torch.lerp((1 - m) * state, self.source, a)
                gain = ((1 - a) * m)[:, 0].expand(b, self.state_size)
            parts = map(Blend, base[:, 0].split(self.sizes, 1), base[:, 1].split(self.sizes, 1), gain.split(self.sizes, 1))
        for norm, inputs in zip(self.norms, parts):
            norm._inputs, norm._outputs = inputs, None
        try:
            logits = run_network(self.model, images, scratch or {})
            # a layer the forward never reached (an unused auxiliary head) keeps its state
            olds = zip(state[:, 0].split(self.sizes, 1), state[:, 1].split(self.sizes, 1))
            frame = [n._outputs or old for n, old in zip(self.norms, olds)]
        finally:
            for norm in self.norms:
                norm._inputs = norm._outputs = None
        frame = torch.stack([torch.cat([mean for mean, _ in frame], 1), torch.cat([sq for _, sq in frame], 1)], 1)
        return logits, torch.lerp(state, frame, m)


@dataclass
class NormState:
    """One stream's BN statistics [2, N] (see the module docstring), resettable to the source."""

    stats: torch.Tensor
    source: torch.Tensor  # shared by every stream, never written

    @classmethod
    def initial(cls, source: torch.Tensor) -> "NormState":
        return cls(stats=source.clone(), source=source)

    def reset(self) -> None:
        self.stats = self.source.clone()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"stats": self.stats.clone()}

    def load_state_dict(self, d: dict) -> None:
        stats = d.get("stats")
        if not isinstance(stats, torch.Tensor) or stats.shape != self.source.shape:
            got = list(stats.shape) if isinstance(stats, torch.Tensor) else type(stats).__name__
            raise ValueError(f"norm stats must be a tensor of shape {list(self.source.shape)}, got {got}")
        if not torch.isfinite(stats).all():
            raise ValueError("norm stats hold non-finite values")
        self.stats = stats.to(self.source).clone()


# the fastest EMA a lag runs at: with this check lifted, on dusk, gaussian_noise and night, m = 0.5 fell below
# the frozen model and m = 1 to 3 mIoU; the lag costs m = 0.1 a point of mean mIoU and m = 0.25 four
# (experiments/cost.sh lag)
LAG_MAX_MOMENTUM = 0.25


@dataclass(frozen=True)
class EMAConfig:
    m: float = 0.1  # EMA momentum; 1: each frame's own statistics
    alpha: float = 0.0  # weight of the source statistics in the blend
    layers: int = 0  # BN layers adapted, the first ones; 0: all
    stride: int = 1  # frame statistics from every stride-th pixel and row (AdaptedNet)
    lag: int = 0  # 1: normalise with the statistics up to the frame before, folded into the convolutions

    def __post_init__(self):
        if not 0.0 <= self.m <= 1.0:
            raise ValueError(f"ema m must be in [0, 1], got {self.m}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"ema alpha must be in [0, 1], got {self.alpha}")
        if self.layers < 0:
            raise ValueError(f"layers must be >= 0 (0: all BN layers), got {self.layers}")
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1 (1: every pixel), got {self.stride}")
        if self.lag not in (0, 1):
            raise ValueError(f"lag must be 0 (each frame normalised with its own statistics) or 1 (with those up to "
                             f"the frame before), got {self.lag}")
        if self.lag and self.m > LAG_MAX_MOMENTUM:
            raise ValueError(f"lag=1 needs m <= {LAG_MAX_MOMENTUM}, got {self.m}: with a faster EMA each layer chases "
                             "statistics measured under the previous frame's normalisation of the layers before it, "
                             "and the stream collapses (docs/methods.md)")



class EMA(Component):
    """`ema`: EMA AdaBN with a fixed momentum and alpha (`ptbn` is m=1, alpha=0). A stream's part is
    its NormState under "norm"; in the batch, "stats" [B, 2, N]."""

    name, stage, Config = "ema", NETWORK, EMAConfig
    provides = FEATURES

    def __init__(self, config, ckpt, model, device):
        super().__init__(config, ckpt, model, device)
        self.module = AdaptedNet(model, config.layers or None, config.stride, bool(config.lag)).to(device).eval()
        self.source = self.module.source_state()

    def new_state(self):
        return {"norm": NormState.initial(self.source)}

    def stack(self, states):
        return {"stats": torch.stack([s.parts["norm"].stats for s in states])}

    def forward(self, images, batch, out, scratch):
        b = images.shape[0]
        momentum = torch.full((b,), self.config.m, device=images.device)
        alpha = torch.full((b,), self.config.alpha, device=images.device)
        logits, out["stats"] = self.module(images, batch["stats"], momentum, alpha, scratch)
        return logits

    def scatter(self, old, new, out):
        for s, prev, stats in zip(new, old, out["stats"]):
            s.parts["norm"] = replace(prev.parts["norm"], stats=stats)

    def describe(self, state):
        return {"layers": self.layer_views(state)}

    def layer_views(self, state, alpha: torch.Tensor | None = None, tau: torch.Tensor | None = None) -> list[dict]:
        """Per adapted BN layer: its name, channels, the stream's divergence from the source, the shift
        (the divergence in units of `tau`, the calibration, where there is one) and the alpha of its last frame."""
        net = self.module
        divergence = layer_divergence(state.parts["norm"].stats[None].float(), self.source, self.source, net.sizes)[0]
        shift = divergence / tau if tau is not None else None
        return [{"index": i, "name": name, "channels": channels, "divergence": float(divergence[i]),
                 "shift": float(shift[i]) if shift is not None else None,
                 "alpha": float(alpha[i]) if alpha is not None else self.config.alpha}
                for i, (name, channels) in enumerate(zip(net.layer_names, net.sizes))]

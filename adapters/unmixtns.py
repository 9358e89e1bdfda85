"""UnMix-TNS (Tomar et al., ICLR 2024, "Un-Mixing Test-Time Normalization Statistics: Combatting Label
Temporal Correlation"; code devavratTomar/unmixtns, tta_experiments/utils/unmixtns.py), per stream.

Every BN layer keeps K statistics components (mu_k, var_k) per channel, per stream. For a frame with
instance statistics (m_i, v_i) (its own per-channel mean and biased variance):

    p_k      = softmax_k(cos(m_i, mu_k) / temp)                 how much the frame belongs to component k
    mean_k   = (1 - p_k) mu_k  + p_k m_i                        each component with the frame mixed in
    var_k    = (1 - p_k) var_k + p_k v_i
    mean     = avg_k mean_k,    var = avg_k var_k + avg_k mean_k^2 - mean^2   (the equal-weight mixture)
    update   mu_k  <- mu_k  + m p_k (m_i - mu_k),   var_k <- var_k + m p_k (v_i - var_k)

the frame normalised with (mean, var). The components start around the source statistics: mu_k = mu_s +
sqrt(c K / (K - 1)) sd_s z_k with z_k ~ N(0, 1), var_k = (1 - c) var_s, c = 1/2 (mu_k = mu_s, var_k =
var_s for K = 1), so that their mixture has the source's mean and, in expectation, its variance. The z_k
are drawn once from a generator seeded with 0: every stream, every run, starts from the same components.

As released, with two choices written down: the batch is one frame of one stream, so the update is that
frame's alone (the released code averages it over a batch of one stream's samples); and the default
momentum is the released one for a batch of 1, 1 - (1 - 0.1)^(1/64) (BN's 0.1 per batch of 64 samples,
`replace_bn_layers` with bs=1, bs_max=64).
"""
import copy
import math
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.nn import functional as F

from driftseg.adapters.component import FEATURES, NETWORK, Component, run_network
from driftseg.adapters.ema_bn import NO_BN, NormState
from driftseg.models.batchnorm import adaptable_norms, after_norm, instance_moments, normalize_per_sample
from driftseg.models.registry import wrap_modules

SPREAD = 0.5  # c: the share of the source variance that the components' means spread over at the start


def initial_components(mean: torch.Tensor, var: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """[2, K, C]: K components' means and variances around the source's `mean`, `var` [C] (docstring)."""
    if k == 1:
        return torch.stack([mean, var])[:, None]
    z = torch.randn(k, mean.shape[0], generator=torch.Generator().manual_seed(seed)).to(mean)
    means = mean + math.sqrt(SPREAD * k / (k - 1)) * var.sqrt() * z
    return torch.stack([means, (1 - SPREAD) * var.expand(k, -1)])


def unmix_statistics(frame_mean: torch.Tensor, frame_var: torch.Tensor, components: torch.Tensor, temp: float,
                     momentum: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The normalising statistics of frames with instance statistics [B, C] against their streams'
    components [B, 2, K, C]: (mean [B, C], var [B, C], updated components [B, 2, K, C])."""
    mu, var_k = components[:, 0], components[:, 1]
    similarity = torch.einsum("bc,bkc->bk", F.normalize(frame_mean, dim=1), F.normalize(mu, dim=2))
    p = (similarity / temp).softmax(1)[..., None]  # [B, K, 1]
    means = torch.lerp(mu, frame_mean[:, None], p)
    variances = torch.lerp(var_k, frame_var[:, None], p)
    mean = means.mean(1)
    var = (variances.mean(1) + means.square().mean(1) - mean.square()).clamp_min(0)
    new = torch.stack([torch.lerp(mu, frame_mean[:, None], momentum * p),
                       torch.lerp(var_k, frame_var[:, None], momentum * p)], 1)
    return mean, var, new


class UnMixBatchNorm2d(nn.Module):
    """A BatchNorm2d normalising each sample with UnMix-TNS statistics from its stream's components,
    set by UnMixNet for one call (`components` [B, 2, K, C]); the updated ones are left in `updated`."""

    def __init__(self, bn: nn.BatchNorm2d, temp: float, momentum: float):
        super().__init__()
        self.num_features, self.eps, self.temp, self.momentum = bn.num_features, bn.eps, temp, momentum
        self.register_buffer("weight", bn.weight.detach().clone())
        self.register_buffer("bias", bn.bias.detach().clone())
        self.register_buffer("source_mean", bn.running_mean.detach().clone().float())
        self.register_buffer("source_var", bn.running_var.detach().clone().float())
        self.after = after_norm(bn)  # a known subclass's activation (models/batchnorm.py)
        # set by UnMixNet for the duration of one forward pass, never kept across calls
        self.components: torch.Tensor | None = None
        self.updated: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.components is None:
            raise RuntimeError("UnMixBatchNorm2d runs only inside UnMixNet.forward")
        frame_mean, frame_sq = instance_moments(x)
        frame_var = (frame_sq - frame_mean.square()).clamp_min(0)
        mean, var, self.updated = unmix_statistics(frame_mean, frame_var, self.components, self.temp, self.momentum)
        out = normalize_per_sample(x, mean, var, self.weight, self.bias, self.eps)
        return self.after(out) if self.after is not None else out


class UnMixNet(nn.Module):
    """A copy of `model` whose BN layers are UnMixBatchNorm2d, per stream:

        (frames [B], components [B, 2, K, N], scratch) -> (logits, new components)

    the components of every BN layer laid end to end along N."""

    def __init__(self, model: nn.Module, k: int, temp: float, momentum: float):
        super().__init__()
        names = adaptable_norms(model)
        if not names:
            raise ValueError(NO_BN)
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.norms: list[UnMixBatchNorm2d] = wrap_modules(self.model, names, lambda bn: UnMixBatchNorm2d(bn, temp, momentum))
        self.sizes = [n.num_features for n in self.norms]
        self.register_buffer("source", torch.cat(
            [initial_components(n.source_mean, n.source_var, k) for n in self.norms], 2))

    def forward(self, images: torch.Tensor, components: torch.Tensor,
                scratch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        b = images.shape[0]
        if components.shape != (b, *self.source.shape):
            raise ValueError(f"components should be {[b, *self.source.shape]}, got {list(components.shape)}")
        try:
            for norm, part in zip(self.norms, components.float().split(self.sizes, 3)):
                norm.components = part
            logits = run_network(self.model, images, scratch)
            # a layer the forward never reached (an unused auxiliary head) keeps its components
            new = torch.cat([n.updated if n.updated is not None else n.components for n in self.norms], 3)
        finally:
            for norm in self.norms:
                norm.components = norm.updated = None
        return logits, new


@dataclass(frozen=True)
class UnMixConfig:
    k: int = 16  # statistics components per BN layer (the released default for one domain at a time)
    temp: float = 0.07  # temperature of the components' softmax
    m: float = 1 - 0.9 ** (1 / 64)  # momentum of the components, per frame

    def __post_init__(self):
        if not 1 <= self.k <= 256:
            raise ValueError(f"unmixtns k must be in [1, 256], got {self.k}")
        if not self.temp > 0:
            raise ValueError(f"unmixtns temp must be > 0, got {self.temp}")
        if not 0.0 <= self.m <= 1.0:
            raise ValueError(f"unmixtns m must be in [0, 1], got {self.m}")


class UnMixTNS(Component):
    """`unmixtns`: a stream's part is its components as a NormState under "unmixtns" (stats [2, K, N]);
    in the batch, "unmix" [B, 2, K, N]."""

    name, stage, Config = "unmixtns", NETWORK, UnMixConfig
    provides = FEATURES

    def __init__(self, config, ckpt, model, device):
        super().__init__(config, ckpt, model, device)
        self.module = UnMixNet(model, config.k, config.temp, config.m).to(device)

    def new_state(self):
        return {"unmixtns": NormState.initial(self.module.source)}

    def stack(self, states):
        return {"unmix": torch.stack([s.parts["unmixtns"].stats for s in states])}

    def forward(self, images, batch, out, scratch):
        logits, out["unmix"] = self.module(images, batch["unmix"], scratch)
        return logits

    def scatter(self, old, new, out):
        for s, prev, components in zip(new, old, out["unmix"]):
            s.parts["unmixtns"] = replace(prev.parts["unmixtns"], stats=components)

"""AdaMixBN, the statistics mixing of DomainAdaptor (Zhang et al., ICCV 2023, "DomainAdaptor: A Novel
Approach to Test-time Adaptation"; code koncle/DomainAdaptor), without its backprop loss, online per stream.

Released (`AdaMixBN.get_mu_var` with transform off, to which its rectified affine is equal): every BN layer
normalises a test batch with

    mean = lam mu_s + (1 - lam) mu_t          var = lam var_s + (1 - lam) var_t

(mu_t, var_t) the target statistics, and lam, per layer, from three distances between statistics, each
d(a, b) = mean_c (mu_a - mu_b)^2 + mean_c (sd_a - sd_b)^2 over the layer's channels:

    lam = clip(1 - d(t, s) / (d(t, s) + d(i, s) + d(i, t)), 0, 1)

for an instance i (averaged over the batch's instances). A target far from the source leans on the
target, unless the instance is far from the target too. There the target is the test batch, which
holds the instance: at batch 1 (one camera frame) d(i, t) = 0, d(i, s) = d(t, s), and lam = 1/2 for every
layer and frame. Online, a stream is the target domain: here (mu_t, var_t) are an EMA of the stream's
frames with the frame included, mean and second moment as in `ema`, from the source's,

    mu_t <- (1 - m) mu_t + m mean(frame)      sq_t <- (1 - m) sq_t + m mean(frame^2)     var_t = sq_t - mu_t^2

so lam weighs how far the stream has gone against how far this frame is from the stream and from the
source (with m = 1 it is the released batch-1 case, lam = 1/2). Instance variances are biased (the
released one is unbiased: a factor hw/(hw - 1) on a feature map of hw pixels).
"""
import copy
from dataclasses import dataclass, replace

import torch
from torch import nn

from driftseg.adapters.component import FEATURES, NETWORK, Component, run_network
from driftseg.adapters.ema_bn import NO_BN, NormState
from driftseg.models.batchnorm import adaptable_norms, after_norm, instance_moments, normalize_per_sample
from driftseg.models.registry import wrap_modules


def statistics_distance(mean_a, var_a, mean_b, var_b) -> torch.Tensor:
    """d(a, b) over the last dim (channels): mean (mu_a - mu_b)^2 + mean (sd_a - sd_b)^2."""
    return (mean_a - mean_b).square().mean(-1) + (var_a.sqrt() - var_b.sqrt()).square().mean(-1)


def adamix_lambda(frame_mean, frame_var, target_mean, target_var, source_mean, source_var) -> torch.Tensor:
    """[B]: AdaMixBN's weight of the source statistics for frames [B, C] on targets [B, C] (docstring);
    1 where the frame, the target and the source coincide (every mix is the same there)."""
    st = statistics_distance(target_mean, target_var, source_mean, source_var)
    total = st + statistics_distance(frame_mean, frame_var, source_mean, source_var) + \
        statistics_distance(frame_mean, frame_var, target_mean, target_var)
    return torch.where(total > 0, 1 - st / total.clamp_min(torch.finfo(total.dtype).tiny), 1.0).clamp(0, 1)


class AdaMixBatchNorm2d(nn.Module):
    """A BatchNorm2d normalising each sample with AdaMixBN's statistics against its stream's moments, set
    by AdaMixNet for one call (`moments`: mean, second moment [B, C] each, and the momentum [B, 1]); the
    updated moments are left in `updated`."""

    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__()
        self.num_features, self.eps = bn.num_features, bn.eps
        self.register_buffer("weight", bn.weight.detach().clone())
        self.register_buffer("bias", bn.bias.detach().clone())
        self.register_buffer("source_mean", bn.running_mean.detach().clone().float())
        self.register_buffer("source_var", bn.running_var.detach().clone().float())
        self.after = after_norm(bn)  # a known subclass's activation (models/batchnorm.py)
        # set by AdaMixNet for the duration of one forward pass, never kept across calls
        self.moments: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.updated: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.moments is None:
            raise RuntimeError("AdaMixBatchNorm2d runs only inside AdaMixNet.forward")
        stream_mean, stream_sq, m = self.moments
        frame_mean, frame_sq = instance_moments(x)
        frame_var = (frame_sq - frame_mean.square()).clamp_min(0)
        target_mean, target_sq = torch.lerp(stream_mean, frame_mean, m), torch.lerp(stream_sq, frame_sq, m)
        target_var = (target_sq - target_mean.square()).clamp_min(0)
        self.updated = (target_mean, target_sq)
        lam = adamix_lambda(frame_mean, frame_var, target_mean, target_var, self.source_mean, self.source_var)[:, None]
        mean, var = torch.lerp(target_mean, self.source_mean, lam), torch.lerp(target_var, self.source_var, lam)
        out = normalize_per_sample(x, mean, var, self.weight, self.bias, self.eps)
        return self.after(out) if self.after is not None else out


class AdaMixNet(nn.Module):
    """A copy of `model` whose BN layers are AdaMixBatchNorm2d, per stream:

        (frames [B], moments [B, 2, N], momentum [B], scratch) -> (logits, new moments)

    moments: row 0 the stream's mean, row 1 its second moment, every BN layer's channels end to end."""

    def __init__(self, model: nn.Module):
        super().__init__()
        names = adaptable_norms(model)
        if not names:
            raise ValueError(NO_BN)
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.norms: list[AdaMixBatchNorm2d] = wrap_modules(self.model, names, AdaMixBatchNorm2d)
        self.sizes = [n.num_features for n in self.norms]
        mean = torch.cat([n.source_mean for n in self.norms])
        self.register_buffer("source", torch.stack([mean, torch.cat([n.source_var for n in self.norms]) + mean.square()]))

    def forward(self, images: torch.Tensor, moments: torch.Tensor, momentum: torch.Tensor,
                scratch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        b = images.shape[0]
        if moments.shape != (b, *self.source.shape) or momentum.shape != (b,):
            raise ValueError(f"moments should be {[b, *self.source.shape]} and momentum [{b}], "
                             f"got {list(moments.shape)}, {list(momentum.shape)}")
        moments, m = moments.float(), momentum.float()[:, None]
        try:
            for norm, mean, sq in zip(self.norms, moments[:, 0].split(self.sizes, 1), moments[:, 1].split(self.sizes, 1)):
                norm.moments = (mean, sq, m)
            logits = run_network(self.model, images, scratch)
            # a layer the forward never reached (an unused auxiliary head) keeps its moments
            new = [n.updated or n.moments[:2] for n in self.norms]
        finally:
            for norm in self.norms:
                norm.moments = norm.updated = None
        return logits, torch.stack([torch.cat([mean for mean, _ in new], 1), torch.cat([sq for _, sq in new], 1)], 1)


@dataclass(frozen=True)
class AdaMixConfig:
    m: float = 0.1  # momentum of the stream's statistics, the target domain's

    def __post_init__(self):
        if not 0.0 < self.m <= 1.0:
            raise ValueError(f"adamixbn m must be in (0, 1], got {self.m}")


class AdaMix(Component):
    """`adamixbn`: a stream's part is its moments as a NormState under "adamixbn" ([2, N]); in the batch,
    "adamix" [B, 2, N]."""

    name, stage, Config = "adamixbn", NETWORK, AdaMixConfig
    provides = FEATURES

    def __init__(self, config, ckpt, model, device):
        super().__init__(config, ckpt, model, device)
        self.module = AdaMixNet(model).to(device)

    def new_state(self):
        return {"adamixbn": NormState.initial(self.module.source)}

    def stack(self, states):
        return {"adamix": torch.stack([s.parts["adamixbn"].stats for s in states])}

    def forward(self, images, batch, out, scratch):
        momentum = torch.full((images.shape[0],), self.config.m, device=images.device)
        logits, out["adamix"] = self.module(images, batch["adamix"], momentum, scratch)
        return logits

    def scatter(self, old, new, out):
        for s, prev, moments in zip(new, old, out["adamix"]):
            s.parts["adamixbn"] = replace(prev.parts["adamixbn"], stats=moments)

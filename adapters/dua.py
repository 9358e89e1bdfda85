"""DUA (Mirza et al., CVPR 2022, "The Norm Must Go On: Dynamic Unsupervised Domain Adaptation by
Normalization"; code jmiemirza/DUA): each frame first moves the stream's BN running statistics toward
those of a small batch of augmented copies of it, then is predicted with the updated statistics.

For the k-th frame of a stream (k = 1, 2, ...; the statistics start at the source's):

    copies   n random crops of the frame, each side a fraction s ~ U[0.5, 1] of the frame's, anywhere in
             it, resized back to the network's input size, half of them flipped left-right (`crop_thetas`)
    pass 1   the copies through the network with BN in training mode: each BN layer normalises the
             copies with their own statistics, pooled over the copies
    update   mu <- (1 - m_k) mu + m_k mean,  var <- (1 - m_k) var + m_k var_unbiased,
             m_k = 0.1 * 0.94^k + 0.005 (the official mom_pre * decay_factor + min_momentum_constant)
    pass 2   the frame, each BN layer normalising with the updated (mu, var): the prediction.

Pooling: to every BN layer the n copies are one batch, as in the official code (64 copies there): the
mean over all pixels of all copies, and the variance of all those pixels around it, which is the mean of
the copies' own variances plus the variance of their means (the copies have equal sizes), made unbiased
with the pooled pixel count as torch's BatchNorm2d does for its running variance.

Left out of the official procedure: after every frame it evaluates the whole labelled test set and keeps
the statistics of the best step (`result_improved`), a choice by test labels that the online protocol
forbids: here every frame's update is kept. Its random 90-degree rotations of the copies (from TTT's
rotation task) are left out too: a road scene turned on its side is no frame a camera sends.

The crops of frame k are drawn from a generator seeded with k, on the host in `stack`, so that a stream's
copies do not depend on which other streams share its batch, and the forward stays a pure tensor function.
"""
import copy
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.nn import functional as F

from driftseg.adapters.component import FEATURES, NETWORK, Component, run_network
from driftseg.models.batchnorm import adaptable_norms, after_norm, normalize_per_sample
from driftseg.models.registry import wrap_modules

M0, DECAY, FLOOR = 0.1, 0.94, 0.005  # the official momentum schedule


def dua_momentum(k: int) -> float:
    """m_k of the k-th frame (k >= 1)."""
    return M0 * DECAY**k + FLOOR


def crop_thetas(n: int, seed: int) -> torch.Tensor:
    """[n, 2, 3] affine maps (F.affine_grid's, output to input in [-1, 1] coordinates) of n random crops,
    each side a fraction s ~ U[0.5, 1], placed uniformly inside the frame, half of them flipped."""
    g = torch.Generator().manual_seed(seed)
    s, x, y, flip = torch.rand(4, n, generator=g)
    s = 0.5 + 0.5 * s
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = torch.where(flip < 0.5, -s, s)
    theta[:, 1, 1] = s
    theta[:, 0, 2] = (1 - s) * (2 * x - 1)
    theta[:, 1, 2] = (1 - s) * (2 * y - 1)
    return theta


def augmented_copies(images: torch.Tensor, thetas: torch.Tensor) -> torch.Tensor:
    """[B * n, 3, H, W]: images [B, 3, H, W] through each of their thetas [B, n, 2, 3] (bilinear, at the
    images' size), sample b's copies at b*n .. b*n + n - 1."""
    b, n = thetas.shape[:2]
    frames = images.repeat_interleave(n, 0)
    grid = F.affine_grid(thetas.reshape(b * n, 2, 3).to(images.dtype), list(frames.shape), align_corners=False)
    return F.grid_sample(frames, grid, mode="bilinear", padding_mode="border", align_corners=False)


class DUABatchNorm2d(nn.Module):
    """A BatchNorm2d set by DUANet for one call: either normalising groups of `copies` consecutive samples
    with their pooled statistics (and keeping them), or each sample with statistics given per sample."""

    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__()
        self.num_features, self.eps = bn.num_features, bn.eps
        self.register_buffer("weight", bn.weight.detach().clone())
        self.register_buffer("bias", bn.bias.detach().clone())
        self.register_buffer("source_mean", bn.running_mean.detach().clone().float())
        self.register_buffer("source_var", bn.running_var.detach().clone().float())
        self.after = after_norm(bn)  # a known subclass's activation (models/batchnorm.py)
        # set by DUANet for the duration of one forward pass, never kept across calls
        self.copies: int | None = None
        self.given: tuple[torch.Tensor, torch.Tensor] | None = None
        self.pooled: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if self.copies is not None:
            xf = x.float()
            mean = xf.mean((2, 3)).view(-1, self.copies, c).mean(1)
            sq = torch.linalg.vector_norm(xf, dim=(2, 3)).square().div(h * w).view(-1, self.copies, c).mean(1)
            var = (sq - mean.square()).clamp_min(0)
            n = self.copies * h * w
            self.pooled = (mean, var * n / max(n - 1, 1))
            mean, var = mean.repeat_interleave(self.copies, 0), var.repeat_interleave(self.copies, 0)
        elif self.given is not None:
            mean, var = self.given
        else:
            raise RuntimeError("DUABatchNorm2d runs only inside DUANet.forward")
        out = normalize_per_sample(x, mean, var, self.weight, self.bias, self.eps)
        return self.after(out) if self.after is not None else out


class DUANet(nn.Module):
    """A copy of `model` whose BN layers run DUA's two passes (module docstring), per stream:

        (frames [B], copies [B * n], stats [B, 2, N], momentum [B], scratch) -> (logits, new stats)

    stats: row 0 every BN layer's running mean, row 1 its running (unbiased) variance, end to end."""

    def __init__(self, model: nn.Module):
        super().__init__()
        names = adaptable_norms(model)  # exactly BatchNorm2d, or a subclass handled on purpose
        if not names:
            raise ValueError("DUA needs a model with BatchNorm2d layers")
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.norms: list[DUABatchNorm2d] = wrap_modules(self.model, names, DUABatchNorm2d)
        self.sizes = [n.num_features for n in self.norms]
        self.register_buffer("source", torch.stack([torch.cat([n.source_mean for n in self.norms]),
                                                    torch.cat([n.source_var for n in self.norms])]))

    def forward(self, images: torch.Tensor, copies: torch.Tensor, stats: torch.Tensor, momentum: torch.Tensor,
                scratch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        b = images.shape[0]
        if stats.shape != (b, *self.source.shape) or momentum.shape != (b,) or copies.shape[0] % b:
            raise ValueError(f"stats should be [{b}, 2, {self.source.shape[1]}], momentum [{b}] and copies "
                             f"[{b} * n, 3, H, W], got {list(stats.shape)}, {list(momentum.shape)}, {list(copies.shape)}")
        try:
            for norm in self.norms:
                norm.copies = copies.shape[0] // b
            self.model(copies)
            pooled = torch.stack([torch.cat([n.pooled[0] for n in self.norms], 1),
                                  torch.cat([n.pooled[1] for n in self.norms], 1)], 1)
            new = torch.lerp(stats.float(), pooled, momentum.float()[:, None, None])
            for norm, mean, var in zip(self.norms, new[:, 0].split(self.sizes, 1), new[:, 1].split(self.sizes, 1)):
                norm.copies, norm.given = None, (mean, var)
            logits = run_network(self.model, images, scratch)
        finally:
            for norm in self.norms:
                norm.copies = norm.given = norm.pooled = None
        return logits, new


@dataclass
class DUAState:
    """One stream's BN running statistics [2, N] (means, variances) and the frames it has seen."""

    stats: torch.Tensor
    frames: int
    source: torch.Tensor  # shared by every stream, never written

    @classmethod
    def initial(cls, source: torch.Tensor) -> "DUAState":
        return cls(source.clone(), 0, source)

    def reset(self) -> None:
        self.stats, self.frames = self.source.clone(), 0

    def state_dict(self) -> dict:
        return {"stats": self.stats.clone(), "frames": self.frames}

    def load_state_dict(self, d: dict) -> None:
        stats, frames = d.get("stats"), d.get("frames")
        if not isinstance(stats, torch.Tensor) or stats.shape != self.source.shape or not torch.isfinite(stats).all():
            got = list(stats.shape) if isinstance(stats, torch.Tensor) else type(stats).__name__
            raise ValueError(f"dua stats must be a finite tensor of shape {list(self.source.shape)}, got {got}")
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 0:
            raise ValueError(f"dua frames must be a non-negative int, got {frames!r}")
        self.stats, self.frames = stats.to(self.source).clone(), frames


@dataclass(frozen=True)
class DUAConfig:
    copies: int = 16  # augmented copies of each frame (64 in the official code)

    def __post_init__(self):
        if not 2 <= self.copies <= 64:
            raise ValueError(f"dua copies must be in [2, 64], got {self.copies}")


class DUA(Component):
    """`dua`: a stream's part is its DUAState ("dua"); in the batch, "dua_stats" [B, 2, N], "dua_momentum"
    [B] and "dua_theta" [B, n, 2, 3], the frame's crops."""

    name, stage, Config = "dua", NETWORK, DUAConfig
    provides = FEATURES

    def __init__(self, config, ckpt, model, device):
        super().__init__(config, ckpt, model, device)
        self.module = DUANet(model).to(device)

    def new_state(self):
        return {"dua": DUAState.initial(self.module.source)}

    def stack(self, states):
        k = [s.parts["dua"].frames + 1 for s in states]
        return {"dua_stats": torch.stack([s.parts["dua"].stats for s in states]),
                "dua_momentum": torch.tensor([dua_momentum(i) for i in k], device=self.device),
                "dua_theta": torch.stack([crop_thetas(self.config.copies, i) for i in k]).to(self.device)}

    def forward(self, images, batch, out, scratch):
        copies = augmented_copies(images, batch["dua_theta"])
        logits, out["dua_stats"] = self.module(images, copies, batch["dua_stats"], batch["dua_momentum"], scratch)
        return logits

    def scatter(self, old, new, out):
        for s, prev, stats in zip(new, old, out["dua_stats"]):
            dua = prev.parts["dua"]
            s.parts["dua"] = replace(dua, stats=stats, frames=dua.frames + 1)

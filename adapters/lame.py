"""LAME (Boudiaf et al., CVPR 2022, "Parameter-free Online Test-time Adaptation"; code fiveai/LAME):
the model stays frozen and only its output is adjusted, per frame, with nothing kept between frames.

The nodes are the pixels of the classifier's grid (stride 8 for LRASPP), with the classifier's input
features f (models.registry.classifier_features), L2-normalised, and the softmax p of its logits there:

    W        sparse kNN affinity: W_nm = 1 for the k features nearest to f_n (n itself excluded)
    Y_0      softmax(log(p + 1e-10))
    Y_t+1    softmax(log(p + 1e-10) + lam W Y_t), at most `steps` times, stopping after the step whose
             energy E = sum(-log(p) Y - lam (lam W Y_t) Y + Y log Y) changed by <= 1e-8 |E| (from the third
             step on), as the official laplacian_optimization does

and log Y_T is returned (scores whose softmax is Y_T). Unlike the official loop, which reads E back to the
host to break, every step runs and a stream that has stopped keeps its Y (the same result, and no host
read inside the adapted function); k = 5, lam = 1 and 100 steps are the official defaults. Neighbours come
from one matrix product of the normalised features (for unit vectors the nearest are the most similar).
"""
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from driftseg.adapters.component import FEATURES, OUTPUT, Component
from driftseg.models.registry import check_classifier_features


def knn_indices(features: torch.Tensor, k: int) -> torch.Tensor:
    """[B, N, k]: for each of the N nodes of each sample (features [B, N, F], L2-normalised), the k others
    nearest to it."""
    similarity = torch.bmm(features, features.transpose(1, 2))
    n = features.shape[1]
    self_loops = torch.eye(n, dtype=torch.bool, device=features.device)
    return similarity.masked_fill(self_loops, float("-inf")).topk(min(k, n - 1), dim=-1).indices


def lame(features: torch.Tensor, logits: torch.Tensor, k: int = 5, lam: float = 1.0, steps: int = 100) -> torch.Tensor:
    """LAME's Y (the module docstring) for features [B, F, h, w] and logits [B, C, h, w] on one grid:
    [B, C, h, w] probabilities."""
    b, c, h, w = logits.shape
    f = F.normalize(features.flatten(2).transpose(1, 2), dim=-1)  # [B, N, F]
    n = f.shape[1]
    if n < 2:
        raise ValueError(f"LAME needs at least 2 pixels on the classifier's grid, got {h}x{w}")
    neighbours = (knn_indices(f, k) + n * torch.arange(b, device=f.device)[:, None, None]).flatten()
    unary = -(logits.flatten(2).transpose(1, 2).softmax(-1) + 1e-10).log()  # [B, N, C]
    y = (-unary).softmax(-1)
    energy = torch.full((b,), float("inf"), device=f.device)
    done = torch.zeros(b, dtype=torch.bool, device=f.device)
    for step in range(steps):
        pairwise = lam * y.reshape(b * n, c)[neighbours].view(b, n, -1, c).sum(2)
        new = (pairwise - unary).softmax(-1)
        e = (unary * new - lam * pairwise * new + new * new.clamp_min(1e-20).log()).sum((1, 2))
        y = torch.where(done[:, None, None], y, new)
        converged = (e - energy).abs() <= 1e-8 * energy.abs() if step > 1 else torch.zeros_like(done)
        energy = torch.where(done, energy, e)
        done = done | converged
    return y.transpose(1, 2).reshape(b, c, h, w)


@dataclass(frozen=True)
class LAMEConfig:
    k: int = 5  # neighbours per pixel
    lam: float = 1.0  # weight of the neighbours' agreement
    steps: int = 100  # at most

    def __post_init__(self):
        if self.k < 1 or self.steps < 1 or not self.lam >= 0:
            raise ValueError(f"lame needs k >= 1, steps >= 1 and lam >= 0, got k={self.k}, steps={self.steps}, "
                             f"lam={self.lam}")


class LAME(Component):
    """`lame`: no state; an output component on the network's features and logits (with `source`, the
    frozen model: LAME itself)."""

    name, stage, Config = "lame", OUTPUT, LAMEConfig
    needs = FEATURES
    # measured: the exported graph's labels differed from torch's beyond the engine test's 1e-3 (the kNN
    # graph's topk over near-equal similarities and the energy stop decide differently there)
    no_export_reason = "its kNN graph and early stop do not export to the same labels"

    def __init__(self, config, ckpt, model, device):
        super().__init__(config, ckpt, model, device)
        check_classifier_features(ckpt.arch, "lame")

    def forward(self, scores, batch, out, scratch):
        cfg = self.config
        y = lame(scratch["features"], scratch["feature_logits"], cfg.k, cfg.lam, cfg.steps)
        return y.clamp_min(torch.finfo(y.dtype).tiny).log()

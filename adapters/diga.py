"""DIGA (Wang et al., CVPR 2023, "Dynamically Instance-Guided Adaptation: A Backward-free Approach for
Test-Time Domain Adaptive Semantic Segmentation"; code Waybaba/DIGA), as two components; `diga` in a
method spec is `mixbn(lam=0.8)+proto` (adapters/registry.py).

`mixbn(lam)`, its distribution adaptation: every BN layer normalises a frame with

    mean = lam mu_s + (1 - lam) mean(frame)        var = lam var_s + (1 - lam) var(frame)

(the frame's biased variance), nothing kept between frames. A linear mix of the variances, as the
released SIFABatchNorm2d does: not the variance of the mixture of the two domains that
`ema(m=1,alpha=lam)` uses, which adds lam (1 - lam) (mu_s - mean(frame))^2.

`proto(conf,rho,tau,hist,fuse)`, its semantic adaptation: an output component on the classifier's input
features f and its logits on their grid (stride 8 for LRASPP: the low-level features and the upsampled
high-level branch concatenated, models.registry.classifier_features):

    pseudo-labels        argmax of softmax(logits) where its maximum >= conf
    instance prototypes  q_c = mean of f over the pixels pseudo-labelled c (c "present" if there are any)
    historical ones      h_c <- q_c the first time c is present, then (1 - rho) h_c + rho q_c (per stream)
    posteriors           P_inst, P_hist = softmax over the present classes of -||f - q_c|| / tau
    prediction           P = fuse (hist P_hist + (1 - hist) P_inst) + (1 - fuse) softmax(logits)

returned as log P, the scores whose softmax is P (for any output component after it); a prototype set with
no class present (no pixel confident enough yet) gives the network's softmax in place of its posterior
(the released code divides 0 by 0 there). The historical prototypes are updated before the posteriors,
as in the released code.

Label-free: the released code starts the historical prototypes from the first frame's pseudo-labelled
prototypes but updates them from the ground-truth labels afterwards (`_update_classifier_proto(feature,
y, ...)` in src/models/ttda_module.py); here every update uses the pseudo-labels, as that first one does
(the benchmark reads no label of a stream). The distances come from one matrix product,
||f||^2 - 2 f.q + ||q||^2, and the posteriors from a log-softmax with absent classes masked to -inf: the
released exp(-d) / sum(exp(-d)) is 0 / 0 in float32 once every distance exceeds ~104.
"""
import copy
from dataclasses import dataclass

import torch
from torch import nn

from driftseg.adapters.component import FEATURES, NETWORK, OUTPUT, Component, cleared_on_restart, run_network
from driftseg.models.batchnorm import adaptable_norms, after_norm, instance_moments, normalize_per_sample
from driftseg.models.registry import check_classifier_features, feature_channels, wrap_modules


class MixedBatchNorm2d(nn.Module):
    """A BatchNorm2d that normalises each sample with lam * the source statistics + (1 - lam) * its own."""

    def __init__(self, bn: nn.BatchNorm2d, lam: float):
        super().__init__()
        self.eps, self.lam = bn.eps, lam
        self.register_buffer("weight", bn.weight.detach().clone())
        self.register_buffer("bias", bn.bias.detach().clone())
        self.register_buffer("source_mean", bn.running_mean.detach().clone().float())
        self.register_buffer("source_var", bn.running_var.detach().clone().float())
        self.after = after_norm(bn)  # a known subclass's activation (models/batchnorm.py)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frame_mean, frame_sq = instance_moments(x)
        frame_var = (frame_sq - frame_mean.square()).clamp_min(0)
        mean = torch.lerp(frame_mean, self.source_mean, self.lam)
        var = torch.lerp(frame_var, self.source_var, self.lam)
        out = normalize_per_sample(x, mean, var, self.weight, self.bias, self.eps)
        return self.after(out) if self.after is not None else out


def mixed_bn_copy(model: nn.Module, lam: float) -> nn.Module:
    """A copy of `model` (eval mode) whose BatchNorm2d layers are MixedBatchNorm2d."""
    names = adaptable_norms(model)  # exactly BatchNorm2d, or a subclass handled on purpose
    if not names:
        raise ValueError("mixbn needs a model with BatchNorm2d layers")
    mixed = copy.deepcopy(model).eval()
    wrap_modules(mixed, names, lambda bn: MixedBatchNorm2d(bn, lam))
    return mixed.requires_grad_(False)


@dataclass(frozen=True)
class MixBNConfig:
    lam: float = 0.8  # weight of the source statistics

    def __post_init__(self):
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"mixbn lam must be in [0, 1], got {self.lam}")


class MixBN(Component):
    """`mixbn`: BN statistics lam * source + (1 - lam) * the frame's own, means and variances alike; no state."""

    name, stage, Config = "mixbn", NETWORK, MixBNConfig
    provides = FEATURES

    def __init__(self, config, ckpt, model, device):
        super().__init__(config, ckpt, model, device)
        self.module = mixed_bn_copy(model, config.lam).to(device)

    def forward(self, images, batch, out, scratch):
        return run_network(self.module, images, scratch)


# ------------------------------------------------------------------------------------ semantic module


def class_prototypes(features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class, the mean feature over its pixels, and whether it has any: features [B, F, N], mask
    [B, C, N] (1 where pixel n belongs to class c) -> (prototypes [B, C, F], present [B, C] bool)."""
    counts = mask.sum(2)
    sums = torch.bmm(mask, features.transpose(1, 2))
    return sums / counts.clamp_min(1)[..., None], counts > 0


def prototype_log_posterior(features: torch.Tensor, prototypes: torch.Tensor, present: torch.Tensor,
                            tau: float) -> torch.Tensor:
    """[B, C, N]: log softmax over the present classes of -||f_n - q_c|| / tau (-inf for absent classes);
    features [B, F, N], prototypes [B, C, F], present [B, C]. NaN for a sample with no class present."""
    squared = (features.square().sum(1)[:, None] - 2 * torch.bmm(prototypes, features)
               + prototypes.square().sum(2)[..., None])
    distance = squared.clamp_min(0).sqrt()
    return (-distance / tau).masked_fill(~present[..., None], float("-inf")).log_softmax(1)


def diga_probabilities(features: torch.Tensor, logits: torch.Tensor, hist: torch.Tensor, hist_present: torch.Tensor,
                       conf: float, rho: float, tau: float, hist_weight: float, fuse: float,
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DIGA's semantic module on a batch of frames of different streams (the module docstring):
    features [B, F, h, w] and logits [B, C, h, w] on one grid, each stream's historical prototypes
    [B, C, F] and which classes they hold [B, C] -> (P [B, C, h, w], new prototypes, new present)."""
    b, c, h, w = logits.shape
    f = features.flatten(2)
    p = logits.flatten(2).softmax(1)
    confidence, label = p.max(1)
    classes = torch.arange(c, device=logits.device)[None, :, None]
    mask = ((label[:, None] == classes) & (confidence[:, None] >= conf)).to(f.dtype)
    instance, present = class_prototypes(f, mask)
    first = present & ~hist_present
    hist = torch.where(first[..., None], instance,
                       torch.where(present[..., None], torch.lerp(hist, instance, rho), hist))
    hist_present = hist_present | present

    def posterior(protos: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
        probs = prototype_log_posterior(f, protos, seen, tau).exp()
        return torch.where(seen.any(1)[:, None, None], probs, p)

    proto = hist_weight * posterior(hist, hist_present) + (1 - hist_weight) * posterior(instance, present)
    return (fuse * proto + (1 - fuse) * p).view(b, c, h, w), hist, hist_present


@dataclass
class ProtoState:
    """One stream's historical class prototypes [C, F] and which classes they hold [C]."""

    prototypes: torch.Tensor
    present: torch.Tensor

    @classmethod
    def initial(cls, num_classes: int, channels: int, device) -> "ProtoState":
        return cls(torch.zeros(num_classes, channels, device=device),
                   torch.zeros(num_classes, dtype=torch.bool, device=device))

    def reset(self) -> None:
        self.prototypes = torch.zeros_like(self.prototypes)
        self.present = torch.zeros_like(self.present)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"prototypes": self.prototypes.clone(), "present": self.present.clone()}

    def load_state_dict(self, d: dict) -> None:
        protos, present = d.get("prototypes"), d.get("present")
        c, f = self.prototypes.shape
        if not isinstance(protos, torch.Tensor) or protos.shape != (c, f) or not torch.isfinite(protos).all():
            got = list(protos.shape) if isinstance(protos, torch.Tensor) else type(protos).__name__
            raise ValueError(f"proto prototypes must be a finite tensor of shape {[c, f]}, got {got}")
        if not isinstance(present, torch.Tensor) or present.shape != (c,) or present.dtype != torch.bool:
            got = f"{list(present.shape)} {present.dtype}" if isinstance(present, torch.Tensor) else type(present).__name__
            raise ValueError(f"proto present must be a bool tensor of shape [{c}], got {got}")
        self.prototypes, self.present = protos.to(self.prototypes).clone(), present.to(self.present.device).clone()


@dataclass(frozen=True)
class ProtoConfig:
    conf: float = 0.9  # softmax confidence of a pseudo-label
    rho: float = 0.1  # weight of the frame's prototypes in the historical ones
    tau: float = 1.0  # temperature of the prototype posteriors
    hist: float = 0.8  # weight of the historical posterior against the frame's
    fuse: float = 0.8  # weight of the prototype posterior against the network's softmax

    def __post_init__(self):
        for key in ("conf", "rho", "hist", "fuse"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"proto {key} must be in [0, 1], got {getattr(self, key)}")
        if not self.tau > 0:
            raise ValueError(f"proto tau must be > 0, got {self.tau}")


class Proto(Component):
    """`proto`: a stream's part is its ProtoState ("proto"); in the batch, "proto_hist" [B, C, F] and
    "proto_present" [B, C]. A stream that restarts (a domain switch) starts its prototypes afresh."""

    name, stage, Config = "proto", OUTPUT, ProtoConfig
    needs = FEATURES

    def __init__(self, config, ckpt, model, device):
        super().__init__(config, ckpt, model, device)
        check_classifier_features(ckpt.arch, "proto")
        self.num_classes, self.channels = ckpt.num_classes, feature_channels(model)

    def new_state(self):
        return {"proto": ProtoState.initial(self.num_classes, self.channels, self.device)}

    def stack(self, states):
        return {"proto_hist": torch.stack([s.parts["proto"].prototypes for s in states]),
                "proto_present": torch.stack([s.parts["proto"].present for s in states])}

    def forward(self, scores, batch, out, scratch):
        cfg = self.config
        probs, protos, present = diga_probabilities(
            scratch["features"], scratch["feature_logits"], batch["proto_hist"], batch["proto_present"],
            cfg.conf, cfg.rho, cfg.tau, cfg.hist, cfg.fuse)
        out["proto_hist"], out["proto_present"] = cleared_on_restart(out, protos, present)
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()

    def scatter(self, old, new, out):
        for s, protos, present in zip(new, out["proto_hist"], out["proto_present"]):
            s.parts["proto"] = ProtoState(protos, present)

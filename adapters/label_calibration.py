"""Online label calibration for segmentation under domain shift.

Bohdal, Li & Hospedales (2023), "Label calibration for semantic segmentation
under domain shift". Each stream keeps running, confidence-weighted sums of the
soft labels predicted for every class; their means are class prototypes in
probability space, and every pixel takes the class of the nearest prototype.
Under shift the softmax output of a class drifts away from its one-hot vertex;
the prototypes follow that drift, so the argmax boundary is replaced by one
fitted to the stream's own predictions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from driftseg.adapters.component import OUTPUT, Component, cleared_on_restart
from driftseg.models.registry import check_classifier_features


def _prototypes(proto_sum: Tensor, weight: Tensor) -> Tensor:
    """Prototypes [..., C, C] from sums [..., C, C] and weights [..., C].

    A class never predicted has no statistics, so it keeps its one-hot vertex.
    """
    eye = torch.eye(weight.shape[-1], dtype=proto_sum.dtype, device=proto_sum.device)
    seen = (weight > 0).unsqueeze(-1)
    means = proto_sum / weight.clamp_min(torch.finfo(proto_sum.dtype).tiny).unsqueeze(-1)
    return torch.where(seen, means, eye.expand_as(proto_sum))


@dataclass
class LabelCalibrationState:
    """Running calibration statistics of one stream."""

    proto_sum: Tensor  # [C, C]: row c = sum over pixels of p * m_c
    weight: Tensor  # [C]: sum over pixels of m_c

    @classmethod
    def initial(
        cls, num_classes: int, device: torch.device | str | None = None
    ) -> LabelCalibrationState:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        return cls(
            proto_sum=torch.zeros(num_classes, num_classes, device=device),
            weight=torch.zeros(num_classes, device=device),
        )

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    def prototypes(self) -> Tensor:
        """[C, C] prototypes; one-hot rows for classes with zero weight."""
        return _prototypes(self.proto_sum, self.weight)

    def reset(self) -> None:
        self.proto_sum.zero_()
        self.weight.zero_()

    def state_dict(self) -> dict[str, Tensor]:
        # Clones, so a later in-place reset() cannot alter a saved snapshot.
        return {"proto_sum": self.proto_sum.clone(), "weight": self.weight.clone()}

    def load_state_dict(self, d: dict[str, Tensor]) -> None:
        c = self.num_classes
        expected = {"proto_sum": (c, c), "weight": (c,)}
        for key, shape in expected.items():
            if key not in d:
                raise ValueError(f"state dict is missing {key!r} (expected shape {list(shape)})")
            value = d[key]
            if not isinstance(value, Tensor) or tuple(value.shape) != shape:
                got = list(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(f"{key} must be a tensor of shape {list(shape)}, got {got}")
        self.proto_sum = d["proto_sum"].to(self.proto_sum).clone()
        self.weight = d["weight"].to(self.weight).clone()


def _check_inputs(probs: Tensor, proto_sum: Tensor, weight: Tensor, forget: float) -> None:
    if probs.dim() != 4:
        raise ValueError(f"probs must have shape [B, C, H, W], got {list(probs.shape)}")
    b, c = probs.shape[:2]
    if tuple(proto_sum.shape) != (b, c, c):
        raise ValueError(
            f"proto_sum must have shape [B, C, C] = {[b, c, c]}, got {list(proto_sum.shape)}"
        )
    if tuple(weight.shape) != (b, c):
        raise ValueError(f"weight must have shape [B, C] = {[b, c]}, got {list(weight.shape)}")
    if not 0.0 < forget <= 1.0:
        raise ValueError(f"forget must be in (0, 1], got {forget}")


def calibrated_scores(
    probs: Tensor, proto_sum: Tensor, weight: Tensor, forget: float = 1.0
) -> tuple[Tensor, Tensor, Tensor]:
    """Fold a frame into each stream's statistics and score every class at every pixel by its
    prototype's closeness (negative squared distance, up to a per-pixel constant).

    probs: [B, C, H, W] softmax output, sample b belonging to stream b;
    proto_sum: [B, C, C]; weight: [B, C]. forget in (0, 1] scales the old sums
    before this frame is added (1 keeps plain running sums).
    Returns (scores [B, C, H, W], new proto_sum, new weight), float32 on probs'
    device; the inputs are not modified. The scores are linear in probs, so
    resizing them bilinearly equals scoring resized probabilities.
    """
    _check_inputs(probs, proto_sum, weight, forget)
    b, c, h, w = probs.shape
    # float32 sums: half precision loses small per-frame increments.
    p = probs.to(torch.float32).reshape(b, c, h * w)
    proto_sum = proto_sum.to(device=p.device, dtype=torch.float32)
    weight = weight.to(device=p.device, dtype=torch.float32)

    # mask[b, c, n] = m_c(n) = 1[argmax = c] * p_c: p where it equals the pixel's maximum (amax and a
    # comparison are 10x faster on the CPU than max with indices and a scatter; an exact tie, which
    # float softmax outputs all but never give, would count the pixel for both classes)
    mask = p * (p == p.amax(dim=1, keepdim=True))
    new_sum = forget * proto_sum + torch.bmm(mask, p.transpose(1, 2))
    new_weight = forget * weight + mask.sum(dim=2)

    mu = _prototypes(new_sum, new_weight)  # [B, C, C]
    # -||p - mu_c||^2 up to ||p||^2, which is the same for every c of a pixel; one fused
    # baddbmm (on the CPU 10x faster than the bmm, scale and subtract written out)
    scores = torch.baddbmm((mu * mu).sum(dim=2, keepdim=True).neg_(), mu, p, alpha=2.0)  # [B, C, N]
    return scores.reshape(b, c, h, w), new_sum, new_weight


def calibrate(
    probs: Tensor, proto_sum: Tensor, weight: Tensor, forget: float = 1.0
) -> tuple[Tensor, Tensor, Tensor]:
    """`calibrated_scores`, with each pixel labelled by its nearest prototype: (labels [B, H, W]
    int64, new proto_sum, new weight)."""
    scores, new_sum, new_weight = calibrated_scores(probs, proto_sum, weight, forget)
    return scores.argmax(dim=1), new_sum, new_weight


def class_softmax(scores: Tensor) -> Tensor:
    """The softmax over the classes (dim 1) of `scores` [B, C, H, W]; exported as the max, exp, sum and
    division it is: onnxruntime's Softmax over an axis that is not the last transposes, 3x slower."""
    if torch.onnx.is_in_onnx_export():
        e = (scores - scores.amax(1, keepdim=True)).exp()
        return e / e.sum(1, keepdim=True)
    return scores.softmax(1)


@dataclass(frozen=True)
class LabelCalibrationConfig:
    forget: float = 1.0  # scale of the old sums at each frame; 1: never forget
    # calibrate the scores averaged over stride x stride pixels; 0: the classifier's logits on its own grid,
    # before the network upsamples them (LRASPP: 1/8 of the input), so compiled and exported graphs leave
    # that upsampling out
    stride: int = 2

    def __post_init__(self):
        if not 0.0 < self.forget <= 1.0:
            raise ValueError(f"lc forget must be in (0, 1], got {self.forget}")
        if self.stride < 0:
            raise ValueError(f"lc stride must be >= 1, or 0 (the classifier's own grid), got {self.stride}")


class LabelCalibration(Component):
    """`lc`: a stream's part is its LabelCalibrationState ("lc"); in the batch, "lc_sum" [B, C, C] and
    "lc_weight" [B, C]. A stream that restarts (a domain switch) gets new prototypes."""

    name, stage, Config = "lc", OUTPUT, LabelCalibrationConfig

    @classmethod
    def needs_of(cls, config):
        return ("feature_logits",) if config.stride == 0 else ()

    def __init__(self, config, ckpt, model, device):
        super().__init__(config, ckpt, model, device)
        if config.stride == 0:
            check_classifier_features(ckpt.arch, "lc(stride=0)")
        self.num_classes, self.class_names = ckpt.num_classes, list(ckpt.class_names)

    def new_state(self):
        return {"lc": LabelCalibrationState.initial(self.num_classes, self.device)}

    def stack(self, states):
        return {"lc_sum": torch.stack([s.parts["lc"].proto_sum for s in states]),
                "lc_weight": torch.stack([s.parts["lc"].weight for s in states])}

    def forward(self, scores, batch, out, scratch):
        # on the network's output averaged over stride x stride pixels: the network upsampled it from a
        # coarser grid still (8x for LRASPP), so this is the same calibration at 1 / stride^2 of the
        # cost; the pipeline resizes the scores to the frame's size as it does any others
        stride = self.config.stride
        if stride == 0:  # the network's scores are then unused: a compiled or exported graph leaves them out
            scores = scratch["feature_logits"]
        elif stride > 1:
            h, w = scores.shape[-2:]
            # bilinear at an exact 1 / stride takes each block's centre (for stride 2 the mean of the
            # block); on the CPU 4x faster than avg_pool2d
            scores = F.interpolate(scores, size=(-(-h // stride), -(-w // stride)), mode="bilinear", align_corners=False)
        scores, proto_sum, weight = calibrated_scores(
            class_softmax(scores), batch["lc_sum"], batch["lc_weight"], self.config.forget)
        out["lc_sum"], out["lc_weight"] = cleared_on_restart(out, proto_sum, weight)
        return scores

    def scatter(self, old, new, out):
        for s, p, w in zip(new, out["lc_sum"], out["lc_weight"]):
            s.parts["lc"] = LabelCalibrationState(p, w)

    def describe(self, state):
        lc = state.parts["lc"]
        return {"label_calibration": {"classes": self.class_names, "weight": lc.weight.tolist(),
                                      "prototypes": lc.prototypes().tolist()}}

"""Pseudo-labels for self-training: class-balanced thresholds (CBST, Zou et al. 2018; running, as
IAST's, Mei et al. 2020) and prototype rectification (ProDA, Zhang et al. 2021).

A teacher's softmax p [N, C, H, W] and its deepest backbone feature f [N, D, h, w] label a pixel:
1. rectification (with prototypes): p'_c = p_c * softmax_c(cos(f, eta_c) / tau), renormalised: the
   class whose prototype the pixel's feature is near gains, one it is far from loses. ProDA uses
   Euclidean distances of raw features; cosine similarity here, because its scale does not change as
   training moves the features (tau is then in units of cosine);
2. the pixel takes the argmax of p' where its confidence passes that class's threshold theta_c,
   else it is ignored. theta_c is the confidence above which the --top-fraction most confident of the
   class's pixels lie, capped: rare classes keep pseudo-labels at their own confidence level.
Thresholds and prototypes (the mean normalised feature of each class's labelled pixels) start from
one pass of the teachers over every target frame (`fit`), and with `update=True` follow each batch as
running means; a class absent from a batch keeps its values (under torchrun each process follows its
own batches; a resumed job gives every process the first one's). No library carries these few lines
(mmseg and the papers' code hold them inside their training loops), so they are written here.
"""
import torch
from torch.nn import functional as F

from driftseg.adapters.diga import class_prototypes


def class_thresholds(confidence: torch.Tensor, labels: torch.Tensor, num_classes: int, top_fraction: float,
                     cap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """[C]: per class, the confidence above which its `top_fraction` most confident pixels lie, at
    most `cap`; and [C] bool: the classes that have pixels (the others get `cap`)."""
    thresholds, present = torch.full((num_classes,), cap), torch.zeros(num_classes, dtype=torch.bool)
    for c in range(num_classes):
        values = confidence[labels == c].sort().values
        if len(values):
            thresholds[c] = min(cap, float(values[int((1 - top_fraction) * (len(values) - 1))]))
            present[c] = True
    return thresholds, present


def class_means(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[C, D]: the mean normalised feature [N, D, h, w] of each class's pixels in `labels` [N, H, W]
    (taken at the features' size, nearest; an ignored pixel is in no class), and [C] bool: the classes
    that have pixels. DIGA's class prototypes over all the frames' pixels as one sample."""
    n, d, h, w = features.shape
    f = F.normalize(features, dim=1).transpose(0, 1).reshape(1, d, -1)
    small = F.interpolate(labels[:, None].float(), size=(h, w), mode="nearest").long().reshape(-1)
    mask = (small == torch.arange(num_classes, device=small.device)[:, None]).to(f.dtype)
    means, present = class_prototypes(f, mask[None])
    return means[0], present[0]


class PseudoLabeller:
    """Running class thresholds and (with `tau`) class prototypes; calling it labels a batch."""

    def __init__(self, num_classes: int, ignore_index: int, top_fraction: float, cap: float,
                 tau: float | None = None, momentum: float = 0.9):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.top_fraction, self.cap, self.tau, self.momentum = top_fraction, cap, tau, momentum
        self.thresholds = torch.full((num_classes,), cap)
        self.prototypes: torch.Tensor | None = None  # [C, D], unit rows; zero for a class never labelled

    def rectify(self, probs: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """p' [N, C, H, W] (step 1 above); `probs` as they are without prototypes."""
        if self.tau is None or self.prototypes is None:
            return probs
        similarity = torch.einsum("ndhw,cd->nchw", F.normalize(features, dim=1), self.prototypes.to(features))
        weights = F.interpolate((similarity / self.tau).softmax(1), size=probs.shape[-2:], mode="bilinear",
                                align_corners=False)
        rectified = probs * weights
        return rectified / rectified.sum(1, keepdim=True).clamp_min(1e-12)

    def fit(self, probs: torch.Tensor, features: torch.Tensor) -> None:
        """Thresholds and prototypes from scratch, from the teachers' pass over every target frame:
        the first prototypes from the pixels the unrectified thresholds keep, then both again from
        the rectified confidences those prototypes give."""
        self.prototypes = None
        self._set(probs, features, momentum=0.0)
        if self.tau is not None:
            self._set(probs, features, momentum=0.0)

    def __call__(self, probs: torch.Tensor, features: torch.Tensor, update: bool = False) -> torch.Tensor:
        """int64 [N, H, W] pseudo-labels (ignore_index where none); with `update`, the thresholds and
        prototypes first move toward this batch's (momentum)."""
        if update:
            self._set(probs, features, self.momentum)
        return self._label(*self.rectify(probs, features).max(1))

    def _label(self, confidence: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        thresholds = self.thresholds.to(confidence.device)
        return torch.where(confidence >= thresholds[labels], labels, self.ignore_index)

    def _set(self, probs: torch.Tensor, features: torch.Tensor, momentum: float) -> None:
        confidence, labels = self.rectify(probs, features).max(1)
        batch, present = class_thresholds(confidence.cpu(), labels.cpu(), self.num_classes, self.top_fraction,
                                          self.cap)
        self.thresholds = torch.where(present, momentum * self.thresholds + (1 - momentum) * batch, self.thresholds)
        if self.tau is None:
            return
        means, present = class_means(features.float(), self._label(confidence, labels), self.num_classes)
        means = means.cpu()
        old = self.prototypes if self.prototypes is not None else torch.zeros_like(means)
        moved = F.normalize(momentum * old + (1 - momentum) * means, dim=1)
        self.prototypes = torch.where(present[:, None], moved, old)

    def state_dict(self) -> dict:
        return {"thresholds": self.thresholds, "prototypes": self.prototypes}

    def load_state_dict(self, state: dict) -> None:
        self.thresholds, self.prototypes = state["thresholds"], state["prototypes"]

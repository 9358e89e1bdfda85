"""CoTTA (Wang et al., CVPR 2022, "Continual Test-Time Domain Adaptation"; code qinenergy/cotta), the
backprop ceiling for continual streams: a student trained on a mean teacher's pseudo-labels, the teacher
an exponential moving average of the student, and a stochastic restore of the student toward the source
weights that keeps a long stream from drifting away.

Per frame, as the official segmentation code does it (mmseg/apis/test.py, single_gpu_cotta):

    teacher  the teacher's softmax averaged over 14 views (scales 0.5, 0.75, ..., 2.0, each also flipped
             left-right; every view's logits resized back and unflipped), and its softmax on the frame itself
    pseudo   per pixel, the teacher's softmax on the frame where the source model (the anchor) is confident
             (its maximum softmax > conf), the augmentation average elsewhere: the prediction returned
             (as log-probabilities), made before this frame's update
    student  one Adam step (lr, betas 0.9, 0.999) on the cross-entropy of its logits on the frame against
             the pseudo-labels' argmax; every parameter trains
    teacher  <- ema * teacher + (1 - ema) * student, parameters
    restore  every student parameter element back to its source value with probability `restore`

Defaults: ema 0.999, restore 0.01, conf 0.69 (the segmentation code's), lr 3e-4: the segmentation code ran
Adam at 6e-5 / 8 = 7.5e-6 for batch 1 and later papers kept that; at that rate a stream of a few hundred
frames hardly moves the weights, which under-rates CoTTA as a ceiling. BN layers normalise with each
forward's own statistics in student, teacher and anchor alike (the official classification code's
configure_model; the segmentation code's SegFormer has no BN). A stream owns its student, teacher, Adam
moments and the random generator of its restore masks (seeded 0 at every reset, so runs repeat); the
source weights, which are also the anchor, are shared.
"""
import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from driftseg.adapters.component import BackpropComponent
from driftseg.models.batchnorm import adaptable_norms

SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)  # the teacher's views, each also flipped


def configure(model: nn.Module) -> nn.Module:
    """A copy of `model` whose BatchNorm2d layers normalise with each forward's own statistics (no running
    statistics), every parameter requiring grad; the rest in eval mode (no dropout)."""
    model = copy.deepcopy(model).eval().requires_grad_(True)
    norms = [model.get_submodule(name) for name in adaptable_norms(model)]  # as tent's configure
    if not norms:
        raise ValueError("CoTTA here needs a model with BatchNorm2d layers (normalised with each frame's statistics)")
    for m in norms:
        m.train()
        m.track_running_stats = False
        m.running_mean = m.running_var = None
    return model


def augmentation_average(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W]: the mean of `model`'s softmax over SCALES x (as is, flipped), each view's logits
    resized back to the images' size and unflipped."""
    size = images.shape[-2:]
    total = 0
    for scale in SCALES:
        view = F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=False) if scale != 1 else images
        for flip in (False, True):
            logits = model(view.flip(-1) if flip else view)
            logits = logits.flip(-1) if flip else logits
            total = total + F.interpolate(logits, size=size, mode="bilinear", align_corners=False).softmax(1)
    return total / (2 * len(SCALES))


class CoTTAStream:
    """One stream's CoTTA state: student, teacher, Adam moments and its restore generator."""

    def __init__(self, source: nn.Module, lr: float, ema: float, restore: float, conf: float):
        self.source = source  # configured (`configure`), shared, never written: also the anchor
        self.lr, self.ema, self.restore, self.conf = lr, ema, restore, conf
        self.reset()

    def reset(self) -> None:
        self.student = copy.deepcopy(self.source)
        self.teacher = copy.deepcopy(self.source).requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.student.parameters(), lr=self.lr, betas=(0.9, 0.999))
        self.generator = torch.Generator().manual_seed(0)

    def state_dict(self) -> dict:
        return {"student": self.student.state_dict(), "teacher": self.teacher.state_dict(),
                "optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.student.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])

    def pseudo_labels(self, images: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] probabilities: the teacher's on the frame where the anchor is confident, its
        augmentation average elsewhere."""
        confident = self.source(images).softmax(1).amax(1, keepdim=True) > self.conf
        return torch.where(confident, self.teacher(images).softmax(1), augmentation_average(self.teacher, images))

    @torch.enable_grad()
    def forward_and_adapt(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            pseudo = self.pseudo_labels(images)
        loss = F.cross_entropy(self.student(images), pseudo.argmax(1))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            for t, s in zip(self.teacher.parameters(), self.student.parameters()):
                t.lerp_(s, 1 - self.ema)
            for s, p in zip(self.student.parameters(), self.source.parameters()):
                mask = (torch.rand(s.shape, generator=self.generator) < self.restore).to(s.device)
                s.copy_(torch.where(mask, p, s))
        return pseudo.clamp_min(torch.finfo(pseudo.dtype).tiny).log()


@dataclass(frozen=True)
class CoTTAConfig:
    lr: float = 3e-4  # Adam's, on every parameter of the student
    ema: float = 0.999  # the teacher's share of itself at each update
    restore: float = 0.01  # probability that a student weight returns to its source value, per frame
    conf: float = 0.69  # the anchor's confidence above which the teacher's single view is the pseudo-label

    def __post_init__(self):
        if not self.lr > 0:
            raise ValueError(f"cotta lr must be > 0, got {self.lr}")
        for key in ("ema", "restore", "conf"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"cotta {key} must be in [0, 1], got {getattr(self, key)}")


class CoTTA(BackpropComponent):
    """`cotta`: a stream's part is its CoTTAStream ("cotta"), whole models updated in place, passed to the
    forward as it is: one stream per batch."""

    name, Config = "cotta", CoTTAConfig

    def __init__(self, config, ckpt, model, device):
        super().__init__(config, ckpt, model, device)
        self.source = configure(model)

    def new_state(self):
        cfg = self.config
        return {"cotta": CoTTAStream(self.source, cfg.lr, cfg.ema, cfg.restore, cfg.conf)}

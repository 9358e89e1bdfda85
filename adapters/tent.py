"""TENT (Wang et al., ICLR 2021), the backprop peer: per frame, one Adam step on the BN affine
parameters minimising the prediction entropy, with BN normalising by the frame's own statistics.

Its state is the whole adapted model and optimiser, so a stream owns a copy of the network; the
prediction returned is the one made before the frame's update, as in the reference code.
"""
import copy
from dataclasses import dataclass

import torch
from torch import nn

from driftseg.adapters.component import BackpropComponent
from driftseg.models.batchnorm import adaptable_norms


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-pixel entropy of the softmax over dim 1."""
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


def configure(model: nn.Module) -> list[nn.Parameter]:
    """Train-mode BN with batch statistics only; only the BN affine parameters require grad. The
    rest stays in eval mode: the reference code's model.train() also turns Dropout on, which makes
    the predictions random on models that have it (deeplabv3)."""
    model.eval()
    model.requires_grad_(False)
    params = []
    for name in adaptable_norms(model):  # exactly BatchNorm2d, or a subclass handled on purpose
        m = model.get_submodule(name)
        m.train()
        m.track_running_stats = False
        m.running_mean = m.running_var = None
        if m.affine:
            m.requires_grad_(True)
            params += [m.weight, m.bias]
    if not params:
        raise ValueError("TENT needs a model with affine BatchNorm2d layers")
    return params


class TentStream:
    """One stream's TENT state: its own copy of the model and Adam moments."""

    def __init__(self, model: nn.Module, lr: float = 1e-3, steps: int = 1):
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.source, self.lr, self.steps = model, lr, steps
        self.reset()

    def reset(self) -> None:
        self.model = copy.deepcopy(self.source)
        params = configure(self.model)
        self.optimizer = torch.optim.Adam(params, lr=self.lr, betas=(0.9, 0.999))

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])

    @torch.enable_grad()
    def forward_and_adapt(self, images: torch.Tensor) -> torch.Tensor:
        for _ in range(self.steps):
            logits = self.model(images)
            loss = softmax_entropy(logits).mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        return logits.detach()


@dataclass(frozen=True)
class TentConfig:
    lr: float = 1e-3
    steps: int = 1  # Adam steps per frame

    def __post_init__(self):
        if not (self.lr > 0 and self.steps >= 1):
            raise ValueError(f"tent needs lr > 0 and steps >= 1, got lr={self.lr}, steps={self.steps}")


class Tent(BackpropComponent):
    """`tent`: a stream's part is its TentStream ("tent"), a whole model updated in place, passed to
    the forward as it is: one stream per batch."""

    name, Config = "tent", TentConfig

    def __init__(self, config, ckpt, model, device):
        super().__init__(config, ckpt, model, device)
        self.model = model

    def new_state(self):
        return {"tent": TentStream(self.model, self.config.lr, self.config.steps)}

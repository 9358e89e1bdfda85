"""What an adaptation method is to the pipeline: a component, and what a stream owns: a StreamState.

A method spec ("ema(m=0.1)+lc") names components; `Pipeline` composes them and knows none of them:

    frames -> input components (FDA) -> the network component (source, ema, auto, tent)
           -> output components (label calibration), on the network's scores

Each component is built once per pipeline (checkpoint, network, device) and holds only what every
stream shares; what a stream owns are its parts of a `StreamState`, one state object (reset(),
state_dict(), load_state_dict()) under each key the component names. For a batch of frames of
different streams a component

    stack(states)              -> its parts of the streams' states as batch tensors
    forward(x, batch, out, scratch)  -> x transformed, a pure tensor function: reads its batch tensors,
                                  writes its new state tensors to `out`, reads nothing back to the host
    scatter(old, new, out)     -> the new states' parts from `out` (the old ones untouched)

and shows what it holds of a stream in `describe` (GET /adaptation/state). A network component may
write `out["restart"]` [B] (bool): a stream that switched domains, whose output components' parts start
afresh (`cleared_on_restart`, in the forward, so that the decision never leaves the device).

`scratch` is a dict made for one call of the adapted function and dropped after it, never part of a
state: what an output component reads from the network besides its scores. The output components name
the keys they read in `needs`; the pipeline puts those keys in the scratch, and the network component,
which names what it can write in `provides`, fills every key there (`run_network`):

    "features"        [B, F, h, w]  the classifier's input (models.registry.classifier_features)
    "feature_logits"  [B, C, h, w]  the classifier's output on the same grid, before upsampling
"""
import copy
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from driftseg.models.checkpoint import Checkpoint
from driftseg.models.registry import classifier_features

INPUT, NETWORK, OUTPUT = "input", "network", "output"
STAGES = (INPUT, NETWORK, OUTPUT)
FEATURES = ("features", "feature_logits")  # what `run_network` writes to a scratch that asks


def run_network(model: nn.Module, images: torch.Tensor, scratch: dict[str, torch.Tensor]) -> torch.Tensor:
    """`model(images)`, the logits at the images' size; where the scratch holds keys (an output component
    needs the features), also the classifier's input features and logits on their grid, into it."""
    if not scratch:
        return model(images)
    logits, scratch["feature_logits"], scratch["features"] = classifier_features(model, images)
    return logits


def cleared_on_restart(out: dict[str, torch.Tensor], *parts: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """`parts` [B, ...], zero (the source state of label calibration's and DIGA's sums) for the streams that
    the network component restarted on this frame (out["restart"])."""
    restart = out.get("restart")
    if restart is None:
        return parts
    return tuple(p.masked_fill(restart.view(-1, *[1] * (p.ndim - 1)), 0) for p in parts)


@dataclass
class StreamState:
    """Everything one stream's adaptation owns: the components' parts by key, and its frame count."""

    parts: dict[str, Any] = field(default_factory=dict)
    frames: int = 0

    def reset(self) -> None:
        """Back to the source state, in place."""
        for part in self.parts.values():
            part.reset()
        self.frames = 0

    def state_dict(self) -> dict:
        return {"frames": self.frames, **{k: part.state_dict() for k, part in self.parts.items()}}

    def load_state_dict(self, d: dict) -> None:
        """Load a `state_dict` of a state with the same parts, or raise ValueError saying what does not
        fit; on error this state is left as it was."""
        if set(d) != {"frames", *self.parts}:
            raise ValueError(f"state should hold {sorted(['frames', *self.parts])}, got {sorted(d)}")
        frames = d["frames"]
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 0:
            raise ValueError(f"frames must be a non-negative int, got {frames!r}")
        # load into deep copies first, so that a bad part leaves the whole state as it was (torch loads
        # a part's model, TENT's, in place)
        trial = {k: copy.deepcopy(part) for k, part in self.parts.items()}
        for k, part in trial.items():
            part.load_state_dict(d[k])
        self.parts, self.frames = trial, frames


class Component:
    """One method of a spec. Subclasses set the class attributes and override what they use."""

    name: ClassVar[str]  # in a method spec
    stage: ClassVar[str]  # INPUT, NETWORK or OUTPUT
    Config: ClassVar[type]  # frozen dataclass of the spec's parameters, checked in __post_init__
    # adapts by backprop: float32 only, one stream per batch, no compiled or exported forward
    backprop: ClassVar[bool] = False
    # why it cannot run inside the ONNX export of the adapted function; empty where it can
    no_export_reason: ClassVar[str] = ""
    # an output component: the scratch keys it reads (FEATURES); a network component: those it fills
    needs: ClassVar[tuple[str, ...]] = ()
    provides: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def needs_of(cls, config) -> tuple[str, ...]:
        """The scratch keys this (output) component with `config` reads: `needs`, unless a parameter says other."""
        return cls.needs

    @classmethod
    def export_refusal_of(cls, config) -> str:
        """Why this component with `config` cannot run inside the ONNX export; empty where it can."""
        return cls.no_export_reason

    def __init__(self, config, ckpt: Checkpoint, model: nn.Module, device: torch.device):
        self.config, self.device = config, device
        # the network module a component runs, if any: the ONNX export registers its weights
        self.module: nn.Module | None = None

    def new_state(self) -> dict[str, Any]:
        """A stream's parts at the source, by key."""
        return {}

    def stack(self, states: list[StreamState]) -> dict[str, Any]:
        return {}

    def forward(self, x: torch.Tensor, batch: dict[str, Any], out: dict[str, torch.Tensor],
                scratch: dict[str, torch.Tensor]) -> torch.Tensor:
        return x

    def scatter(self, old: list[StreamState], new: list[StreamState], out: dict[str, torch.Tensor]) -> None:
        """Set the new states' parts (copies of the old ones' until then) from `out`."""

    def resets(self, state: StreamState) -> bool:
        """Whether the stream starts afresh from the source before its next frame (decided on the host,
        before the batch is stacked: a schedule such as rdumb's)."""
        return False

    def describe(self, state: StreamState) -> dict[str, Any]:
        """What GET /adaptation/state shows of the stream's parts (service.schemas.StreamStateSummary)."""
        return {}

    def shift(self, state: StreamState) -> tuple[float, float] | None:
        """The stream's shift score and mean alpha, for a network component that measures them."""
        return None


class BackpropComponent(Component):
    """A network component whose stream part (under its own name) is a whole model and optimiser that a
    backprop step updates in place (tent, cotta): passed to the forward as it is, one stream per batch;
    the part's `forward_and_adapt(images)` returns the frame's scores."""

    stage = NETWORK
    backprop, no_export_reason = True, "it adapts by backprop"

    def stack(self, states):
        if len(states) != 1:
            raise ValueError(f"{self.name} adapts one stream at a time: pass a batch of 1")
        return {self.name: states[0].parts[self.name]}

    def forward(self, images, batch, out, scratch):
        return batch[self.name].forward_and_adapt(images)

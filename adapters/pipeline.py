"""One frame's way through the adaptation methods, for a batch of frames of different streams:

    resize to the checkpoint's input size -> FDA(stream) -> adapted network(stream's BN state)
    -> logits [-> softmax -> label calibration(stream): prototype scores] -> scores resized back to
    the frame's size -> argmax

`Pipeline` holds only what every stream shares (the network, the method spec); everything a
stream owns is in its `StreamState`. `step` returns new states and never mutates the given ones,
so a caller that fails half way keeps the old states intact.
"""
import copy
from dataclasses import dataclass, replace

import torch
from torch.nn import functional as F
from torchvision.transforms.v2 import functional as TF

from adapters.auto import (
    HISTORY, AutoState, ShiftCalibration, frame_moments, layer_divergence, momentum_schedule,
)
from adapters.fda import FDAState, band_size, center_crop_band, low_freq_amplitude, transfer, update_recent
from adapters.ema_bn import AdaptedNet, NormState
from adapters.label_calibration import LabelCalibrationState, calibrated_scores
from adapters.spec import MethodSpec
from adapters.tent import TentStream
from models.checkpoint import Checkpoint
from models.registry import fold_batchnorm


@dataclass
class StreamState:
    """Everything one stream's adaptation owns; `None` where the method is off."""

    norm: NormState | None = None
    lc: LabelCalibrationState | None = None
    fda: FDAState | None = None
    auto: AutoState | None = None
    tent: TentStream | None = None
    frames: int = 0

    def components(self) -> dict:
        parts = ("norm", self.norm), ("lc", self.lc), ("fda", self.fda), ("auto", self.auto), ("tent", self.tent)
        return {k: v for k, v in parts if v is not None}

    def reset(self) -> None:
        """Back to the source state, in place."""
        for component in self.components().values():
            component.reset()
        self.frames = 0

    def state_dict(self) -> dict:
        return {"frames": self.frames, **{k: c.state_dict() for k, c in self.components().items()}}

    def load_state_dict(self, d: dict) -> None:
        """Load a `state_dict` of a state with the same methods on, or raise ValueError saying
        what does not fit; on error this state is left as it was."""
        components = self.components()
        if set(d) != {"frames", *components}:
            raise ValueError(f"state should hold {sorted(['frames', *components])}, got {sorted(d)}")
        frames = d["frames"]
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 0:
            raise ValueError(f"frames must be a non-negative int, got {frames!r}")
        # load into copies first, so that a bad part leaves the whole state as it was; TENT's model
        # is loaded in place by torch, so it needs a deep copy
        trial = {k: copy.deepcopy(c) if k == "tent" else copy.copy(c) for k, c in components.items()}
        for k, c in trial.items():
            c.load_state_dict(d[k])
        for k, c in trial.items():
            setattr(self, k, c)
        self.frames = frames


def to_input_size(images: torch.Tensor, size: list[int]) -> torch.Tensor:
    """Frames [B, 3, H, W] in [0, 1] resized to the network's input size [height, width]."""
    return TF.resize(images, size, antialias=True)


class Pipeline:
    def __init__(self, ckpt: Checkpoint, spec: MethodSpec, device: str | torch.device = "cpu"):
        self.spec, self.device = spec, torch.device(device)
        self.num_classes = ckpt.num_classes
        self.input_size = list(ckpt.input_size)
        self.model = ckpt.build_model(self.device)
        self.frozen = fold_batchnorm(self.model) if spec.norm == "source" else None
        self.adapted = None
        if spec.norm in ("ema", "auto"):
            self.adapted = AdaptedNet(self.model, spec.layers or None).to(self.device).eval()
        self.source_stats = self.adapted.source_state() if self.adapted is not None else None
        if spec.norm == "auto":
            if "shift" not in ckpt.extra:
                raise ValueError("auto needs the checkpoint's shift calibration: run `driftseg calibrate --checkpoint FILE`")
            self.shift = ShiftCalibration.from_dict(ckpt.extra["shift"], len(self.adapted.norms))
            self.shift.tau, self.shift.kappa = self.shift.tau.to(self.device), self.shift.kappa.to(self.device)
        self.fda_b = 0
        if spec.fda_mode is not None:
            h, w = ckpt.input_size
            self.fda_b = band_size(h, w, spec.fda_beta)
            self.source_band = center_crop_band(ckpt.source_amplitude.float(), self.fda_b).to(self.device)

    def new_state(self) -> StreamState:
        """A stream's state at the source: what every stream starts from and resets to."""
        return StreamState(
            norm=NormState.initial(self.source_stats) if self.adapted is not None else None,
            lc=LabelCalibrationState.initial(self.num_classes, self.device) if self.spec.lc else None,
            fda=FDAState.initial(self.source_band) if self.fda_b else None,
            auto=AutoState.initial(len(self.adapted.norms), self.device) if self.spec.norm == "auto" else None,
            tent=TentStream(self.model, self.spec.tent_lr, self.spec.tent_steps) if self.spec.norm == "tent" else None,
        )

    @torch.no_grad()
    def step(
        self, images: torch.Tensor, states: list[StreamState], adapt: bool = True
    ) -> tuple[torch.Tensor, list[StreamState]]:
        """Label maps [B, H, W] for `images` [B, 3, H, W] (RGB in [0, 1], any size), frame b of
        stream states[b]; and the streams' new states (the old ones, unchanged, when adapt is False)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images should be [B, 3, H, W], got {list(images.shape)}")
        if len(states) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} frames but {len(states)} stream states")
        size = images.shape[-2:]
        images = to_input_size(images.to(self.device), self.input_size)
        new = [replace(s, frames=s.frames + 1) for s in states]

        if self.fda_b:
            band = low_freq_amplitude(images, self.fda_b)
            recent = update_recent(torch.stack([s.fda.recent_band for s in states]), band, self.spec.fda_momentum)
            images = transfer(images, self.source_band, self.fda_b, self.spec.fda_mode, recent)
            for s, old, r in zip(new, states, recent):
                s.fda = replace(old.fda, recent_band=r, frames=old.fda.frames + 1)

        scores = self._forward(images, states, new)
        switched = [s.auto is not None and s.auto.switches[-1:] == [s.frames] for s in new]

        if self.spec.lc:  # at the network's resolution: 4x fewer pixels than the frame's
            scores, sums, weights = calibrated_scores(
                scores.softmax(1),
                torch.stack([s.lc.proto_sum for s in states]),
                torch.stack([s.lc.weight for s in states]),
                self.spec.lc_forget,
            )
            for s, p, w, restart in zip(new, sums, weights, switched):
                # a new domain gets new prototypes, as it gets new statistics
                s.lc = LabelCalibrationState.initial(self.num_classes, self.device) if restart else LabelCalibrationState(p, w)
        if scores.shape[-2:] != size:
            scores = F.interpolate(scores, size=size, mode="bilinear", align_corners=False)
        # max(1).indices, not argmax(1): the same labels, 5x faster over the channel dim on the CPU
        return scores.max(1).indices, (new if adapt else states)

    def _forward(self, images: torch.Tensor, states: list[StreamState], new: list[StreamState]) -> torch.Tensor:
        if self.spec.norm == "source":
            return self.frozen(images)
        if self.spec.norm == "tent":
            if len(states) != 1:
                raise ValueError("tent adapts one stream at a time: pass a batch of 1")
            # TENT's state is a whole model: it is updated in place, there is no copy to return
            new[0].tent = states[0].tent
            return states[0].tent.forward_and_adapt(images)
        b = images.shape[0]
        old = torch.stack([s.norm.stats for s in states])
        if self.spec.norm == "auto":
            since = torch.tensor([s.auto.since_reset for s in states], device=self.device)
            momentum = momentum_schedule(since, self.spec.momentum)
            alpha = torch.stack([s.auto.alpha for s in states])
        else:
            momentum = torch.full((b,), self.spec.momentum, device=self.device)
            alpha = torch.full((b,), self.spec.alpha, device=self.device)
        logits, norm = self.adapted(images, old, momentum, alpha)
        for s, prev, n in zip(new, states, norm):
            s.norm = replace(prev.norm, stats=n)
        if self.spec.norm == "auto":
            self._update_auto(states, new, old, norm, momentum)
        return logits

    def _update_auto(self, states, new, old, norm, momentum) -> None:
        """The shift score and per-layer alpha for each stream's next frame; a restart from the
        source where the frame looks like a new domain (see adapters/auto.py)."""
        sizes, cal, source = self.adapted.sizes, self.shift, self.source_stats
        shift = layer_divergence(norm, source, source, sizes) / cal.tau
        jump = (layer_divergence(frame_moments(old, norm, momentum), old, source, sizes) / cal.kappa).mean(1)
        alpha = (2 - shift).clamp(self.spec.auto_floor, 1)
        warm = round(1 / max(self.spec.momentum, 1e-3))  # no second restart before the EMA has filled
        for s, prev, a, m, score, z in zip(new, states, alpha, momentum.tolist(), shift.mean(1).tolist(), jump.tolist()):
            auto = prev.auto
            since, switches = auto.since_reset + 1, auto.switches
            level = (1 - m) * auto.switch_level + m * z
            if since > warm and z > self.spec.auto_switch * max(auto.switch_level, 1.0):
                s.norm = replace(prev.norm, stats=prev.norm.source.clone())
                a, since, level, switches = torch.ones_like(a), 0, 0.0, (switches + [s.frames])[-HISTORY:]
            s.auto = AutoState(alpha=a, since_reset=since, score=score, switch_score=z, switch_level=level,
                               switches=switches)

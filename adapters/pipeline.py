"""One frame's way through the adaptation methods, for a batch of frames of different streams:

    FDA(stream) -> adapted network(stream's BN state) -> softmax -> label calibration(stream) -> argmax

`Pipeline` holds only what every stream shares (the network, the method spec); everything a
stream owns is in its `StreamState`. `step` returns new states and never mutates the given ones,
so a caller that fails half way keeps the old states intact.
"""
from dataclasses import dataclass, field, replace

import torch

from adapters.fda import FDAState, band_size, center_crop_band, low_freq_amplitude, transfer, update_recent
from adapters.ema_bn import AdaptedNet
from adapters.label_calibration import LabelCalibrationState, calibrate
from adapters.spec import MethodSpec
from adapters.tent import TentStream
from models.checkpoint import Checkpoint


@dataclass
class StreamState:
    """Everything one stream's adaptation owns; `None` where the method is off."""

    norm: torch.Tensor | None = None  # [2, N] BN means and second moments
    lc: LabelCalibrationState | None = None
    fda: FDAState | None = None
    tent: TentStream | None = None
    frames: int = 0
    extra: dict = field(default_factory=dict)


class Pipeline:
    def __init__(self, ckpt: Checkpoint, spec: MethodSpec, device: str | torch.device = "cpu"):
        self.spec, self.device = spec, torch.device(device)
        self.num_classes = ckpt.num_classes
        self.model = ckpt.build_model(self.device)
        self.adapted = AdaptedNet(self.model).to(self.device).eval() if spec.norm == "ema" else None
        self.fda_b = 0
        if spec.fda_mode is not None:
            h, w = ckpt.input_size
            self.fda_b = band_size(h, w, spec.fda_beta)
            self.source_band = center_crop_band(ckpt.source_amplitude.float(), self.fda_b).to(self.device)

    def new_state(self) -> StreamState:
        """A stream's state at the source: what every stream starts from and resets to."""
        return StreamState(
            norm=self.adapted.source_state() if self.adapted is not None else None,
            lc=LabelCalibrationState.initial(self.num_classes, self.device) if self.spec.lc else None,
            fda=FDAState.initial(self.source_band) if self.fda_b else None,
            tent=TentStream(self.model, self.spec.tent_lr, self.spec.tent_steps) if self.spec.norm == "tent" else None,
        )

    @torch.no_grad()
    def step(
        self, images: torch.Tensor, states: list[StreamState], adapt: bool = True
    ) -> tuple[torch.Tensor, list[StreamState]]:
        """Label maps [B, H, W] for `images` [B, 3, H, W] (RGB in [0, 1]), frame b of stream
        states[b]; and the streams' new states (the old ones, unchanged, when adapt is False)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images should be [B, 3, H, W], got {list(images.shape)}")
        if len(states) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} frames but {len(states)} stream states")
        images = images.to(self.device)
        new = [replace(s, frames=s.frames + 1) for s in states]

        if self.fda_b:
            band = low_freq_amplitude(images, self.fda_b)
            recent = update_recent(torch.stack([s.fda.recent_band for s in states]), band, self.spec.fda_momentum)
            images = transfer(images, self.source_band, self.fda_b, self.spec.fda_mode, recent)
            for s, old, r in zip(new, states, recent):
                s.fda = replace(old.fda, recent_band=r, frames=old.fda.frames + 1)

        logits = self._forward(images, states, new)

        if self.spec.lc:
            labels, sums, weights = calibrate(
                logits.softmax(1),
                torch.stack([s.lc.proto_sum for s in states]),
                torch.stack([s.lc.weight for s in states]),
                self.spec.lc_forget,
            )
            for s, p, w in zip(new, sums, weights):
                s.lc = LabelCalibrationState(p, w)
        else:
            labels = logits.argmax(1)
        return labels, (new if adapt else states)

    def _forward(self, images: torch.Tensor, states: list[StreamState], new: list[StreamState]) -> torch.Tensor:
        if self.spec.norm == "source":
            return self.model(images)
        if self.spec.norm == "tent":
            if len(states) != 1:
                raise ValueError("tent adapts one stream at a time: pass a batch of 1")
            # TENT's state is a whole model: it is updated in place, there is no copy to return
            new[0].tent = states[0].tent
            return states[0].tent.forward_and_adapt(images)
        b = images.shape[0]
        momentum = torch.full((b,), self.spec.momentum, device=self.device)
        alpha = torch.full((b,), self.spec.alpha, device=self.device)
        logits, norm = self.adapted(images, torch.stack([s.norm for s in states]), momentum, alpha)
        for s, n in zip(new, norm):
            s.norm = n
        return logits

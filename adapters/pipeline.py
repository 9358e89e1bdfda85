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
from functools import cached_property

import torch
from torch.nn import functional as F
from torchvision.transforms.v2 import functional as TF

from driftseg.adapters.auto import (
    HISTORY, AutoState, ShiftCalibration, frame_moments, layer_divergence, momentum_schedule,
)
from driftseg.adapters.fda import FDAState, band_size, center_crop_band, low_freq_amplitude, transfer, update_recent
from driftseg.adapters.ema_bn import AdaptedNet, NormState
from driftseg.adapters.label_calibration import LabelCalibrationState, calibrated_scores
from driftseg.adapters.spec import MethodSpec
from driftseg.adapters.tent import TentStream
from driftseg.models.checkpoint import Checkpoint
from driftseg.models.registry import fold_batchnorm


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


def padded_batch_size(b: int) -> int:
    """The batch size a compiled pipeline runs `b` frames at: the next power of two, so that a server
    whose batches take every size up to 32 compiles (and on a GPU captures) six graphs, not 32."""
    return 1 << (b - 1).bit_length()


PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Pipeline:
    def __init__(self, ckpt: Checkpoint, spec: MethodSpec, device: str | torch.device = "cpu", compile: bool = False,
                 precision: str = "fp32"):
        """`compile`: run the adapted function at the network's input size (`adapt_core`) through
        torch.compile, replayed as CUDA graphs on a GPU, batches padded to `padded_batch_size`; the
        first batch of each padded size pays the compilation. The resizing in and out stays eager, so
        frames of any size share the graphs. `precision`: the network under autocast to bf16 or fp16
        (`driftseg bench precision` measures what that changes)."""
        self.spec, self.device = spec, torch.device(device)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        if precision != "fp32" and spec.norm == "tent":
            raise ValueError("tent adapts by backprop in float32: run it at precision fp32")
        self.dtype = PRECISIONS[precision]
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
        self.adapt_core = self._adapt_core
        self.pad_batches = compile
        if compile:
            if spec.norm == "tent":
                raise ValueError("tent adapts by backprop, outside the compiled forward: it cannot be compiled")
            self.adapt_core = torch.compile(self._adapt_core, mode="reduce-overhead" if self.device.type == "cuda"
                                            else "default", dynamic=False)

    @cached_property
    def padding_state(self) -> StreamState:
        """The source state that pads a compiled batch; never written, so one serves every pad."""
        return self.new_state()

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
        tent = None
        if self.spec.norm == "tent":
            if len(states) != 1:
                raise ValueError("tent adapts one stream at a time: pass a batch of 1")
            tent = states[0].tent  # a whole model, updated in place: there is no copy to return
        images, b = images.to(self.device), len(states)
        if self.pad_batches and padded_batch_size(b) > b:
            # the last frame again, with a source state: every sample is computed on its own, so the
            # padding changes nothing for the others, and real pixels keep FDA and BN finite
            pad = padded_batch_size(b) - b
            images = torch.cat([images, images[-1:].expand(pad, -1, -1, -1)])
            states = states + [self.padding_state] * pad
        torch.compiler.cudagraph_mark_step_begin()  # a new frame: the last one's graph outputs are ours
        labels, out = self._core(images, self.stack_states(states), tent)
        # clones: a CUDA graph's outputs are overwritten by its next replay
        labels, out = labels[:b].clone(), {k: v[:b].clone() for k, v in out.items()}
        return labels, (self._scatter(states[:b], out) if adapt else states[:b])

    def stack_states(self, states: list[StreamState]) -> dict[str, torch.Tensor]:
        """The streams' states stacked into the batch tensors that `core` takes."""
        batch = {}
        if self.adapted is not None:
            batch["stats"] = torch.stack([s.norm.stats for s in states])
        if self.spec.norm == "auto":
            batch["alpha"] = torch.stack([s.auto.alpha for s in states])
            batch["since"] = torch.tensor([s.auto.since_reset for s in states], device=self.device)
            batch["level"] = torch.tensor([s.auto.switch_level for s in states], device=self.device)
        if self.fda_b:
            batch["fda_recent"] = torch.stack([s.fda.recent_band for s in states])
        if self.spec.lc:
            batch["lc_sum"] = torch.stack([s.lc.proto_sum for s in states])
            batch["lc_weight"] = torch.stack([s.lc.weight for s in states])
        return batch

    def _core(self, images: torch.Tensor, batch: dict[str, torch.Tensor], tent: TentStream | None = None
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The tensor work of one step, a pure function of the frames and the stacked states
        (`stack_states`): label maps and the new state tensors. Nothing in it reads a value back to the
        host, so that a GPU can replay `adapt_core` as one CUDA graph."""
        size = images.shape[-2:]
        # contiguous: a compiled graph guards on its inputs' strides, and frames come in other layouts
        # (decoded JPEGs are channels-last); one layout, no recompilation mid-traffic
        scores, out = self.adapt_core(to_input_size(images, self.input_size).contiguous(), batch, tent)
        if scores.shape[-2:] != size:
            scores = F.interpolate(scores, size=size, mode="bilinear", align_corners=False)
        # max(1).indices, not argmax(1): the same labels, 5x faster over the channel dim on the CPU
        return scores.max(1).indices, out

    def _adapt_core(self, images: torch.Tensor, batch: dict[str, torch.Tensor], tent: TentStream | None = None
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The adapted function at the network's input size: FDA, the network with the streams' BN
        statistics, the switch test, label calibration -> class scores at the network's resolution
        and the new state tensors. `adapt_core` is this, or another engine's (adapters/onnx_engine.py)."""
        out = {}
        if self.fda_b:
            band = low_freq_amplitude(images, self.fda_b)
            out["fda_recent"] = update_recent(batch["fda_recent"], band, self.spec.fda_momentum)
            images = transfer(images, self.source_band, self.fda_b, self.spec.fda_mode, out["fda_recent"])

        # autocast changes only the network's convolutions and matrix products; the BN statistics, the
        # states and everything after the logits stay in float32
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            if self.frozen is not None:
                scores = self.frozen(images)
            elif tent is not None:
                scores = tent.forward_and_adapt(images)
            else:
                scores = self._adapted_forward(images, batch, out)
        scores = scores.float()

        if self.spec.lc:
            # on the network's output averaged over stride x stride pixels: the network upsampled it
            # from a coarser grid still (8x for LRASPP), so this is the same calibration at 1 / stride^2
            # of the cost; `_core` resizes its scores to the frame's size as it does any others
            stride = self.spec.lc_stride
            if stride > 1:
                h, w = scores.shape[-2:]
                # bilinear at an exact 1 / stride takes each block's centre (for stride 2 the mean of the
                # block); on the CPU 4x faster than avg_pool2d
                scores = F.interpolate(scores, size=(-(-h // stride), -(-w // stride)), mode="bilinear", align_corners=False)
            scores, out["lc_sum"], out["lc_weight"] = calibrated_scores(
                scores.softmax(1), batch["lc_sum"], batch["lc_weight"], self.spec.lc_forget)
        return scores, out

    def _adapted_forward(self, images: torch.Tensor, batch: dict[str, torch.Tensor], out: dict) -> torch.Tensor:
        """EMA AdaBN; for auto, also the shift score, the next frame's alpha and the switch test
        (see adapters/auto.py), all as tensors: a stream that switches restarts from the source."""
        b, old = images.shape[0], batch["stats"]
        if self.spec.norm == "ema":
            momentum = torch.full((b,), self.spec.momentum, device=images.device)
            alpha = torch.full((b,), self.spec.alpha, device=images.device)
            logits, out["stats"] = self.adapted(images, old, momentum, alpha)
            return logits
        since = batch["since"]
        momentum = momentum_schedule(since, self.spec.momentum)
        logits, stats = self.adapted(images, old, momentum, batch["alpha"])
        sizes, cal, source = self.adapted.sizes, self.shift, self.source_stats
        # the shift (new state against the source) and the jump (this frame against the old state) in one call
        divergence = layer_divergence(torch.cat([stats, frame_moments(old, stats, momentum)]),
                                      torch.cat([source.expand_as(old), old]), source, sizes)
        shift, jump = divergence[:b] / cal.tau, (divergence[b:] / cal.kappa).mean(1)
        warm = round(1 / max(self.spec.momentum, 1e-3))  # no second restart before the EMA has filled
        restart = (since >= warm) & (jump > self.spec.auto_switch * batch["level"].clamp_min(1.0))
        out["restart"] = restart
        out["stats"] = torch.where(restart[:, None, None], source, stats)
        out["alpha"] = torch.where(restart[:, None], 1.0, (2 - shift).clamp_max(1.0).clamp_min(self.spec.auto_floor))
        out["since"] = torch.where(restart, 0, since + 1)
        out["level"] = torch.where(restart, 0.0, torch.lerp(batch["level"], jump, momentum))
        out["score"], out["switch_score"] = shift.mean(1), jump
        return logits

    def _scatter(self, states: list[StreamState], out: dict[str, torch.Tensor]) -> list[StreamState]:
        """New stream states from `core`'s outputs; the given ones are left untouched."""
        new = [replace(s, frames=s.frames + 1) for s in states]
        if "stats" in out:
            for s, prev, stats in zip(new, states, out["stats"]):
                s.norm = replace(prev.norm, stats=stats)
        restarted = [False] * len(states)
        if self.spec.norm == "auto":
            # one read back to the host for every stream's scalars
            host = torch.stack([out["score"], out["switch_score"], out["level"], out["since"].float(),
                                out["restart"].float()], 1).tolist()
            restarted = [bool(r) for *_, r in host]
            for s, prev, alpha, (score, jump, level, since, restart) in zip(new, states, out["alpha"], host):
                switches = (prev.auto.switches + [s.frames])[-HISTORY:] if restart else prev.auto.switches
                s.auto = AutoState(alpha=alpha, since_reset=int(since), score=score, switch_score=jump,
                                   switch_level=level, switches=switches)
        if self.fda_b:
            for s, prev, recent in zip(new, states, out["fda_recent"]):
                s.fda = replace(prev.fda, recent_band=recent, frames=prev.fda.frames + 1)
        if self.spec.lc:
            for s, p, w, restart in zip(new, out["lc_sum"], out["lc_weight"], restarted):
                # a new domain gets new prototypes, as it gets new statistics
                s.lc = LabelCalibrationState.initial(self.num_classes, self.device) if restart else LabelCalibrationState(p, w)
        return new

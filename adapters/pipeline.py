"""One frame's way through the adaptation methods, for a batch of frames of different streams:

    resize to the checkpoint's input size -> input components (FDA) -> the network component (source,
    ema, auto, tent) -> output components (label calibration) -> scores resized back to the frame's
    size -> argmax

`Pipeline` composes the components a method spec names (adapters/component.py) and knows none of
them; it holds only what every stream shares, and a stream's own state is its `StreamState`. `step`
returns new states and never mutates the given ones, so a caller that fails half way keeps the old
states intact. How the adapted function runs (eager, compiled, onnxruntime) is the backend's
(adapters/backends.py).
"""
import copy
from functools import cached_property

import torch
from torch.nn import functional as F
from torchvision.transforms.v2 import functional as TF

from driftseg.adapters.backends import Eager, padded_batch_size
from driftseg.adapters.component import INPUT, NETWORK, OUTPUT, StreamState
from driftseg.adapters.registry import create_component
from driftseg.adapters.spec import MethodSpec
from driftseg.models.checkpoint import Checkpoint


def to_input_size(images: torch.Tensor, size: list[int]) -> torch.Tensor:
    """Frames [B, 3, H, W] in [0, 1] resized to the network's input size [height, width]."""
    return TF.resize(images, size, antialias=True)


def check_frames(images: torch.Tensor, count: int, of: str) -> None:
    """ValueError unless `images` is a batch [B, 3, H, W] of `count` frames, one for each of `count` `of`."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images should be [B, 3, H, W], got {list(images.shape)}")
    if count != images.shape[0]:
        raise ValueError(f"{images.shape[0]} frames but {count} {of}")


PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Pipeline:
    def __init__(self, ckpt: Checkpoint, spec: MethodSpec, device: str | torch.device = "cpu", backend=None,
                 precision: str = "fp32"):
        """`backend`: how the adapted function runs (adapters/backends.py; eager by default). The
        resizing in and out stays eager, so frames of any size share a compiled graph. `precision`: the
        network under autocast to bf16 or fp16 (`driftseg bench precision` measures what that changes)."""
        self.spec, self.device = spec, torch.device(device)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        if precision != "fp32" and spec.backprop:
            raise ValueError(f"{spec.network} adapts by backprop in float32: run it at precision fp32")
        self.dtype = PRECISIONS[precision]
        self.num_classes = ckpt.num_classes
        self.input_size = list(ckpt.input_size)
        self.model = ckpt.build_model(self.device)
        self.components = [create_component(name, config, ckpt, self.model, self.device) for name, config in spec.parts]
        self.inputs, [self.network], self.outputs = ([c for c in self.components if c.stage == stage]
                                                      for stage in (INPUT, NETWORK, OUTPUT))
        # what the output components read from the network besides its scores (parse_method checked that
        # the network provides it)
        self.needs = sorted({key for c in self.outputs for key in type(c).needs_of(c.config)})
        backend = backend or Eager()
        self.backend, self.pad_batches = backend.name, backend.pads_batches
        self.core = backend.bind(self)

    @cached_property
    def padding_state(self) -> StreamState:
        """The source state that pads a compiled batch; never written, so one serves every pad."""
        return self.new_state()

    def new_state(self) -> StreamState:
        """A stream's state at the source: what every stream starts from and resets to."""
        return StreamState({key: part for c in self.components for key, part in c.new_state().items()})

    def describe(self, state: StreamState) -> dict:
        """What the components show of a stream's state (GET /adaptation/state)."""
        return {key: value for c in self.components for key, value in c.describe(state).items()}

    def shift(self, state: StreamState) -> tuple[float | None, float | None]:
        """The stream's shift score and mean alpha, where the network component measures them."""
        return self.network.shift(state) or (None, None)

    @torch.no_grad()
    def step(
        self, images: torch.Tensor, states: list[StreamState], adapt: bool = True
    ) -> tuple[torch.Tensor, list[StreamState]]:
        """Label maps [B, H, W] for `images` [B, 3, H, W] (RGB in [0, 1], any size), frame b of
        stream states[b]; and the streams' new states (the old ones, unchanged, when adapt is False)."""
        check_frames(images, len(states), "stream states")
        images, b, given = images.to(self.device), len(states), states
        # a stream whose schedule says so (rdumb) starts afresh from the source before this frame
        states = [self.new_state() if any(c.resets(s) for c in self.components) else s for s in states]
        if not adapt and self.spec.backprop:  # tent and cotta update their part's model in place: a copy's
            states = [copy.deepcopy(s) for s in states]
        images, pad = self.padded(images)
        states = states + [self.padding_state] * pad  # a source state for each padding frame
        torch.compiler.cudagraph_mark_step_begin()  # a new frame: the last one's graph outputs are ours
        labels, out = self._core(images, self.stack_states(states))
        # clones: a CUDA graph's outputs are overwritten by its next replay
        labels, out = labels[:b].clone(), {k: v[:b].clone() for k, v in out.items()}
        return labels, (self._scatter(states[:b], out) if adapt else given)

    def padded(self, images: torch.Tensor) -> tuple[torch.Tensor, int]:
        """`images` [B, 3, H, W] with the last frame repeated up to `padded_batch_size(B)` where the backend
        pads batches (compiled), and how many frames were added. Every sample is computed on its own, so the
        padding changes nothing for the others, and real pixels keep FDA and BN finite."""
        pad = padded_batch_size(len(images)) - len(images) if self.pad_batches else 0
        return (torch.cat([images, images[-1:].expand(pad, -1, -1, -1)]) if pad else images), pad

    def stack_states(self, states: list[StreamState]) -> dict[str, torch.Tensor]:
        """The streams' states stacked into the batch tensors that `core` takes."""
        return {key: value for c in self.components for key, value in c.stack(states).items()}

    def _core(self, images: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The tensor work of one step, a pure function of the frames and the stacked states
        (`stack_states`): label maps and the new state tensors. Nothing in it reads a value back to the
        host, so that a GPU can replay `core` as one CUDA graph."""
        return self.labels(images, lambda x: self.core(x, batch))

    def labels(self, images: torch.Tensor, core) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Label maps [B, H, W] of `images` [B, 3, H, W] by `core` (frames at the network's input size ->
        (scores, anything)), and what else `core` returned."""
        size = images.shape[-2:]
        # contiguous: a compiled graph guards on its inputs' strides, and frames come in other layouts
        # (decoded JPEGs are channels-last); one layout, no recompilation mid-traffic
        scores, out = core(to_input_size(images, self.input_size).contiguous())
        if scores.shape[-2:] != size:
            scores = F.interpolate(scores, size=size, mode="bilinear", align_corners=False)
        # max(1).indices, not argmax(1): the same labels, 5x faster over the channel dim on the CPU
        return scores.max(1).indices, out

    def adapt(self, images: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The adapted function at the network's input size: the input components, the network, the
        output components -> class scores at the network's resolution and the new state tensors. What
        a backend runs (adapters/backends.py)."""
        out = {}
        scratch = dict.fromkeys(self.needs)  # this call's only: filled by the network, read by the outputs
        for component in self.inputs:
            images = component.forward(images, batch, out, scratch)
        # autocast changes only the network's convolutions and matrix products; the BN statistics, the
        # states and everything after the logits stay in float32
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            scores = self.network.forward(images, batch, out, scratch)
        scores = scores.float()
        scratch = {key: value.float() for key, value in scratch.items()}
        for component in self.outputs:
            scores = component.forward(scores, batch, out, scratch)
        return scores, out

    def _scatter(self, states: list[StreamState], out: dict[str, torch.Tensor]) -> list[StreamState]:
        """New stream states from `core`'s outputs; the given ones are left untouched."""
        new = [StreamState(dict(s.parts), s.frames + 1) for s in states]
        for component in self.components:
            component.scatter(states, new, out)
        return new

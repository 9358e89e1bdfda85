"""Streams' states held on the device, a slot per stream: a step with no host work per frame.

`Pipeline.step` takes the streams' states as Python objects: it stacks them into batch tensors before
the adapted function and splits the new ones back into objects after it, reading the automatic mode's
scalars back to the host. On a GPU that host work, not the adaptation, is most of what a frame costs
beyond the frozen model. A `StatePool` keeps every stream's batch tensors in preallocated tensors on the
pipeline's device, a row (slot) per stream; a step gathers its streams' rows by index, runs the adapted
function and writes the new rows back by index, all in one function that the compiled engine compiles
whole (one CUDA graph on a GPU), and reads nothing back:

    pool = StatePool(pipeline, slots=64)
    labels = pool.step(frames, [3, 7])     frame b of the stream in slot slots[b]; their states advance
    pool.state(3) -> StreamState           the slot's state as the pipeline has it (one read back): to show
    pool.load(3, state), pool.reset(3)     or to save, and to put a saved one back

A domain switch restarts a stream on the device too (component.cleared_on_restart, auto's switch history).
So every part of a stream's state must live in its batch tensors, each written anew by the forward:
methods that decide on the host each frame (auto's guard, rdumb's schedule, DUA's augmentations) or adapt
by backprop have no pool, and say so. Like a pipeline, a pool serves one caller at a time.
"""
from collections.abc import Sequence

import torch

from driftseg.adapters.backends import compile_step
from driftseg.adapters.component import Component, StreamState
from driftseg.adapters.pipeline import Pipeline, check_frames


def pool_refusal(pipeline: Pipeline) -> str:
    """Why `pipeline`'s method cannot keep its streams in a StatePool; empty where it can."""
    if pipeline.spec.backprop:
        return f"{pipeline.spec.network} adapts by backprop, a model per stream"
    if pipeline.backend not in ("torch", "compiled"):
        return f"a pool runs in torch (the torch and compiled engines), not on {pipeline.backend}"
    for c in pipeline.components:
        if type(c).resets is not Component.resets:
            return f"{c.name} decides on the host when a stream starts afresh"
    batch = pipeline.stack_states([pipeline.new_state()])
    images = torch.rand(1, 3, *pipeline.input_size, device=pipeline.device)
    with torch.no_grad():
        _, out = pipeline.adapt(images, batch)
    made = sorted(set(batch) - set(out))
    if made:
        return f"its batch tensors {made} are made on the host for each frame, not carried from the last"
    for key, value in batch.items():
        if out[key].shape != value.shape or out[key].dtype != value.dtype:
            return f"its new {key!r} is {out[key].dtype} {list(out[key].shape)}, not {value.dtype} {list(value.shape)}"
    return ""


class StatePool:
    def __init__(self, pipeline: Pipeline, slots: int):
        """`slots` streams' states on `pipeline`'s device, each at the source; refused (ValueError) for a
        method that has no pool (`pool_refusal`)."""
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        refusal = pool_refusal(pipeline)
        if refusal:
            method = "+".join(name for name, _ in pipeline.spec.parts)
            raise ValueError(f"no state pool for {method}: {refusal}")
        self.pipeline, self.slots = pipeline, slots
        source = pipeline.stack_states([pipeline.new_state()])
        # one row more than the streams': the padding of a compiled batch reads it and writes it back unchanged
        self.tensors = {k: v.repeat(slots + 1, *[1] * (v.ndim - 1)) for k, v in source.items()}
        self.frames = torch.zeros(slots + 1, dtype=torch.long, device=pipeline.device)
        for t in (*self.tensors.values(), self.frames):
            # written in place by the graph: a static address lets a CUDA graph capture the writes
            torch._dynamo.mark_static_address(t)
        self._advance = compile_step(self._advance_eager, pipeline.device) if pipeline.backend == "compiled" \
            else self._advance_eager

    def _advance_eager(self, images: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The scores of `images` (at the network's input size), frame b of slot index[b]; the slots' rows
        advanced in place (those of the padding row, `self.slots`, written back as they were)."""
        batch = {k: t.index_select(0, index) for k, t in self.tensors.items()}
        scores, out = self.pipeline.adapt(images, batch)
        real = index < self.slots
        for k, t in self.tensors.items():
            t.index_copy_(0, index, torch.where(real.view(-1, *[1] * (t.ndim - 1)), out[k], batch[k]))
        self.frames.index_add_(0, index, real.long())
        return scores, {}

    @torch.no_grad()
    def step(self, images: torch.Tensor, slots: Sequence[int]) -> torch.Tensor:
        """Label maps [B, H, W] for `images` [B, 3, H, W] (RGB in [0, 1], any size), frame b of the stream in
        slot slots[b] (distinct slots); those streams' states advance. Nothing is written when it fails."""
        check_frames(images, len(slots), "slots")
        for slot in slots:
            self._check(slot)
        if len(set(slots)) != len(slots):
            raise ValueError(f"a batch holds one frame per stream, got slots {list(slots)}")
        b = len(slots)
        images, pad = self.pipeline.padded(images.to(self.pipeline.device))
        index = torch.tensor(list(slots) + [self.slots] * pad, device=self.pipeline.device)  # padding: its own row
        torch.compiler.cudagraph_mark_step_begin()
        labels, _ = self.pipeline.labels(images, lambda x: self._advance(x, index))
        return labels[:b].clone()  # a clone: a CUDA graph's outputs are overwritten by its next replay

    def state(self, slot: int) -> StreamState:
        """The stream in `slot` as the pipeline's state object (its tensors copied to the host's objects)."""
        self._check(slot)
        rows = {k: t[slot:slot + 1].clone() for k, t in self.tensors.items()}
        source = self.pipeline.new_state()
        state = StreamState(dict(source.parts), int(self.frames[slot]))
        for component in self.pipeline.components:
            component.scatter([source], [state], rows)
        return state

    def load(self, slot: int, state: StreamState) -> None:
        """Put `state` (a state of this pipeline's method) into `slot`."""
        self._check(slot)
        expected = sorted(self.pipeline.new_state().parts)
        if sorted(state.parts) != expected:
            raise ValueError(f"a state of this method holds {expected}, got {sorted(state.parts)}")
        for key, value in self.pipeline.stack_states([state]).items():
            self.tensors[key][slot] = value[0]
        self.frames[slot] = state.frames

    def reset(self, slot: int) -> None:
        """The stream in `slot` back to the source."""
        self.load(slot, self.pipeline.new_state())

    def _check(self, slot) -> None:
        if isinstance(slot, bool) or not isinstance(slot, int) or not 0 <= slot < self.slots:
            raise ValueError(f"slot must be an int in [0, {self.slots}), got {slot!r}")

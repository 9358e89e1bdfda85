"""Cross-stream micro-batching: frames of different streams that arrive close together go through
the network as one batch.

    await batcher.submit(frame, state, adapt, model) -> (labels, new state, seconds the batch took)

One worker task takes the first waiting frame, then whatever else arrives within `max_delay`
seconds (at most `max_batch` frames), groups them by model and frame size (a batch is one tensor
through one network) and runs each group as one step of the adapted function in the model thread,
one group at a time. A stream
never has two frames in a batch: the engine holds a stream's lock from decode to commit, so a
stream has at most one frame waiting, and a frame whose request was cancelled is dropped before it
is batched. `prepare` first turns the group's frames into tensors (decoding JPEGs in one batch on a
GPU); a frame it answers with an exception fails alone. A failed step, or one that answers another
number of frames than it was given, answers each of its requests with the error, and no state
changes: the step returns new states and never mutates the ones it was given.

The model thread is one thread that does all of the network's work (the engine loads and warms up
the model there too). On the CPU torch parallelises an operation over an OpenMP team of the calling
thread; every other thread that calls it gets a team of its own, and once the teams together hold
more threads than there are cores OpenMP stops spinning between operations: on this project's
2-core machine a step took about 1.6x as long from alternating worker threads as from one thread,
and one camera's frames/s through the server rose by half once the steps stayed on one. On a GPU
one thread also keeps the kernels on one stream in submission order.
"""
import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from driftseg.adapters.component import StreamState
from driftseg.service.errors import NotReady

# frames [B, 3, H, W], their streams' states and the model they are served by (None: the base) -> labels
# per frame and the new states
Step = Callable[[torch.Tensor, list[StreamState], str | None], tuple[list[np.ndarray], list[StreamState]]]
# the frames of one group as submitted (anything with the `shape` of a [1, 3, H, W] frame) -> a
# [1, 3, H, W] tensor or the exception that frame's request fails with, for each
Prepare = Callable[[list], list]


@dataclass
class _Request:
    frame: object  # a [1, 3, H, W] tensor, or what `prepare` makes one of
    state: StreamState
    adapt: bool
    model: str | None
    arrived: float
    future: asyncio.Future


class Batcher:
    def __init__(self, step: Step, max_batch: int, max_delay: float,
                 on_batch: Callable[[int, list[float]], None] = lambda size, waits: None,
                 prepare: Prepare = lambda frames: frames, model_thread: Executor | None = None):
        """`on_batch(size, waits)` is told each batch's size and its frames' seconds in the queue;
        `model_thread` is a one-thread executor (default: a new one)."""
        if max_batch < 1 or max_delay < 0:
            raise ValueError(f"max_batch must be >= 1 and max_delay >= 0, got {max_batch}, {max_delay}")
        self.step, self.max_batch, self.max_delay, self.on_batch = step, max_batch, max_delay, on_batch
        self.prepare = prepare
        self.model_thread = model_thread or ThreadPoolExecutor(1, thread_name_prefix="driftseg-model")
        self._queue: asyncio.Queue[_Request] = asyncio.Queue()
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        """Start the worker on the running event loop."""
        self._worker = asyncio.get_running_loop().create_task(self._work(), name="driftseg-batcher")

    async def stop(self) -> None:
        """Stop the worker; frames still waiting are answered NotReady (503)."""
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        while not self._queue.empty():
            request = self._queue.get_nowait()
            if not request.future.done():
                request.future.set_exception(NotReady("the server is shutting down: retry on another replica"))

    async def submit(self, frame, state: StreamState, adapt: bool,
                     model: str | None = None) -> tuple[np.ndarray, StreamState, float]:
        """The labels of one stream's frame ([1, 3, H, W], or what `prepare` makes one of) under `model`
        (None: the base), the stream's new state (`state` itself when not adapting) and the seconds its
        batch took."""
        if self._worker is None:
            raise NotReady("the model is not serving: wait for GET /readyz to answer 200")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Request(frame, state, adapt, model, time.perf_counter(), future))
        return await future

    async def _work(self) -> None:
        while True:
            batch = await self._collect()
            groups: dict[tuple, list[_Request]] = {}
            for request in batch:
                groups.setdefault((request.model, tuple(request.frame.shape)), []).append(request)
            for group in groups.values():
                await self._run(group)

    async def _collect(self) -> list[_Request]:
        """The first waiting frame and those that come within max_delay of it, cancelled ones dropped."""
        batch = [await self._queue.get()]
        deadline = time.perf_counter() + self.max_delay
        while len(batch) < self.max_batch:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return [r for r in batch if not r.future.done()]

    async def _run(self, group: list[_Request]) -> None:
        start = time.perf_counter()
        self.on_batch(len(group), [start - r.arrived for r in group])
        try:
            ready = []
            loop = asyncio.get_running_loop()
            prepared = await loop.run_in_executor(self.model_thread, self.prepare, [r.frame for r in group])
            for r, frame in zip(group, prepared):
                if not isinstance(frame, Exception):
                    ready.append((r, frame))
                elif not r.future.done():
                    r.future.set_exception(frame)
            group = [r for r, _ in ready]
            if not group:
                return
            frames, states = [frame for _, frame in ready], [r.state for r in group]
            model = group[0].model
            labels, states = await loop.run_in_executor(self.model_thread,
                                                        lambda: self.step(torch.cat(frames), states, model))
            if len(labels) != len(group) or len(states) != len(group):
                raise RuntimeError(f"the step answered {len(labels)} label maps and {len(states)} states "
                                   f"for {len(group)} frames")
        except BaseException as e:  # every request of the batch hears of it; the worker goes on unless stopped
            error = NotReady("the server is shutting down: retry") if isinstance(e, asyncio.CancelledError) else e
            for r in group:
                if not r.future.done():
                    r.future.set_exception(error)
            if not isinstance(e, Exception):
                raise
            return
        seconds = time.perf_counter() - start
        for r, lab, new in zip(group, labels, states):
            if not r.future.done():
                r.future.set_result((lab, new if r.adapt else r.state, seconds))

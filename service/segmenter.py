"""The request path of POST /segment:

    admission -> stream lock (arrival order) -> decode (batched decoding: read the JPEG's header) ->
    batcher (frames of other streams join; batched JPEGs are decoded together) -> encode -> commit
    the new state -> record the frame (DRIFTSEG_RECORD, service/recorder.py)

run off the event loop: decoding and encoding in worker threads, the network in the model thread
(service/batcher.py). A stream's new state is stored only once decode, step and encode all
succeeded, so a failed request leaves the stream as it was."""
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor

import numpy as np
import torch
from anyio import to_thread

from driftseg.adapters.backends import padded_batch_size
from driftseg.adapters.component import StreamState
from driftseg.service import formats, imaging
from driftseg.service.adaptation import Served, shift_and_alpha
from driftseg.service.admission import Admission
from driftseg.service.batcher import Batcher
from driftseg.service.formats import Segmented
from driftseg.service.metrics import Metrics
from driftseg.service.model_store import Models
from driftseg.service.recorder import Recorder
from driftseg.service.registry import StreamRegistry
from driftseg.service.settings import Settings
from driftseg.service.stages import Stage

log = logging.getLogger("driftseg.service")

def _timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


class Segmenter:
    def __init__(self, settings: Settings, models: Models, registry: StreamRegistry, metrics: Metrics,
                 model_thread: Executor | None = None, recorder: Recorder | None = None,
                 after_recorded: Callable[[str], Awaitable[None]] | None = None):
        self.models, self.registry, self.recorder, self.after_recorded = models, registry, recorder, after_recorded
        self.pipeline = models.base.pipeline  # the base model's: device, input size, batching as every model's
        self.class_names = models.base.class_names
        self.metrics, self.max_image_pixels = metrics, settings.max_image_pixels
        self.device = self.pipeline.device
        self.batched_decode = settings.decode == "batched" or (settings.decode == "auto" and self.device.type == "cuda")
        self.batcher = Batcher(self.step, settings.max_batch, settings.max_batch_delay_ms / 1000,
                               metrics.observe_batch, prepare=self.prepare, model_thread=model_thread)
        self.admission = Admission(settings.max_pending, self.batcher.max_batch, metrics.in_flight.set)

    async def segment(self, stream: str, data: bytes, adapt: bool = True, fmt: str = "png") -> Segmented:
        """Segment one encoded frame of `stream`, folding it into the stream's state if `adapt`."""
        formats.check_format(fmt)
        with self.admission.admit():
            return await self._segment(stream, data, adapt, fmt)

    async def _segment(self, stream: str, data: bytes, adapt: bool, fmt: str) -> Segmented:
        arrived, recorded = time.perf_counter(), False
        async with self.registry.use(stream) as entry:
            waited = time.perf_counter() - arrived
            (rgb, frame), t_decode = await to_thread.run_sync(_timed, self.decode, data, fmt)
            # a bound stream's model, loaded now if it is not resident (the base costs nothing here)
            model = None if entry.model in (None, self.models.base.fingerprint) else entry.model
            served = self.models.base if model is None else await to_thread.run_sync(self.models.get, model)
            labels, state, t_model = await self.batcher.submit(frame, entry.state, adapt, model)
            self.admission.observe_batch(t_model)
            out, t_encode = await to_thread.run_sync(_timed, self.encode, fmt, rgb, labels, served)
            score, alpha = shift_and_alpha(served.pipeline, state)
            await self.registry.commit(entry, state, score)
            # under the stream's lock, so a stream's frames are recorded in the order they were applied
            if self.recorder is not None and self.recorder.wants(score):
                recorded = await to_thread.run_sync(self.recorder.record, stream, data)
                if recorded:
                    self.metrics.frames_recorded.inc()
        if recorded and self.after_recorded is not None:  # outside the lock: a job reads the stream's state
            await self.after_recorded(stream)
        seconds = {Stage.WAIT: waited, Stage.DECODE: t_decode, Stage.MODEL: t_model, Stage.ENCODE: t_encode}
        for stage, value in seconds.items():
            self.metrics.stage_seconds.labels(stage).observe(value)
        self.metrics.frames.labels("true" if adapt else "false").inc()
        if adapt:
            self.metrics.frames_adapted.inc()
        h, w = labels.shape
        result = Segmented(stream, fmt, state.frames, adapt, w, h, score, alpha, seconds)
        if fmt == "json":
            result.counts = out
        else:
            result.body = out
        return result

    # the work of the threads: decode and encode in a request's worker thread, prepare and step in the model thread

    def decode(self, data: bytes, fmt: str) -> tuple[np.ndarray | None, object]:
        """The frame's RGB pixels on the host (None when not decoded yet) and what the batcher takes:
        a uint8 [1, 3, H, W] view of them, or for batched decoding a JPEG whose header was read;
        `prepare` makes frames of them in the model thread (no torch work in a request's thread)."""
        if self.batched_decode and not formats.needs_pixels(fmt):
            encoded = imaging.read_jpeg_header(data, self.max_image_pixels)
            if encoded is not None:
                return None, encoded
        rgb = imaging.decode(data, self.max_image_pixels)
        return rgb, imaging.pixels_view(rgb)

    def prepare(self, items: list) -> list:
        return imaging.decode_batch(items, self.max_image_pixels, self.device)

    def step(self, frames: torch.Tensor, states: list[StreamState],
             model: str | None = None) -> tuple[list[np.ndarray], list[StreamState]]:
        """One batch of frames of different streams on one model (None: the base): label maps and new
        states (the batcher hands the old state back to a request that does not adapt; the labels are
        the same either way)."""
        labels, new = self.models.get(model).pipeline.step(frames, states)
        dtype = torch.uint8 if self.pipeline.num_classes <= 256 else torch.int32
        return list(labels.to(dtype).cpu().numpy()), new

    def encode(self, fmt: str, rgb: np.ndarray | None, labels: np.ndarray, served: Served):
        return formats.encode(fmt, rgb, labels, served.palette, len(self.class_names))

    def warm_up(self) -> None:
        """One mid-grey frame at the network's input size through decode, step and encode, state
        discarded; compiled, a batch of each padded size up to the batch limit, so that no request waits
        for a compilation."""
        h, w = self.pipeline.input_size
        rgb = np.full((h, w, 3), 128, dtype=np.uint8)
        frame = imaging.to_frame(rgb)
        if self.batched_decode:  # the decoder's first call sets it up
            [frame] = self.prepare([self.decode(imaging.encode_jpeg(rgb), "png")[1]])
        compiled = self.pipeline.pad_batches
        sizes = sorted({padded_batch_size(b) for b in range(1, self.batcher.max_batch + 1)}) if compiled else [1]
        for size in sizes:
            start = time.perf_counter()
            labels, _ = self.step(frame.expand(size, -1, -1, -1), [self.pipeline.new_state()] * size)
            if compiled:
                log.info("compiled the adapted function for batches of %d in %.0f s", size, time.perf_counter() - start)
        imaging.encode_labels(labels[0])

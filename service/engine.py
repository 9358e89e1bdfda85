"""The engine: the pipeline every stream shares, the stream registry, and the request path

    stream lock (arrival order) -> decode (batched decoding: read the JPEG's header) -> batcher
    (frames of other streams join; batched JPEGs are decoded together) -> encode -> commit the new state

run off the event loop in worker threads. A stream's new state is stored only once decode, step and
encode all succeeded, so a failed request leaves the stream as it was.
"""
import asyncio
import logging
import math
import time
from concurrent.futures import Executor
from dataclasses import asdict, dataclass

import numpy as np
import torch
from anyio import to_thread

from driftseg.adapters import onnx_engine
from driftseg.adapters.auto import layer_divergence
from driftseg.adapters.pipeline import Pipeline, StreamState, padded_batch_size
from driftseg.models.checkpoint import file_sha256, load_checkpoint
from driftseg.service import imaging, snapshots
from driftseg.service.batcher import Batcher
from driftseg.service.errors import NotFound, Overloaded
from driftseg.service.metrics import Metrics
from driftseg.service.registry import StreamEntry, StreamRegistry, check_stream_id
from driftseg.service.settings import Settings
from driftseg.service.store import open_store
from driftseg.service.stages import Stage

FORMATS = ("png", "overlay", "json")
log = logging.getLogger("driftseg.service")


@dataclass
class Segmented:
    """One answered frame: `body` for png/overlay, `counts` (pixels per class) for json."""

    stream: str
    frame: int  # frames folded into the stream's state so far, this one included when adapted
    adapted: bool
    width: int
    height: int
    shift_score: float | None
    alpha_mean: float | None
    seconds: dict[Stage, float]  # every stage of service/stages.py
    media_type: str | None = None
    body: bytes | None = None
    counts: np.ndarray | None = None


def _timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


class Engine:
    def __init__(self, settings: Settings, pipeline: Pipeline, class_names: list[str], palette: list[list[int]],
                 fingerprint: str, metrics: Metrics, model_thread: Executor | None = None):
        self.settings, self.pipeline, self.metrics = settings, pipeline, metrics
        self.device, self.spec, self.method = pipeline.device, pipeline.spec, settings.method_string
        self.class_names, self.palette = list(class_names), np.asarray(palette, dtype=np.uint8)
        self.fingerprint = fingerprint
        self.store = open_store(settings, fingerprint, self.method)
        self.registry = StreamRegistry(self.store, pipeline.new_state, settings.max_streams, settings.snapshot_every,
                                       on_write=metrics.snapshots.inc)
        self.ready = False
        self.pending = 0  # /segment requests admitted and not yet answered
        self.model_seconds = 0.0  # running mean of a batch's time in the network, for Retry-After
        # tent adapts one stream at a time; AdaptedNet runs one step at a time, which the batcher keeps to
        max_batch = 1 if self.spec.norm == "tent" else settings.max_batch
        self.batched_decode = settings.decode == "batched" or (settings.decode == "auto" and self.device.type == "cuda")
        self.batcher = Batcher(self._step, max_batch, settings.max_batch_delay_ms / 1000, metrics.observe_batch,
                               prepare=self._prepare, model_thread=model_thread)

    @classmethod
    def load(cls, settings: Settings, metrics: Metrics, model_thread: Executor | None = None) -> "Engine":
        """Load the checkpoint, build the pipeline and warm it up (blocking; the lifespan runs it in
        `model_thread`, the thread the batcher then runs the network in, see service/batcher.py)."""
        ckpt = load_checkpoint(settings.checkpoint)
        pipeline = Pipeline(ckpt, settings.spec, settings.torch_device, compile=settings.compile,
                            precision=settings.precision)
        fingerprint = file_sha256(settings.checkpoint)
        if settings.engine == "onnx":
            cached = settings.state_dir / "onnx" / f"{snapshots.origin_key(fingerprint, settings.method_string)}.onnx"
            path = settings.onnx_model or cached
            pipeline.adapt_core = onnx_engine.load_or_export(
                pipeline, path, onnx_engine.onnx_metadata(fingerprint, settings.method_string))
        engine = cls(settings, pipeline, ckpt.class_names, ckpt.palette, fingerprint, metrics, model_thread)
        engine.warm_up()
        return engine

    def warm_up(self) -> None:
        """One mid-grey frame at the network's input size through the whole path, state discarded;
        compiled, a batch of each padded size up to max_batch, so no request waits for a compilation."""
        h, w = self.pipeline.input_size
        rgb = np.full((h, w, 3), 128, dtype=np.uint8)
        frame = imaging.to_frame(rgb)
        if self.batched_decode:  # the decoder's first call sets it up
            [frame] = self._prepare([self._decode(imaging.encode_jpeg(rgb), "png")[1]])
        compiled = self.pipeline.pad_batches
        for size in sorted({padded_batch_size(b) for b in range(1, self.batcher.max_batch + 1)}) if compiled else [1]:
            start = time.perf_counter()
            labels, _ = self._step(frame.expand(size, -1, -1, -1), [self.pipeline.new_state()] * size)
            if compiled:
                log.info("compiled the adapted function for batches of %d in %.0f s", size, time.perf_counter() - start)
        imaging.encode_labels(labels[0])

    async def start(self) -> None:
        await self.registry.open()
        self.batcher.start()
        self._store_watch = asyncio.get_running_loop().create_task(self._watch_store())

    async def stop(self) -> int:
        """Stop serving frames and snapshot every stream whose state changed; the number written."""
        self._store_watch.cancel()
        await self.batcher.stop()
        return await self.registry.flush()

    async def _watch_store(self) -> None:
        """While the state store is down, try it every few seconds; once it answers, write every stream
        whose state changed meanwhile (the registry kept them in memory)."""
        while True:
            await asyncio.sleep(self.settings.store_retry_seconds)
            try:
                if not self.store.healthy and await to_thread.run_sync(self.store.ping):
                    log.info("state store back: %d stream snapshot(s) caught up", await self.registry.flush())
            except Exception:  # the watcher must outlive whatever one attempt ran into
                log.exception("state store catch-up failed; trying again in %s s", self.settings.store_retry_seconds)

    # the request path

    async def segment(self, stream: str, data: bytes, adapt: bool = True, fmt: str = "png") -> Segmented:
        """Segment one encoded frame of `stream`, folding it into the stream's state if `adapt`."""
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
        if self.pending >= self.settings.max_pending:
            # the network takes the queue max_batch frames at a time: about that long until it is empty
            retry = max(1, math.ceil(self.pending / self.batcher.max_batch * self.model_seconds))
            raise Overloaded(f"{self.pending} frames are in flight, the most this server takes "
                             f"(DRIFTSEG_MAX_PENDING); retry in {retry} s", retry)
        self.pending += 1
        self.metrics.in_flight.inc()
        try:
            return await self._segment(stream, data, adapt, fmt)
        finally:
            self.pending -= 1
            self.metrics.in_flight.dec()

    async def _segment(self, stream: str, data: bytes, adapt: bool, fmt: str) -> Segmented:
        arrived = time.perf_counter()
        async with self.registry.use(stream) as entry:
            waited = time.perf_counter() - arrived
            (rgb, frame), t_decode = await to_thread.run_sync(_timed, self._decode, data, fmt)
            labels, state, t_model = await self.batcher.submit(frame, entry.state, adapt)
            self.model_seconds += 0.1 * (t_model - self.model_seconds)
            out, t_encode = await to_thread.run_sync(_timed, self._encode, fmt, rgb, labels)
            score, alpha = self._auto(state)
            await self.registry.commit(entry, state, score)
        seconds = {Stage.WAIT: waited, Stage.DECODE: t_decode, Stage.MODEL: t_model, Stage.ENCODE: t_encode}
        for stage, value in seconds.items():
            self.metrics.stage_seconds.labels(stage).observe(value)
        self.metrics.frames.labels("true" if adapt else "false").inc()
        if adapt:
            self.metrics.frames_adapted.inc()
        h, w = labels.shape
        result = Segmented(stream, state.frames, adapt, w, h, score, alpha, seconds)
        if fmt == "json":
            result.counts = out
        else:
            result.media_type, result.body = ("image/png" if fmt == "png" else "image/jpeg"), out
        return result

    def _decode(self, data: bytes, fmt: str) -> tuple[np.ndarray | None, object]:
        """The frame's RGB pixels on the host (None when not decoded yet) and what the batcher takes:
        a uint8 [1, 3, H, W] view of them, or for batched decoding a JPEG whose header was read;
        `_prepare` makes frames of them in the model thread (no torch work in a request's thread)."""
        if self.batched_decode and fmt != "overlay":  # an overlay blends the frame's pixels on the host
            encoded = imaging.read_jpeg_header(data, self.settings.max_image_pixels)
            if encoded is not None:
                return None, encoded
        rgb = imaging.decode(data, self.settings.max_image_pixels)
        return rgb, imaging.pixels_view(rgb)

    def _prepare(self, items: list) -> list:
        return imaging.decode_batch(items, self.settings.max_image_pixels, self.device)

    def _step(self, frames: torch.Tensor, states: list[StreamState]) -> tuple[list[np.ndarray], list[StreamState]]:
        """One batch of frames of different streams: label maps and new states (the batcher hands the
        old state back to a request that does not adapt; the labels are the same either way)."""
        labels, new = self.pipeline.step(frames, states)
        dtype = torch.uint8 if self.pipeline.num_classes <= 256 else torch.int32
        return list(labels.to(dtype).cpu().numpy()), new

    def _encode(self, fmt: str, rgb: np.ndarray, labels: np.ndarray):
        if fmt == "png":
            return imaging.encode_labels(labels)
        if fmt == "overlay":
            return imaging.encode_overlay(rgb, labels, self.palette)
        return imaging.histogram(labels, len(self.class_names))

    @staticmethod
    def _auto(state: StreamState) -> tuple[float | None, float | None]:
        if state.auto is None:
            return None, None
        return float(state.auto.score), float(state.auto.alpha.float().mean())

    # state export, import, reset, listing

    async def describe(self, stream: str) -> dict:
        """What GET /adaptation/state answers (see service.schemas.StreamStateSummary)."""
        async with self.registry.use(stream, create=False) as entry:
            if entry is None:
                raise self._unknown(stream)
            return await to_thread.run_sync(self._describe, entry, entry.state, list(entry.scores), self.registry.is_stored(stream))

    def _describe(self, entry: StreamEntry, state: StreamState, scores: list, stored: bool) -> dict:
        score, alpha = self._auto(state)
        out = {
            "stream": entry.stream, "checkpoint": self.fingerprint,
            "method": {"spec": self.method, "parameters": asdict(self.spec)},
            "frames": state.frames, "last_seen": entry.last_seen, "in_memory": True, "on_disk": stored,
            "shift_score": score, "alpha_mean": alpha,
            "since_reset": state.auto.since_reset if state.auto else None,
            "switches": list(state.auto.switches) if state.auto else [],
            "shift_history": [{"frame": f, "score": s} for f, s in scores],
            "layers": [], "label_calibration": None, "fda": None,
        }
        if state.norm is not None:
            adapted, source = self.pipeline.adapted, self.pipeline.source_stats
            divergence = layer_divergence(state.norm.stats[None].float(), source, source, adapted.sizes)[0]
            shift = divergence / self.pipeline.shift.tau if state.auto is not None else None
            for i, (name, channels) in enumerate(zip(adapted.layer_names, adapted.sizes)):
                out["layers"].append({
                    "index": i, "name": name, "channels": channels, "divergence": float(divergence[i]),
                    "shift": float(shift[i]) if shift is not None else None,
                    "alpha": float(state.auto.alpha[i]) if state.auto is not None else self.spec.alpha,
                })
        if state.lc is not None:
            out["label_calibration"] = {"classes": self.class_names, "weight": state.lc.weight.tolist(),
                                        "prototypes": state.lc.prototypes().tolist()}
        if state.fda is not None:
            out["fda"] = {"frames": state.fda.frames, "band": int(state.fda.recent_band.shape[-1])}
        return out

    async def export(self, stream: str) -> bytes:
        """The stream's state as snapshot bytes (service/snapshots.py)."""
        async with self.registry.use(stream, create=False) as entry:
            if entry is None:
                raise self._unknown(stream)
            return await to_thread.run_sync(snapshots.encode, stream, entry.state, self.fingerprint, self.method,
                                            entry.last_seen)

    async def import_state(self, stream: str, data: bytes) -> dict:
        """Replace the stream's state with a snapshot's, all checks passed first: Unprocessable (422) for a
        file that is not a snapshot or does not fit, Conflict (409) for another checkpoint or method."""
        check_stream_id(stream)
        payload = await to_thread.run_sync(snapshots.decode, data)
        snapshots.check_origin(payload, self.fingerprint, self.method)
        state = await to_thread.run_sync(snapshots.restore, payload, self.pipeline.new_state)
        async with self.registry.use(stream) as entry:
            await self.registry.replace(entry, state, self._auto(state)[0] if state.frames else None)
        return await self.describe(stream)

    async def reset(self, stream: str) -> list[str]:
        if not await self.registry.reset(stream):
            raise self._unknown(stream)
        return [stream]

    async def reset_all(self) -> list[str]:
        return await self.registry.reset_all()

    def streams(self) -> list[dict]:
        return [{"stream": s, "frames": f, "last_seen": t, "in_memory": m, "on_disk": d}
                for s, f, t, m, d in self.registry.streams()]

    @staticmethod
    def _unknown(stream: str) -> NotFound:
        return NotFound(f"stream {stream!r} is not held: POST /segment with X-Stream-Id: {stream} starts it "
                        "(GET /adaptation/streams lists the streams held)")

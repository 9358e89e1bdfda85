"""Prometheus metrics, in a registry of each app's own (so two apps in one process do not collide).

    driftseg_requests_total{route,status}             requests answered, by route template and status
    driftseg_request_duration_seconds{route}          histogram of request time
    driftseg_stage_duration_seconds{stage}            histogram of each stage's time (service/stages.py)
    driftseg_frames_total{adapted}                    frames segmented, folded into their stream or not
    driftseg_segment_in_flight                        /segment requests admitted and not yet answered (the
                                                      queue depth; beyond max_pending a request gets a 503)
    driftseg_segment_max_pending                      DRIFTSEG_MAX_PENDING: in_flight / max_pending is how full
                                                      the queue is (deploy/prometheus/alerts.yml)
    driftseg_model_info{checkpoint,method,engine}     1, labelled with the checkpoint's sha256, the method spec
                                                      ('auto' expanded) and the engine, once the model is loaded
    driftseg_batch_size                               histogram of frames per batch through the network
    driftseg_queue_wait_seconds                       histogram of a frame's wait for its batch
    driftseg_frames_adapted_total                     frames folded into their stream's state
    driftseg_snapshots_written_total                  stream snapshots written to the state dir
    driftseg_frames_recorded_total                    frames kept by recording (DRIFTSEG_RECORD)
    driftseg_adaptation_jobs_total{outcome}           adaptation jobs finished: promoted, rejected, failed
    driftseg_streams_held{where}                      streams in memory / with a snapshot on disk
    driftseg_shift_score{stream}                      shift score of the `metrics_stream_cap` most recently
                                                      seen streams in memory; the highest of the others under
                                                      stream="_other" (a bounded number of series)
    driftseg_state_store_up                           1 while the snapshot store answers, 0 while degraded
    driftseg_gpu_memory_bytes{kind}                   torch's allocated / reserved CUDA memory (CUDA only)
    process_*, python_*                               the client's default process, platform and GC collectors

Counters and histograms carry no `_created` series (disabled for the whole process, below): they
doubled the series count for a timestamp that nothing here queries.
"""
import time
from collections.abc import Callable

import torch
from prometheus_client import (
    CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, GCCollector, Histogram, PlatformCollector, ProcessCollector,
    disable_created_metrics, generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from driftseg.service.stages import Stage

disable_created_metrics()

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
OTHER = "_other"


class Metrics:
    def __init__(self, stream_cap: int, max_pending: int):
        self.stream_cap = stream_cap
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.requests = Counter("driftseg_requests", "Requests answered", ["route", "status"], registry=self.registry)
        self.request_seconds = Histogram("driftseg_request_duration_seconds", "Request time", ["route"],
                                         buckets=LATENCY_BUCKETS, registry=self.registry)
        self.stage_seconds = Histogram("driftseg_stage_duration_seconds", "Time per stage of /segment", ["stage"],
                                       buckets=LATENCY_BUCKETS, registry=self.registry)
        self.frames = Counter("driftseg_frames", "Frames segmented", ["adapted"], registry=self.registry)
        self.frames_adapted = Counter("driftseg_frames_adapted", "Frames folded into their stream's state",
                                      registry=self.registry)
        self.in_flight = Gauge("driftseg_segment_in_flight", "/segment requests admitted and not yet answered",
                               registry=self.registry)
        self.max_pending = Gauge("driftseg_segment_max_pending", "The most /segment requests in flight at once "
                                 "(DRIFTSEG_MAX_PENDING); beyond it a request is answered 503", registry=self.registry)
        self.max_pending.set(max_pending)
        self.model_info = Gauge("driftseg_model_info", "1 for the model served: checkpoint sha256, method spec, engine",
                                ["checkpoint", "method", "engine"], registry=self.registry)
        self.batch_size = Histogram("driftseg_batch_size", "Frames per batch through the network",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)
        self.queue_wait = Histogram("driftseg_queue_wait_seconds", "A frame's wait for its batch",
                                    buckets=LATENCY_BUCKETS, registry=self.registry)
        self.snapshots = Counter("driftseg_snapshots_written", "Stream snapshots written", registry=self.registry)
        self.adaptation_jobs = Counter("driftseg_adaptation_jobs", "Adaptation jobs finished, by outcome", ["outcome"],
                                       registry=self.registry)
        for outcome in ("promoted", "rejected", "failed"):
            self.adaptation_jobs.labels(outcome)
        self.frames_recorded = Counter("driftseg_frames_recorded", "Frames kept by recording (DRIFTSEG_RECORD)",
                                       registry=self.registry)
        for stage in Stage:
            self.stage_seconds.labels(stage)  # every series exists from the start
        for adapted in ("true", "false"):
            self.frames.labels(adapted)
        self._engine: Callable[[], object] = lambda: None
        self.registry.register(_EngineCollector(self))

    def model_loaded(self, checkpoint: str, method: str, engine: str) -> None:
        self.model_info.labels(checkpoint, method, engine).set(1)

    def watch(self, engine_getter: Callable[[], object]) -> None:
        """Where the stream gauges read the engine from (None until the model is loaded)."""
        self._engine = engine_getter

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.request_seconds.labels(route).observe(seconds)

    def observe_batch(self, size: int, waits: list[float]) -> None:
        self.batch_size.observe(size)
        for wait in waits:
            self.queue_wait.observe(wait)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _EngineCollector(Collector):
    """Gauges read from the engine at scrape time: no stale series for evicted streams."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def describe(self):
        return []

    def collect(self):
        engine = self.metrics._engine()
        held = GaugeMetricFamily("driftseg_streams_held", "Streams held", labels=["where"])
        score = GaugeMetricFamily("driftseg_shift_score", "Shift score of a stream's state (about 1 at the edge "
                                  "of in-domain)", labels=["stream"])
        if engine is not None:
            in_memory, stored = engine.states.counts()
            held.add_metric(["memory"], in_memory)
            held.add_metric(["disk"], stored)  # the label value predates the Redis store: any store
            scored = engine.states.latest_scores()
            cap = self.metrics.stream_cap
            for stream, value in scored[:cap]:
                score.add_metric([stream], value)
            if scored[cap:]:
                score.add_metric([OTHER], max(v for _, v in scored[cap:]))
        yield held
        yield score
        if engine is not None:
            up = GaugeMetricFamily("driftseg_state_store_up", "1 while the snapshot store answers, 0 while degraded")
            up.add_metric([], 1.0 if engine.store.healthy else 0.0)
            yield up
        if engine is not None and engine.device.type == "cuda":
            gpu = GaugeMetricFamily("driftseg_gpu_memory_bytes", "CUDA memory held by torch", labels=["kind"])
            gpu.add_metric(["allocated"], torch.cuda.memory_allocated(engine.device))
            gpu.add_metric(["reserved"], torch.cuda.memory_reserved(engine.device))
            yield gpu


class MetricsMiddleware:
    """Pure ASGI middleware counting every HTTP request by its route template and status."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.observe_request(route, status, time.perf_counter() - start)

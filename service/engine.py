"""The engine: one loaded model and what serves with it, through its life

    load (the pipeline, service/adaptation.py) -> warm up -> start (list the store's snapshots, start
    the batcher and the store watcher) -> serve -> stop (stop the batcher, snapshot every changed stream)

It wires the parts that each do one job: the snapshot store (service/store.py), the stream registry
(registry.py), admission (admission.py), the request path (segmenter.py) and the state operations
(states.py). Routes get the segmenter and the states through service/deps.py, never the registry or
the store."""
import asyncio
import logging
from concurrent.futures import Executor

from anyio import to_thread

from driftseg.service.adaptation import Served, load_pipeline
from driftseg.service.job_queues import EmbeddedQueue, RedisQueue
from driftseg.service.job_runner import JobRunner
from driftseg.service.jobs import Jobs, JobStore
from driftseg.service.metrics import Metrics
from driftseg.service.model_store import Models, ModelStore
from driftseg.service.recorder import Recorder
from driftseg.service.registry import StreamRegistry
from driftseg.service.segmenter import Segmenter
from driftseg.service.settings import Settings
from driftseg.service.states import States
from driftseg.service.store import open_store

log = logging.getLogger("driftseg.service")


class Engine:
    def __init__(self, settings: Settings, served: Served, metrics: Metrics, model_thread: Executor | None = None):
        self.settings, self.served, self.metrics = settings, served, metrics
        self.fingerprint, self.method, self.device = served.fingerprint, served.method, served.pipeline.device
        self.store = open_store(settings, served.fingerprint, served.method)
        self.models = Models(served, ModelStore(settings.models_dir), settings.max_models,
                             lambda checkpoint: load_pipeline(settings, checkpoint), settings.checkpoint,
                             refusal=settings.binding_refusal)
        self.registry = StreamRegistry(self.store, lambda model: self.models.get(model).pipeline.new_state(),
                                       settings.max_streams,
                                       settings.snapshot_every, on_write=metrics.snapshots.inc,
                                       ttl=settings.state_ttl, max_stored=settings.max_stored_streams)
        self.recorder = (Recorder(settings.recordings, settings.record, settings.record_max_frames,
                                  settings.record_max_bytes) if settings.record != "off" else None)
        self.states = States(self.models, self.registry, settings.max_streams, self.recorder)
        jobs = JobStore(settings.jobs_folder)
        if settings.job_queue == "embedded":
            queue = EmbeddedQueue(jobs, JobRunner(settings, jobs, self.models.store, bind=self.states.bind,
                                                  on_outcome=lambda outcome: metrics.adaptation_jobs.labels(outcome).inc()))
        else:
            queue = RedisQueue(settings.job_queue, jobs)
        self.jobs = Jobs(settings, self.states, self.recorder, jobs, queue)
        self.segmenter = Segmenter(settings, self.models, self.registry, metrics, model_thread, self.recorder,
                                   after_recorded=self.jobs.after_recorded if settings.auto_adapt else None)
        self.ready = False
        metrics.model_loaded(served.fingerprint, served.method, settings.engine)

    @classmethod
    def load(cls, settings: Settings, metrics: Metrics, model_thread: Executor | None = None) -> "Engine":
        """Load the checkpoint, build the pipeline and warm it up (blocking; the lifespan runs it in
        `model_thread`, the thread the batcher then runs the network in, see service/batcher.py)."""
        engine = cls(settings, load_pipeline(settings), metrics, model_thread)
        engine.warm_up()
        return engine

    def warm_up(self) -> None:
        self.segmenter.warm_up()

    async def start(self) -> None:
        await self.registry.open()
        self.segmenter.batcher.start()
        await self.jobs.start()
        self._store_watch = asyncio.get_running_loop().create_task(self._watch_store())

    async def stop(self) -> int:
        """Stop serving frames and snapshot every stream whose state changed; the number written."""
        self._store_watch.cancel()
        await self.jobs.stop()
        await self.segmenter.batcher.stop()
        return await self.registry.flush()

    async def _watch_store(self) -> None:
        """While the state store is down, try it every few seconds; once it answers, write every stream
        whose state changed meanwhile (the registry kept them in memory). While it is up, delete the
        snapshots past their retention (DRIFTSEG_STATE_TTL, DRIFTSEG_MAX_STORED_STREAMS), and recordings
        not written to for DRIFTSEG_STATE_TTL."""
        while True:
            await asyncio.sleep(self.settings.store_retry_seconds)
            try:
                if not self.store.healthy and await to_thread.run_sync(self.store.ping):
                    log.info("state store back: %d stream snapshot(s) caught up", await self.registry.flush())
                if self.store.healthy:
                    await self.registry.prune()
                if self.recorder is not None:
                    await to_thread.run_sync(self.recorder.prune, self.settings.state_ttl)
            except Exception:  # the watcher must outlive whatever one attempt ran into
                log.exception("state store catch-up failed; trying again in %s s", self.settings.store_retry_seconds)

    def readiness(self) -> dict:
        """What GET /readyz answers once the model is loaded (service.schemas.Readiness): degraded,
        still ready, while the state store is down (frames are served and states kept in memory)."""
        detail = None if self.store.healthy else f"degraded: state store {self.store.location} unavailable"
        return {"ready": self.ready, "checkpoint": self.fingerprint, "method": self.method, "device": str(self.device),
                "engine": self.settings.engine, "compiled": self.settings.compile,
                "precision": self.settings.precision, "detail": detail}

"""Where adaptation jobs run (DRIFTSEG_JOB_QUEUE); what a job does is service/job_runner.py.

`embedded` (the default): in the server, one at a time, its children niced, binding the stream in
process. A server that starts queues again the jobs that were queued or running when it stopped (training
goes on from its state file), so a restart never loses a job. Written by hand over asyncio: one worker in
one process, which a job-queue library would only wrap.

`redis://host:port/db`: on `driftseg worker` processes on other machines, through RQ (python-rq) on a Redis.
RQ rather than Kubernetes Jobs or Celery: the deployment runs Redis already (the stream snapshots'), RQ
needs nothing else and no credentials to the cluster, keeps jobs across restarts of servers and workers,
and finds a job whose worker died (its heartbeat stops) and queues it again. The server copies the frames
a job takes into the jobs folder (DRIFTSEG_JOBS_DIR) and the parent into the model store
(DRIFTSEG_MODEL_STORE): both must be volumes that servers and workers share. A worker runs one job at a
time, writes the promoted model into the store and binds the stream through the service
(DRIFTSEG_SERVICE_URL, the router, which takes the request to the stream's replica: PUT
/adaptation/model, with DRIFTSEG_API_KEY). A worker that dies mid-job: the job is queued again up to
RETRIES times, then marked failed; never lost."""
import argparse
import asyncio
import logging
import os
import sys
import tempfile
import time

from anyio import to_thread

from driftseg.service.errors import NotReady
from driftseg.service.job_runner import JobRunner
from driftseg.service.jobs import ACTIVE, Job, JobStore
from driftseg.service.model_store import ModelStore

log = logging.getLogger("driftseg.service")

QUEUE_NAME = "driftseg-jobs"
RETRIES = 2  # times a job whose worker died is queued again
SECONDS_PER_ITER = 30  # RQ's timeout of a job: generous for a CPU (about 3 s an iteration on 2 cores)
BIND_ATTEMPTS = 5


class EmbeddedQueue:
    def __init__(self, store: JobStore, runner: JobRunner):
        self.store, self.runner = store, runner
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._worker: asyncio.Task | None = None

    async def start(self) -> None:
        for job in self.store.all():
            if job.status in ACTIVE:
                job.status, job.message = "queued", "queued again after a restart of the server"
                self.store.write(job)
                self._queue.put_nowait(job.id)
        self._worker = asyncio.get_running_loop().create_task(self._work(), name="driftseg-jobs")

    async def stop(self) -> None:
        """Stop the worker and the child it runs; a job in flight stays `running` on disk and is queued
        again when a server starts on this jobs folder."""
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)

    async def put(self, job: Job) -> None:
        self._queue.put_nowait(job.id)

    async def _work(self) -> None:
        while True:
            await self.runner.run(await self._queue.get())


class RedisQueue:
    """Jobs put on RQ's queue QUEUE_NAME for `driftseg worker` to take."""

    def __init__(self, url: str, store: JobStore):
        from redis import Redis
        from rq import Queue

        self.store = store
        self.connection = Redis.from_url(url)
        self.queue = Queue(QUEUE_NAME, connection=self.connection)

    async def start(self) -> None:
        """Put on the queue again the active jobs RQ does not know (a server that stopped between writing a
        job's record and queueing it, or a Redis that lost its data)."""
        from rq.job import Job as RQJob

        for job in self.store.all():
            if job.status in ACTIVE and not await to_thread.run_sync(RQJob.exists, job.id, self.connection):
                log.info("adaptation job %s is not in the Redis queue: queued again", job.id)
                await self.put(job)

    async def stop(self) -> None:
        self.connection.close()

    async def put(self, job: Job) -> None:
        """Queue the job; NotReady (503) if Redis cannot be reached: the job is then failed, saying so."""
        from redis.exceptions import RedisError
        from rq import Callback, Retry

        try:
            await to_thread.run_sync(lambda: self.queue.enqueue(
                run_queued, job.id, job_id=job.id, job_timeout=600 + SECONDS_PER_ITER * job.iters,
                retry=Retry(max=RETRIES), on_failure=Callback(queued_job_failed), result_ttl=0, failure_ttl=7 * 86400))
        except RedisError as e:
            job.status, job.message = "failed", f"the job queue could not be reached: {e}"
            self.store.write(job)
            raise NotReady(f"the job queue (DRIFTSEG_JOB_QUEUE) could not be reached ({e}): try again later") from None


# the worker's side: RQ imports and calls these in the process that runs the job


def run_queued(job_id: str) -> str:
    """A job taken from the queue by `driftseg worker`: its status at the end."""
    settings = _worker_settings()
    store = JobStore(settings.jobs_folder)
    runner = JobRunner(settings, store, ModelStore(settings.models_dir),
                       bind=lambda stream, sha: to_thread.run_sync(bind_through_service, settings, stream, sha),
                       on_outcome=lambda outcome: _outcomes().labels(outcome).inc())
    return asyncio.run(runner.run(job_id)).status


def queued_job_failed(rq_job, connection, kind, value, traceback) -> None:
    """RQ's failure callback: a job whose worker died (or that broke outside the runner) is queued again
    while RQ retries it, failed once it gives up."""
    store = JobStore(_worker_settings().jobs_folder)
    job = store.read(rq_job.id)
    if job.status not in ACTIVE:
        return
    if rq_job.retries_left:
        job.status, job.message = "queued", f"queued again: {getattr(kind, '__name__', kind)} on the worker running it"
    else:
        job.status, job.message = "failed", f"gave up after {RETRIES + 1} tries: {getattr(kind, '__name__', kind)}"
        _outcomes().labels("failed").inc()
    store.write(job)


def bind_through_service(settings, stream: str, sha: str) -> None:
    """PUT /adaptation/model?stream=ID at DRIFTSEG_SERVICE_URL, tried again on a 5xx or a broken connection."""
    import httpx

    headers = {"X-API-Key": settings.api_key.get_secret_value()} if settings.api_key else {}
    for attempt in range(1, BIND_ATTEMPTS + 1):
        try:
            r = httpx.put(f"{settings.service_url.rstrip('/')}/adaptation/model", params={"stream": stream},
                          json={"model": sha}, headers=headers, timeout=120)
            if r.status_code < 500:
                break
            problem = f"{r.status_code} {r.text[:300]}"
        except httpx.TransportError as e:
            problem = f"{type(e).__name__}: {e}"
        log.warning("binding stream %r to %s... failed (%s), attempt %d of %d", stream, sha[:16], problem, attempt,
                    BIND_ATTEMPTS)
        time.sleep(2 ** attempt)
    else:
        raise RuntimeError(f"the service at {settings.service_url} did not bind stream {stream!r}: {problem}")
    if r.status_code != 200:
        raise RuntimeError(f"the service at {settings.service_url} refused to bind stream {stream!r} "
                           f"({r.status_code}): {r.text[:500]}")


_SETTINGS = None
_OUTCOMES = None


def _worker_settings():
    global _SETTINGS
    if _SETTINGS is None:
        from driftseg.service.settings import Settings

        _SETTINGS = Settings()
    return _SETTINGS


def _outcomes():
    """driftseg_adaptation_jobs_total{outcome} of this worker (prometheus_client's multiprocess mode: RQ runs
    each job in a forked child, the metrics server in the worker)."""
    global _OUTCOMES
    if _OUTCOMES is None:
        from prometheus_client import Counter

        _OUTCOMES = Counter("driftseg_adaptation_jobs", "Adaptation jobs finished, by outcome", ["outcome"])
    return _OUTCOMES


def worker_main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="driftseg worker", description=(
        "Run adaptation jobs from the Redis job queue (DRIFTSEG_JOB_QUEUE=redis://...), one at a time, until "
        "stopped. Settings from the DRIFTSEG_* environment, as `driftseg serve` reads them: DRIFTSEG_SOURCE_DATA, "
        "DRIFTSEG_JOBS_DIR and DRIFTSEG_MODEL_STORE (shared with the servers), DRIFTSEG_SERVICE_URL, "
        "DRIFTSEG_JOB_THREADS, DRIFTSEG_API_KEY, DRIFTSEG_WORKER_METRICS_PORT."))
    p.add_argument("--burst", action="store_true", help="run the jobs queued now, then exit")
    args = p.parse_args(argv)
    # before prometheus_client is imported: the forked job processes write their counts where the server reads
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="driftseg-worker-metrics-"))
    from pydantic import ValidationError

    try:
        settings = _worker_settings()
    except ValidationError as e:
        p.exit(2, f"driftseg worker: {e}\n")
    missing = [name for name, value in (("JOB_QUEUE=redis://...", settings.job_queue != "embedded"),
                                        ("SOURCE_DATA", settings.source_data), ("SERVICE_URL", settings.service_url))
               if not value]
    if missing:
        p.exit(2, f"driftseg worker: set DRIFTSEG_{', DRIFTSEG_'.join(missing)}: a worker takes jobs from the Redis "
                  "queue, trains on the labelled source data and binds streams through the service\n")
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server
    from redis import Redis
    from rq import Queue, Worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if settings.worker_metrics_port:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        start_http_server(settings.worker_metrics_port, registry=registry)
    connection = Redis.from_url(settings.job_queue)
    worker = Worker([Queue(QUEUE_NAME, connection=connection)], connection=connection)
    worker.work(burst=args.burst, with_scheduler=False)

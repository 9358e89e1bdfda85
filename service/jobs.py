"""Adaptation jobs: a stream's recorded frames (service/recorder.py) turned into a model for that camera,
judged by a label-free gate and served to the stream only if it passes (what a job does: service/job_runner.py).

    POST /adaptation/jobs?stream=ID -> queued -> running -> promoted | rejected | failed

Asked for, a job takes the stream's recorded frames in arrival order into its folder, one in
HOLD_BACK_EVERY held back for the gate and the rest to train on, so that whoever runs it needs the jobs
folder and not the recording; its parent, the model serving the stream, is put in the model store (the
base model too) so that it is found by sha256 wherever the job runs. Then a queue (service/job_queues.py)
runs it: in the server by default, or on `driftseg worker` machines through Redis.

Each job is a JSON record in the jobs folder (DRIFTSEG_JOBS_DIR, default <state dir>/jobs; shared with the
workers at scale), written atomically at every change, with the job's own folder beside it."""
import json
import logging
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from anyio import to_thread

from driftseg.models.checkpoint import write_atomically
from driftseg.service.errors import Conflict, NotFound, Unprocessable

log = logging.getLogger("driftseg.service")

HOLD_BACK_EVERY = 5  # one recorded frame in 5 (the 5th, 10th, ...) is kept from training for the gate
MIN_FRAMES = 2 * HOLD_BACK_EVERY  # fewer recorded frames than this make no job
ACTIVE = ("queued", "running")
OUTCOMES = ("promoted", "rejected", "failed")


@dataclass
class Job:
    id: str
    stream: str
    parent: str  # sha256 of the model serving the stream when the job was asked for
    iters: int
    status: str = "queued"
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    progress: float = 0.0  # training iterations done / iters
    message: str = ""
    frames: dict = field(default_factory=dict)  # {"train": n, "held_back": n}
    report: dict | None = None  # the gate's report (service/gate.py)
    model: str | None = None  # sha256 of the candidate, once trained


class JobStore:
    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def folder(self, job_id: str) -> Path:
        return self.directory / job_id

    def write(self, job: Job) -> None:
        job.updated = time.time()
        write_atomically(self.directory / f"{job.id}.json", lambda f: f.write(json.dumps(asdict(job)).encode()))

    def read(self, job_id: str) -> Job:
        try:
            return Job(**json.loads((self.directory / f"{job_id}.json").read_text()))
        except (OSError, ValueError, TypeError):
            raise NotFound(f"job {job_id[:64]!r} is not known to this server (POST /adaptation/jobs?stream=ID starts "
                           "one)") from None

    def all(self) -> list[Job]:
        if not self.directory.is_dir():
            return []
        jobs = []
        for path in self.directory.glob("*.json"):
            try:
                jobs.append(Job(**json.loads(path.read_text())))
            except (OSError, ValueError, TypeError) as e:
                log.warning("job record %s cannot be read (%s): left alone", path, e)
        return sorted(jobs, key=lambda j: j.created)


class Jobs:
    """What the routes and the segmenter ask of jobs: start one for a stream (by request, or by itself under
    DRIFTSEG_AUTO_ADAPT) and look one up. `queue` runs them (service/job_queues.py)."""

    def __init__(self, settings, states, recorder, store: JobStore, queue):
        self.settings, self.states, self.recorder, self.store, self.queue = settings, states, recorder, store, queue
        self._last_job: dict[str, int] = {}  # stream -> when its last job was asked for (ns), for auto_adapt
        self._starting: set[str] = set()  # streams whose job is being written

    def refusal(self) -> str | None:
        """Why this server cannot start adaptation jobs, or None."""
        if self.settings.job_queue == "embedded" and self.settings.source_data is None:
            return ("adaptation jobs need the labelled source data: set DRIFTSEG_SOURCE_DATA to a folder in the "
                    "project's data layout (images/, labels/, splits.json)")
        if self.recorder is None:
            return "adaptation jobs train on a stream's recorded frames: set DRIFTSEG_RECORD to drifted or all"
        return None

    async def start(self) -> None:
        for job in self.store.all():
            self._last_job[job.stream] = max(self._last_job.get(job.stream, 0), int(job.created * 1e9))
        await self.queue.start()

    async def stop(self) -> None:
        await self.queue.stop()

    async def submit(self, stream: str) -> Job:
        refusal = self.refusal()
        if refusal:
            raise Conflict(refusal)
        summary = await self.states.summary(stream)  # NotFound for a stream this server does not hold
        active = [j for j in self.store.all() if j.stream == stream and j.status in ACTIVE]
        if active or stream in self._starting:
            where = f": GET /adaptation/jobs/{active[0].id}" if active else ""
            raise Conflict(f"stream {stream!r} has a job {active[0].status if active else 'starting'} already{where}")
        if summary["recorded_frames"] < MIN_FRAMES:
            raise Unprocessable(f"stream {stream!r} has {summary['recorded_frames']} recorded frames; a job needs at "
                                f"least {MIN_FRAMES} (DRIFTSEG_RECORD keeps them as the stream posts frames)")
        job = Job(uuid.uuid4().hex, stream, summary["model"], self.settings.adapt_iters)
        self._last_job[stream] = int(job.created * 1e9)
        self._starting.add(stream)  # from here to the record's write a second request would not see this job
        try:
            models = self.states.models
            if not models.store.path(job.parent).is_file():  # the base: stored once, found by sha256 as the others
                await to_thread.run_sync(models.store.add, models.path(job.parent),
                                         {"note": "the base model, a job's parent"})
            await to_thread.run_sync(self._take_frames, job)
            self.store.write(job)
        finally:
            self._starting.discard(stream)
        await self.queue.put(job)
        return job

    async def after_recorded(self, stream: str) -> None:
        """DRIFTSEG_AUTO_ADAPT: queue a job for the stream once it has recorded auto_adapt_frames frames
        since its last job was asked for (a rejected or failed job is tried again only on new frames)."""
        since = self._last_job.get(stream, 0)
        if self.recorder.count_since(stream, since) < self.settings.auto_adapt_frames:
            return
        self._last_job[stream] = time.time_ns()  # before any await: one job however many frames are in flight
        try:
            job = await self.submit(stream)
        except (Conflict, Unprocessable, NotFound) as e:
            log.info("stream %r: no automatic adaptation job: %s", stream, e.detail)
            return
        log.info("stream %r: adaptation job %s queued by itself (DRIFTSEG_AUTO_ADAPT)", stream, job.id)

    def get(self, job_id: str) -> Job:
        return self.store.read(job_id)

    def _take_frames(self, job: Job) -> None:
        """Copy the stream's recorded frames into the job's folder: every HOLD_BACK_EVERY-th into held_back/,
        the others into train/ (written under a temporary name, renamed when complete)."""
        source = self.recorder.folder(job.stream)
        frames = sorted(p for p in source.iterdir() if not p.name.startswith(".")) if source.is_dir() else []
        if len(frames) < MIN_FRAMES:
            raise Unprocessable(f"stream {job.stream!r} has {len(frames)} recorded frames left; a job needs {MIN_FRAMES}")
        folder = self.store.folder(job.id)
        partial = folder.with_name(f".{job.id}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        for part in ("train", "held_back"):
            (partial / part).mkdir(parents=True)
        for i, path in enumerate(frames, 1):
            shutil.copy2(path, partial / ("held_back" if i % HOLD_BACK_EVERY == 0 else "train") / path.name)
        partial.rename(folder)
        job.frames = {"train": len(frames) - len(frames) // HOLD_BACK_EVERY, "held_back": len(frames) // HOLD_BACK_EVERY}

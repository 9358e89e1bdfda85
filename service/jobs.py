"""Adaptation jobs: a stream's recorded frames (service/recorder.py) turned into a model for that camera,
judged by a label-free gate (service/gate.py) and served to the stream only if it passes.

    POST /adaptation/jobs?stream=ID -> queued -> running -> promoted | rejected | failed

A job takes the stream's recorded frames in arrival order, holds one in HOLD_BACK_EVERY back for the gate
and copies the rest into its folder; then `driftseg train self-training --target-frames` (its default
recipe) adapts the model serving the stream, with the labelled source data (DRIFTSEG_SOURCE_DATA) and
DRIFTSEG_ADAPT_ITERS iterations; the gate judges the candidate against that model; a candidate that passes
goes into the model store and the stream is bound to it (PUT /adaptation/model's path), one that does not
changes nothing. Training and gate run as child processes at the lowest CPU priority with
DRIFTSEG_JOB_THREADS threads, so that serving keeps the cores it needs; one job runs at a time.

Each job is a JSON record in `<state dir>/jobs/<id>.json`, written atomically at every change. A server
that starts finds the jobs that were queued or running when it stopped and queues them again: training
goes on from its state file (written every tenth of its iterations), so a restart loses little work and
never a job.
Written by hand over asyncio and subprocesses: the embedded queue has one worker on one machine, which a
job-queue library would only wrap (at scale, see docs/deploy.md)."""
import asyncio
import json
import logging
import os
import shutil
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from driftseg.models.checkpoint import write_atomically
from driftseg.service.errors import Conflict, NotFound, Unprocessable

log = logging.getLogger("driftseg.service")

HOLD_BACK_EVERY = 5  # one recorded frame in 5 (the 5th, 10th, ...) is kept from training for the gate
MIN_FRAMES = 2 * HOLD_BACK_EVERY  # fewer recorded frames than this make no job
ACTIVE = ("queued", "running")
OUTCOMES = ("promoted", "rejected", "failed")
LOG_TAIL = 1500  # characters of a failed child's output kept in the job's message


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
    """The embedded queue: submit, look up, and the worker that runs them one at a time."""

    def __init__(self, settings, states, recorder, on_outcome=lambda outcome: None):
        self.settings, self.states, self.recorder, self.on_outcome = settings, states, recorder, on_outcome
        self.store = JobStore(settings.state_dir / "jobs")
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._worker: asyncio.Task | None = None
        self._child: asyncio.subprocess.Process | None = None
        self._last_job: dict[str, int] = {}  # stream -> when its last job was asked for (ns), for auto_adapt

    def refusal(self) -> str | None:
        """Why this server cannot run adaptation jobs, or None."""
        if self.settings.source_data is None:
            return ("adaptation jobs need the labelled source data: set DRIFTSEG_SOURCE_DATA to a folder in the "
                    "project's data layout (images/, labels/, splits.json)")
        if self.recorder is None:
            return "adaptation jobs train on a stream's recorded frames: set DRIFTSEG_RECORD to drifted or all"
        return None

    async def start(self) -> None:
        for job in self.store.all():
            self._last_job[job.stream] = max(self._last_job.get(job.stream, 0), int(job.created * 1e9))
            if job.status in ACTIVE:
                job.status, job.message = "queued", "queued again after a restart of the server"
                self.store.write(job)
                self._queue.put_nowait(job.id)
        self._worker = asyncio.get_running_loop().create_task(self._work(), name="driftseg-jobs")

    async def stop(self) -> None:
        """Stop the worker and the child it runs; a job in flight stays `running` on disk and is queued
        again when a server starts on this state dir."""
        if self._child is not None and self._child.returncode is None:
            self._child.kill()
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)

    async def submit(self, stream: str) -> Job:
        refusal = self.refusal()
        if refusal:
            raise Conflict(refusal)
        summary = await self.states.summary(stream)  # NotFound for a stream this server does not hold
        active = [j for j in self.store.all() if j.stream == stream and j.status in ACTIVE]
        if active:
            raise Conflict(f"stream {stream!r} has a job {active[0].status} already: GET /adaptation/jobs/{active[0].id}")
        if summary["recorded_frames"] < MIN_FRAMES:
            raise Unprocessable(f"stream {stream!r} has {summary['recorded_frames']} recorded frames; a job needs at "
                                f"least {MIN_FRAMES} (DRIFTSEG_RECORD keeps them as the stream posts frames)")
        job = Job(uuid.uuid4().hex, stream, summary["model"], self.settings.adapt_iters)
        self._last_job[stream] = int(job.created * 1e9)
        self.store.write(job)
        self._queue.put_nowait(job.id)
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

    async def _work(self) -> None:
        while True:
            job = self.store.read(await self._queue.get())
            try:
                await self._run(job)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the worker outlives a job that breaks
                log.exception("adaptation job %s of stream %r failed", job.id, job.stream)
                self._finish(job, "failed", f"{type(e).__name__}: {getattr(e, 'detail', e)}")

    def _finish(self, job: Job, status: str, message: str) -> None:
        job.status, job.message = status, message
        self.store.write(job)
        self.on_outcome(status)
        log.info("adaptation job %s of stream %r: %s (%s)", job.id, job.stream, status, message)

    async def _run(self, job: Job) -> None:
        folder = self.store.folder(job.id)
        train, held_back = folder / "train", folder / "held_back"
        if not train.is_dir():  # a job queued again after a restart keeps the frames it took first
            self._split(job, train, held_back)
        job.status, job.message = "running", "training"
        self.store.write(job)
        candidate = folder / "candidate.pt"
        parent = self.states.models.path(job.parent)
        if not candidate.is_file():
            resume = candidate.with_suffix(".state.pt")
            command = ["train", "self-training", "--target-frames", str(train), "--parent", str(parent),
                       "--data", str(self.settings.source_data), "--iters", str(job.iters), "--out", str(candidate),
                       "--save-every", str(max(1, job.iters // 10)), *(["--resume", str(resume)] if resume.is_file() else [])]
            if not await self._child_run([sys.executable, "-m", "driftseg", *command], folder / "train.log",
                                         lambda: self._progress(job, candidate.with_suffix(".jsonl"))):
                return self._finish(job, "failed", "training failed: " + _tail(folder / "train.log"))
        job.progress, job.message = 1.0, "judging the candidate"
        self.store.write(job)
        report_file = folder / "gate.json"
        gate = [sys.executable, "-m", "driftseg.service.gate", "--parent", str(parent), "--candidate", str(candidate),
                "--held-back", str(held_back), "--source-data", str(self.settings.source_data), "--out", str(report_file)]
        if not await self._child_run(gate, folder / "gate.log", lambda: None):
            return self._finish(job, "failed", "the gate failed: " + _tail(folder / "gate.log"))
        job.report = json.loads(report_file.read_text())
        if not job.report["passed"]:
            failed = [name for name, check in job.report["checks"].items() if not check["passed"]]
            return self._finish(job, "rejected", f"the candidate failed the gate's checks: {', '.join(failed)}")
        job.model = self.states.models.store.add(candidate, {"parent": job.parent, "stream": job.stream, "job": job.id,
                                                            "gate": job.report["checks"]})
        await self.states.bind(job.stream, job.model)
        self._finish(job, "promoted", f"stream {job.stream!r} is served by model {job.model[:16]}...")

    def _split(self, job: Job, train: Path, held_back: Path) -> None:
        frames = sorted(self.recorder.folder(job.stream).iterdir()) if self.recorder.folder(job.stream).is_dir() else []
        frames = [p for p in frames if not p.name.startswith(".")]
        if len(frames) < MIN_FRAMES:
            raise Unprocessable(f"stream {job.stream!r} has {len(frames)} recorded frames left; a job needs {MIN_FRAMES}")
        for folder in (train, held_back):
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
        for i, path in enumerate(frames, 1):
            shutil.copy2(path, (held_back if i % HOLD_BACK_EVERY == 0 else train) / path.name)
        job.frames = {"train": len(frames) - len(frames) // HOLD_BACK_EVERY, "held_back": len(frames) // HOLD_BACK_EVERY}

    def _progress(self, job: Job, jsonl: Path) -> None:
        try:
            lines = jsonl.read_text().splitlines()
            done = json.loads(lines[-1]).get("iter", 0) if lines else 0
        except (OSError, ValueError):
            return
        if done / job.iters > job.progress:
            job.progress = round(done / job.iters, 3)
            self.store.write(job)

    async def _child_run(self, command: list[str], log_file: Path, on_tick) -> bool:
        """Run a child at the lowest CPU priority with the job's thread cap, its output into `log_file`,
        calling `on_tick` every second; whether it succeeded."""
        threads = str(self.settings.job_threads)
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        with open(log_file, "ab") as out:
            self._child = await asyncio.create_subprocess_exec(*command, stdout=out, stderr=out, env=env,
                                                               preexec_fn=lambda: os.nice(19))
            while self._child.returncode is None:
                try:
                    await asyncio.wait_for(self._child.wait(), 1.0)
                except TimeoutError:
                    on_tick()
            on_tick()
        return self._child.returncode == 0


def _tail(log_file: Path) -> str:
    try:
        return log_file.read_text(errors="replace")[-LOG_TAIL:].strip()
    except OSError:
        return "(no output)"

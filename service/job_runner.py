"""What an adaptation job does, wherever it runs (in the server's embedded queue, or in a `driftseg worker`):

    train -> gate -> (WiSE-FT -> gate) -> model store -> bind the stream

`driftseg train self-training --target-frames` (its default recipe) adapts the job's parent model to the
frames the job took from the stream's recording (service/jobs.py), with the labelled source data
(DRIFTSEG_SOURCE_DATA) for the job's iterations; the gate (service/gate.py) judges the candidate against
the parent, and where it fails, its WiSE-FT blend with the parent (halfway back: most of the gain on the
camera's frames kept, most of the loss on the source frames recovered). A candidate that passes is
calibrated on the camera's frames (`driftseg calibrate --frames`: auto's shift score then takes them as the
model's own domain instead of re-estimating its statistics there), goes into the model store, and `bind`
serves the stream with it (`promoted`); one that does not changes nothing
(`rejected`); a job that breaks is `failed`, with the end of its child's log. Training, WiSE-FT and gate
run as child processes at the lowest CPU priority (SCHED_IDLE) with DRIFTSEG_JOB_THREADS threads, so that serving on
the same machine keeps the cores it needs. A job run again (after a restart) goes on from the training's
state file, written every tenth of its iterations."""
import asyncio
import json
import logging
import os
import shutil
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from driftseg.service.jobs import Job, JobStore
from driftseg.service.model_store import ModelStore

log = logging.getLogger("driftseg.service")

LOG_TAIL = 1500  # characters of a failed child's output kept in the job's message
WISE_FT_ALPHA = 0.5  # the blend judged when the trained candidate fails the gate (training/wise_ft.py)


class ChildFailed(Exception):
    """A child process of the job (training, WiSE-FT, the gate) failed; the message ends with its log."""


class JobRunner:
    """Runs jobs of `store` one at a time; `bind(stream, sha256)` serves a stream with a promoted model and
    `on_outcome(status)` counts each job's end."""

    def __init__(self, settings, store: JobStore, models: ModelStore, bind: Callable[[str, str], Awaitable[object]],
                 on_outcome: Callable[[str], None] = lambda outcome: None):
        self.settings, self.store, self.models, self.bind, self.on_outcome = settings, store, models, bind, on_outcome
        self._child: asyncio.subprocess.Process | None = None

    async def run(self, job_id: str) -> Job:
        """Run the job to its end and record it; never raises but for cancellation (the job then stays
        `running`, to be run again)."""
        job = self.store.read(job_id)
        try:
            await self._run(job)
        except asyncio.CancelledError:
            raise
        except ChildFailed as e:
            self._finish(job, "failed", str(e))
        except Exception as e:  # whoever runs jobs outlives one that breaks
            log.exception("adaptation job %s of stream %r failed", job.id, job.stream)
            self._finish(job, "failed", f"{type(e).__name__}: {getattr(e, 'detail', e)}")
        finally:
            self.kill()
        return job

    def kill(self) -> None:
        """Kill the child process of the job in flight, if any."""
        if self._child is not None and self._child.returncode is None:
            self._child.kill()

    def _finish(self, job: Job, status: str, message: str) -> None:
        job.status, job.message = status, message
        self.store.write(job)
        self.on_outcome(status)
        log.info("adaptation job %s of stream %r: %s (%s)", job.id, job.stream, status, message)

    async def _run(self, job: Job) -> None:
        folder = self.store.folder(job.id)
        train = folder / "train"
        if not train.is_dir():
            return self._finish(job, "failed", f"the copy of the stream's recorded frames the job took is gone ({train})")
        job.status, job.message = "running", "training"
        self.store.write(job)
        parent, candidate = self.models.find(job.parent), folder / "candidate.pt"
        if not candidate.is_file():
            resume = candidate.with_suffix(".state.pt")
            await self._child_run(["train", "self-training", "--target-frames", str(train), "--parent", str(parent),
                                   "--data", str(self.settings.source_data), "--iters", str(job.iters),
                                   "--out", str(candidate), "--save-every", str(max(1, job.iters // 10)),
                                   *(["--resume", str(resume)] if resume.is_file() else [])],
                                  folder / "train.log", "training", lambda: self._progress(job, candidate.with_suffix(".jsonl")))
        job.progress, job.message = 1.0, "judging the candidate"
        self.store.write(job)
        tried = [await self._judge(job, parent, candidate, "trained")]
        if not tried[-1]["passed"]:
            job.message = f"judging the candidate's WiSE-FT blend (alpha {WISE_FT_ALPHA})"
            self.store.write(job)
            blend = folder / "candidate-wise-ft.pt"
            await self._child_run(["train", "wise-ft", "--parent", str(parent), "--adapted", str(candidate),
                                   "--alpha", str(WISE_FT_ALPHA), "--data", str(self.settings.source_data),
                                   "--out", str(blend)], folder / "wise-ft.log", "WiSE-FT")
            tried.append(await self._judge(job, parent, blend, "wise-ft"))
            candidate = blend
        job.report = {**tried[-1], "tried": tried}
        if not job.report["passed"]:
            failed = [f"{t['candidate']}: " + ", ".join(n for n, c in t["checks"].items() if not c["passed"]) for t in tried]
            return self._finish(job, "rejected", f"the candidates failed the gate's checks ({'; '.join(failed)})")
        # calibrated on the camera's frames: auto takes them as the model's own domain and leaves its statistics be
        served = folder / "camera.pt"
        shutil.copyfile(candidate, served)
        await self._child_run(["calibrate", "--checkpoint", str(served), "--frames", str(train)],
                              folder / "calibrate.log", "calibration")
        job.model = self.models.add(served, {"parent": job.parent, "stream": job.stream, "job": job.id,
                                             "candidate": job.report["candidate"], "gate": job.report["checks"],
                                             "calibrated_on": "the job's training frames"})
        await self.bind(job.stream, job.model)
        self._finish(job, "promoted", f"stream {job.stream!r} is served by model {job.model[:16]}...")

    async def _judge(self, job: Job, parent: Path, candidate: Path, name: str) -> dict:
        """The gate's report on one candidate, named `name`."""
        folder = self.store.folder(job.id)
        out = folder / f"gate-{name}.json"
        await self._child_run(["-m", "driftseg.service.gate", "--parent", str(parent), "--candidate", str(candidate),
                               "--held-back", str(folder / "held_back"), "--source-data", str(self.settings.source_data),
                               "--out", str(out)], folder / "gate.log", "the gate", module=True)
        return {"candidate": name, **json.loads(out.read_text())}

    def _progress(self, job: Job, jsonl: Path) -> None:
        try:
            lines = jsonl.read_text().splitlines()
            done = json.loads(lines[-1]).get("iter", 0) if lines else 0
        except (OSError, ValueError):
            return
        if done / job.iters > job.progress:
            job.progress = round(done / job.iters, 3)
            self.store.write(job)

    async def _child_run(self, args: list[str], log_file: Path, what: str, on_tick=lambda: None,
                         module: bool = False) -> None:
        """Run `python -m driftseg ARGS` (or `python ARGS` if `module`) at the lowest CPU priority with the
        job's thread cap, its output into `log_file`, calling `on_tick` every second; ChildFailed if it fails."""
        threads = str(self.settings.job_threads)
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        command = [sys.executable, *(args if module else ["-m", "driftseg", *args])]
        with open(log_file, "ab") as out:
            self._child = await asyncio.create_subprocess_exec(*command, stdout=out, stderr=out, env=env,
                                                               preexec_fn=lowest_priority)
            while self._child.returncode is None:
                try:
                    await asyncio.wait_for(self._child.wait(), 1.0)
                except TimeoutError:
                    on_tick()
            on_tick()
        if self._child.returncode != 0:
            raise ChildFailed(f"{what} failed: {_tail(log_file)}")


def lowest_priority() -> None:
    """This process on the CPU only when nothing else wants it: SCHED_IDLE where the OS has it (Linux), which
    yields at once to a woken serving thread, where nice 19 still takes its share of a time slice (measured:
    the p95 latency of 4 cameras 1.35x with a niced job beside them); nice 19 elsewhere."""
    if hasattr(os, "SCHED_IDLE"):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    else:
        os.nice(19)


def _tail(log_file: Path) -> str:
    try:
        return log_file.read_text(errors="replace")[-LOG_TAIL:].strip()
    except OSError:
        return "(no output)"

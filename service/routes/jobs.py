"""Adaptation jobs: start one for a stream, follow it (service/jobs.py)."""
from typing import Annotated

from fastapi import APIRouter, Path

from driftseg.service.deps import JobsDep, ReadAccess, StreamId, WriteAccess
from driftseg.service.openapi import KEY, KEY_EVERYWHERE, NOT_READY, errors
from driftseg.service.schemas import JobInfo, JobQueued

router = APIRouter(tags=["adaptation jobs"])


@router.post("/adaptation/jobs", operation_id="start_adaptation_job", status_code=202, response_model=JobQueued,
             responses=errors({401: (KEY, "key missing", "key wrong"),
                               404: ("the stream is not held", "stream not held"),
                               409: ("the server cannot run jobs (no source data, recording off), or the stream has "
                                     "a job queued or running", "no source data", "job active"),
                               422: ("an invalid stream id, too few recorded frames, or no stream named where the "
                                     "server requires one", "invalid stream id", "too few frames", "stream not named"),
                               503: (NOT_READY, "not ready")}))
async def start_job(_access: WriteAccess, jobs: JobsDep, stream: StreamId) -> JobQueued:
    """Queue an adaptation job for the stream: self-training on its recorded frames from the model serving
    it, judged by the label-free gate, promoted to serve the stream only if it passes. Answers at once;
    GET /adaptation/jobs/{id} follows it."""
    job = await jobs.submit(stream)
    return JobQueued(id=job.id, status=job.status)


@router.get("/adaptation/jobs/{job_id}", operation_id="get_adaptation_job", response_model=JobInfo,
            responses=errors({401: (KEY_EVERYWHERE, "key missing", "key wrong"),
                              404: ("no job of that id", "job not known"),
                              422: ("an invalid job id", "invalid parameter"),
                              503: (NOT_READY, "not ready")}))
async def get_job(_access: ReadAccess, jobs: JobsDep,
                  job_id: Annotated[str, Path(pattern="^[0-9a-f]{32}$", description="the id POST answered")]) -> dict:
    """A job's status (queued, running, promoted, rejected, failed), progress, the frames it trained on and
    held back, the gate's report with every figure, and the model it promoted."""
    return jobs.get(job_id).__dict__

"""Adaptation jobs through the Redis job queue (service/job_queues.py): a `driftseg serve` that records and
queues, without the source data, and a `driftseg worker` that has it, sharing the jobs folder and the model
store, a real redis-server between them; the worker binds the stream through the server. And what RQ's
failure callback makes of a job whose worker died. Needs Debian's redis-server; skipped without it."""
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import httpx
import pytest
from PIL import Image

from driftseg.data.folder import resolve_data_dir
from driftseg.service import job_queues
from driftseg.service.errors import NotReady
from driftseg.service.jobs import MIN_FRAMES, Job, JobStore
from service_util import REPO, RedisServer, free_port, start, stop

TIMEOUT = 600


@pytest.fixture
def redis_url(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server (apt install redis-server)")
    server = RedisServer(free_port(), tmp_path).start()
    yield server.url
    server.stop()


def dusk_jpegs(tmp_path) -> list[bytes]:
    data = resolve_data_dir(None)
    if not (data / "splits.json").is_file():
        pytest.skip("needs CamVid")
    out = []
    for name in json.loads((data / "splits.json").read_text())["target_dusk"][:MIN_FRAMES]:
        path = tmp_path / f"{name}.jpg"
        Image.open(data / "images" / f"{name}.jpg").convert("RGB").resize((96, 72)).save(path)
        out.append(path.read_bytes())
    return out


@pytest.mark.slow
def test_a_worker_takes_the_job_from_redis_and_binds_the_stream_through_the_server(redis_url, ckpt_file, tmp_path):
    shared = {"DRIFTSEG_JOB_QUEUE": redis_url, "DRIFTSEG_JOBS_DIR": str(tmp_path / "jobs"),
              "DRIFTSEG_MODEL_STORE": str(tmp_path / "models"), "DRIFTSEG_CHECKPOINT": str(ckpt_file)}
    proc, client = start(tmp_path / "state", tmp_path / "serve.log", DRIFTSEG_RECORD="all", DRIFTSEG_ADAPT_ITERS="2",
                         DRIFTSEG_MAX_IMAGE_PIXELS="100000", **shared)
    worker = None
    try:
        for frame in dusk_jpegs(tmp_path):
            r = client.post("/segment?format=json", content=frame, headers={"Content-Type": "image/jpeg",
                                                                            "X-Stream-Id": "cam1"})
            assert r.status_code == 200, r.text
        before = client.get("/adaptation/state", params={"stream": "cam1"}).json()
        r = client.post("/adaptation/jobs", params={"stream": "cam1"})
        assert r.status_code == 202, r.text  # the server has no source data: the worker does
        job_id = r.json()["id"]
        time.sleep(1)
        assert client.get(f"/adaptation/jobs/{job_id}").json()["status"] == "queued"  # nobody runs it in the server

        metrics_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTSEG_")}
        env.update(shared, DRIFTSEG_SOURCE_DATA=str(resolve_data_dir(None)), DRIFTSEG_SERVICE_URL=str(client.base_url),
                   DRIFTSEG_WORKER_METRICS_PORT=str(metrics_port), DRIFTSEG_STATE_DIR=str(tmp_path / "worker-state"),
                   DRIFTSEG_DEVICE="cpu")
        with open(tmp_path / "worker.log", "ab") as out:
            worker = subprocess.Popen([sys.executable, "-m", "driftseg", "worker"], cwd=REPO, env=env, stdout=out,
                                      stderr=subprocess.STDOUT)
        deadline = time.monotonic() + TIMEOUT
        while (job := client.get(f"/adaptation/jobs/{job_id}").json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline and worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            time.sleep(1)
        assert job["status"] in ("promoted", "rejected"), (job, (tmp_path / "worker.log").read_text()[-3000:])
        after = client.get("/adaptation/state", params={"stream": "cam1"}).json()
        if job["status"] == "promoted":  # bound by the worker, through the server
            assert after["model"] == job["model"] != before["model"] and (tmp_path / "models" / f"{job['model']}.pt").is_file()
        else:
            assert after["model"] == before["model"]
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
        assert f'driftseg_adaptation_jobs_total{{outcome="{job["status"]}"}} 1.0' in metrics
    finally:
        if worker is not None:  # RQ's warm shutdown; a signal that lands as it goes idle waits out its poll,
            worker.send_signal(signal.SIGTERM)  # which a second signal (RQ's cold shutdown) cuts short
            try:
                worker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.send_signal(signal.SIGTERM)
                worker.wait(timeout=30)
        stop(proc)
        client.close()


def test_a_job_whose_worker_died_is_queued_again_then_failed(tmp_path, ckpt_file, monkeypatch):
    monkeypatch.setenv("DRIFTSEG_JOBS_DIR", str(tmp_path / "jobs"))
    monkeypatch.setenv("DRIFTSEG_CHECKPOINT", str(ckpt_file))
    monkeypatch.setattr(job_queues, "_SETTINGS", None)
    store = JobStore(tmp_path / "jobs")
    store.write(Job("c" * 32, "cam1", "0" * 64, 2, status="running"))
    died = SimpleNamespace(id="c" * 32, retries_left=1)
    job_queues.queued_job_failed(died, None, type("AbandonedJobError", (Exception,), {}), None, None)
    assert store.read("c" * 32).status == "queued" and "AbandonedJobError" in store.read("c" * 32).message
    job_queues.queued_job_failed(SimpleNamespace(id="c" * 32, retries_left=0), None, RuntimeError, None, None)
    assert store.read("c" * 32).status == "failed" and "gave up" in store.read("c" * 32).message
    store.write(Job("d" * 32, "cam1", "0" * 64, 2, status="promoted"))
    job_queues.queued_job_failed(SimpleNamespace(id="d" * 32, retries_left=0), None, RuntimeError, None, None)
    assert store.read("d" * 32).status == "promoted"  # an ended job stays as it ended


def test_a_job_that_cannot_be_queued_is_a_503_and_failed(tmp_path):
    store = JobStore(tmp_path / "jobs")
    job = Job("f" * 32, "cam1", "0" * 64, 2)
    store.write(job)
    queue = job_queues.RedisQueue(f"redis://127.0.0.1:{free_port()}/0", store)  # nothing listens there
    with pytest.raises(NotReady, match="DRIFTSEG_JOB_QUEUE"):
        asyncio.run(queue.put(job))
    assert store.read(job.id).status == "failed" and "could not be reached" in store.read(job.id).message

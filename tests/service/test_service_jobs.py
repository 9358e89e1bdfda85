"""Adaptation jobs through the app (service/jobs.py, service/gate.py): a tiny budget on the tiny checkpoint
with real CamVid frames and source data; the lifecycle, the gate's figures, promotion or not, refusals, a
failing job that leaves the stream as it was, and jobs found again after a restart."""
import asyncio
import io
import json
import math
import os
import subprocess
import sys
import time

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from driftseg.bench import loop
from driftseg.data.folder import FrameFolder, resolve_data_dir
from driftseg.service.app import create_app
from driftseg.service.gate import frozen_figures
from driftseg.models.checkpoint import load_checkpoint
from driftseg.service.job_runner import JobRunner, lowest_priority
from driftseg.service.jobs import MIN_FRAMES, Job, JobStore
from driftseg.service.model_store import ModelStore

TIMEOUT = 600  # seconds a tiny job may take on a busy 2-core machine


@pytest.fixture(scope="module")
def dusk_frames() -> list[bytes]:
    data = resolve_data_dir(None)
    if not (data / "splits.json").is_file():
        pytest.skip("needs CamVid")
    names = json.loads((data / "splits.json").read_text())["target_dusk"][:MIN_FRAMES]
    out = []
    for name in names:
        buf = io.BytesIO()
        Image.open(data / "images" / f"{name}.jpg").convert("RGB").resize((96, 72)).save(buf, format="JPEG")
        out.append(buf.getvalue())
    return out


def post(client, stream: str, frame: bytes) -> None:
    r = client.post("/segment?format=json", content=frame, headers={"Content-Type": "image/jpeg", "X-Stream-Id": stream})
    assert r.status_code == 200, r.text


def wait_for(client, job_id: str) -> dict:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        job = client.get(f"/adaptation/jobs/{job_id}").json()
        if job["status"] not in ("queued", "running"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {job['status']} after {TIMEOUT} s: {job}")


def job_settings(make_settings, **overrides):
    values = dict(record="all", source_data=resolve_data_dir(None), adapt_iters=2, job_threads=1)
    return make_settings(**{**values, **overrides})


def test_frozen_figures_against_a_direct_computation() -> None:
    class Constant(torch.nn.Module):  # the same logits at every pixel: class 2 ahead of the others by log 3
        def forward(self, x):
            logits = torch.zeros(x.shape[0], 4, *x.shape[2:])
            logits[:, 2] = math.log(3.0)
            return logits

    figures = frozen_figures(Constant(), torch.zeros(3, 3, 5, 7, dtype=torch.uint8), 4)
    p = torch.tensor([1.0, 1.0, 3.0, 1.0]) / 6
    assert figures["entropy"] == pytest.approx(float(-(p * p.log()).sum()), rel=1e-5)
    assert figures["classes"] == [0.0, 0.0, 1.0, 0.0]


@pytest.mark.slow
def test_a_job_trains_on_the_recording_and_the_gate_decides(make_settings, dusk_frames, ckpt_file):
    with TestClient(create_app(job_settings(make_settings))) as client:
        for frame in dusk_frames:
            post(client, "cam1", frame)
        before = client.get("/adaptation/state", params={"stream": "cam1"}).json()
        r = client.post("/adaptation/jobs", params={"stream": "cam1"})
        assert r.status_code == 202 and r.json()["status"] == "queued", r.text
        again = client.post("/adaptation/jobs", params={"stream": "cam1"})
        assert again.status_code == 409 and r.json()["id"] in again.json()["detail"]  # one job a stream at a time
        job = wait_for(client, r.json()["id"])
        assert job["status"] in ("promoted", "rejected"), job
        assert job["frames"] == {"train": MIN_FRAMES - MIN_FRAMES // 5, "held_back": MIN_FRAMES // 5}
        assert job["progress"] == 1.0 and job["parent"] == before["model"]
        checks = job["report"]["checks"]
        assert set(checks) == {"source", "held_back_entropy", "held_back_classes"}
        assert checks["source"]["loss"] == pytest.approx(checks["source"]["parent_miou"] - checks["source"]["candidate_miou"],
                                                         abs=0.011)
        assert job["report"]["passed"] == all(c["passed"] for c in checks.values()) == (job["status"] == "promoted")
        tried = job["report"]["tried"]  # the trained candidate, then its WiSE-FT blend only if it failed
        assert [t["candidate"] for t in tried] == (["trained"] if tried[0]["passed"] else ["trained", "wise-ft"])
        assert tried[-1]["checks"] == checks
        after = client.get("/adaptation/state", params={"stream": "cam1"}).json()
        if job["status"] == "promoted":
            assert after["model"] == job["model"] != before["model"] and after["previous_models"] == [before["model"]]
        else:
            assert after["model"] == before["model"] and after["frames"] == before["frames"]
        metrics = client.get("/metrics").text
        assert f'driftseg_adaptation_jobs_total{{outcome="{job["status"]}"}} 1.0' in metrics


def test_jobs_are_refused_with_the_reason(make_settings, dusk_frames, tmp_path):
    with TestClient(create_app(job_settings(make_settings, source_data=None))) as client:
        post(client, "cam1", dusk_frames[0])
        r = client.post("/adaptation/jobs", params={"stream": "cam1"})
        assert r.status_code == 409 and "DRIFTSEG_SOURCE_DATA" in r.json()["detail"]
    with TestClient(create_app(job_settings(make_settings, record="off", state_dir=tmp_path / "off"))) as client:
        post(client, "cam1", dusk_frames[0])
        r = client.post("/adaptation/jobs", params={"stream": "cam1"})
        assert r.status_code == 409 and "DRIFTSEG_RECORD" in r.json()["detail"]
    with TestClient(create_app(job_settings(make_settings, state_dir=tmp_path / "few"))) as client:
        assert client.post("/adaptation/jobs", params={"stream": "nobody"}).status_code == 404
        post(client, "cam1", dusk_frames[0])
        r = client.post("/adaptation/jobs", params={"stream": "cam1"})
        assert r.status_code == 422 and f"at least {MIN_FRAMES}" in r.json()["detail"]
        assert client.get(f"/adaptation/jobs/{'0' * 32}").status_code == 404
        assert client.get("/adaptation/jobs/nonsense").status_code == 422


def test_a_failing_job_leaves_the_stream_as_it_was(make_settings, dusk_frames, tmp_path):
    (tmp_path / "no-data").mkdir()  # not a data folder: the training child fails at once
    with TestClient(create_app(job_settings(make_settings, source_data=tmp_path / "no-data"))) as client:
        for frame in dusk_frames:
            post(client, "cam1", frame)
        before = client.get("/adaptation/state", params={"stream": "cam1"}).json()
        job = wait_for(client, client.post("/adaptation/jobs", params={"stream": "cam1"}).json()["id"])
        assert job["status"] == "failed" and "training failed" in job["message"], job
        after = client.get("/adaptation/state", params={"stream": "cam1"}).json()
        assert (after["model"], after["frames"], after["layers"]) == (before["model"], before["frames"], before["layers"])
        assert 'driftseg_adaptation_jobs_total{outcome="failed"} 1.0' in client.get("/metrics").text


def test_a_job_in_flight_at_a_stop_is_queued_again_at_the_start(make_settings, tmp_path):
    settings = job_settings(make_settings)
    store = JobStore(settings.state_dir / "jobs")
    store.write(Job("a" * 32, "gone", "0" * 64, 2, status="running"))  # its server stopped mid-way
    store.write(Job("b" * 32, "gone", "0" * 64, 2, status="rejected"))
    with TestClient(create_app(settings)) as client:
        job = wait_for(client, "a" * 32)  # taken up again: it fails, the stream having no recording, but says so
        assert job["status"] == "failed" and "recorded frames" in job["message"]
        assert client.get(f"/adaptation/jobs/{'b' * 32}").json()["status"] == "rejected"  # finished jobs stay


def test_auto_adapt_queues_a_job_once_enough_frames_are_recorded_and_again_only_on_new_ones(make_settings, dusk_frames,
                                                                                         tmp_path):
    (tmp_path / "no-data").mkdir()  # the jobs fail at once: what is tested is when they are asked for
    settings = job_settings(make_settings, source_data=tmp_path / "no-data", auto_adapt=True,
                            auto_adapt_frames=MIN_FRAMES)
    store = JobStore(settings.state_dir / "jobs")
    with TestClient(create_app(settings)) as client:
        for frame in dusk_frames[:-1]:
            post(client, "cam1", frame)
        assert store.all() == []
        post(client, "cam1", dusk_frames[-1])
        [first] = store.all()
        assert first.stream == "cam1" and wait_for(client, first.id)["status"] == "failed"
        for frame in dusk_frames[:-1]:
            post(client, "cam1", frame)
        assert len(store.all()) == 1  # a failed job is tried again only once as many new frames are recorded
        post(client, "cam1", dusk_frames[-1])
        assert len(store.all()) == 2


def test_auto_adapt_needs_recording_and_source_data(make_settings) -> None:
    with pytest.raises(ValueError, match="DRIFTSEG_AUTO_ADAPT .* DRIFTSEG_RECORD"):
        job_settings(make_settings, record="off", auto_adapt=True)
    with pytest.raises(ValueError, match="DRIFTSEG_SOURCE_DATA"):
        job_settings(make_settings, source_data=None, auto_adapt=True)


@pytest.mark.slow
def test_bench_loop_runs_the_loop_through_the_server(make_settings) -> None:
    settings = job_settings(make_settings, max_image_pixels=400_000, max_image_bytes=2_000_000)
    data = resolve_data_dir(None)
    with TestClient(create_app(settings)) as client:
        result = loop.run(client, FrameFolder.open(data), "target_dusk[:10]", "target_dusk[10:12]", "source_val[:2]", "t")
        job = client.get(f"/adaptation/jobs/{result['job']['id']}").json()
        assert result["job"] == job and job["status"] in ("promoted", "rejected") and job["frames"]["train"] == 8
        served = client.get("/adaptation/state", params={"stream": "t-camera"}).json()
        assert served["model"] == (job["model"] if job["status"] == "promoted" else job["parent"])
        assert all(0 <= v <= 100 for v in [*result["score_miou"].values(), *result["check_miou"].values()])
        assert ("camera" in result["check_miou"]) == (job["status"] == "promoted")


@pytest.mark.slow
def test_a_passing_candidate_is_calibrated_on_the_camera_frames_stored_and_bound(make_settings, dusk_frames, ckpt_file,
                                                                                  tmp_path, monkeypatch):
    settings = job_settings(make_settings)
    store, models = JobStore(tmp_path / "jobs"), ModelStore(tmp_path / "models")
    parent = models.add(ckpt_file)
    job = Job("e" * 32, "cam1", parent, 2)
    for i, frame in enumerate(dusk_frames):
        folder = store.folder(job.id) / ("held_back" if i % 5 == 4 else "train")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:03d}.jpg").write_bytes(frame)
    store.write(job)
    bound = []

    async def bind(stream, sha):
        bound.append((stream, sha))

    async def judge(self, job, parent, candidate, name):  # a gate that lets the candidate through
        return {"candidate": name, "passed": True, "checks": {}}

    monkeypatch.setattr(JobRunner, "_judge", judge)
    done = asyncio.run(JobRunner(settings, store, models, bind).run(job.id))
    assert done.status == "promoted" and bound == [("cam1", done.model)] and done.model != parent
    served = load_checkpoint(models.find(done.model))
    assert served.extra["shift"]["split"] == str(store.folder(job.id) / "train") and served.extra["shift"]["frames"] == 8
    assert models.provenance(done.model)["parent"] == parent


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
def test_job_children_run_only_when_the_cpu_is_otherwise_idle() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"], preexec_fn=lowest_priority)
    try:
        assert os.sched_getscheduler(child.pid) == os.SCHED_IDLE
    finally:
        child.kill()
        child.wait()

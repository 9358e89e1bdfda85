"""`driftseg bench loop`: the self-improving loop end to end against a running server (issue 32's measure).

A camera's stream posts the first part of a drifted sequence (`--record`, `target_dusk[:31]`), which the
server records; an adaptation job (POST /adaptation/jobs) adapts a model to it and the gate decides; then
the rest of the sequence (`--score`, `target_dusk[31:]`) is posted to the same stream and scored, against a
second stream on the base model that was sent exactly the same frames. The job's model is also scored on
`--check` (`day`) beside the base, each on a fresh stream, for what it costs in the source domain. The
server must record (DRIFTSEG_RECORD=all or drifted) and have the source data (DRIFTSEG_SOURCE_DATA).

With `--load-cameras N`, what the job costs the other streams: `bench load`'s open loop (N cameras on the
base model at `--load-rate` frames/s each) for `--load-seconds` before the job, and again while it trains.
Open, not closed, loop: cameras send at their rate, and a closed loop would keep the cores busy and leave
the job, at the lowest priority, nothing to take from them.
"""
import argparse
import asyncio
import io
import time

import httpx
import numpy as np
import torch
from PIL import Image

from driftseg.bench.load import jpeg_bytes, jpeg_frames, run_level
from driftseg.bench.report import add_common_arguments, table, write_results
from driftseg.data.folder import FrameFolder
from driftseg.data.metrics import ConfusionMatrix
from driftseg.data.streams import open_stream

POLL_SECONDS = 5


def labelled_jpegs(spec: str, folder: FrameFolder) -> list[tuple[bytes, np.ndarray]]:
    return [(jpeg_bytes(image, 95), label) for image, label in open_stream(spec, folder).frames()]


def post_and_score(client: httpx.Client, stream: str, frames, folder: FrameFolder | None) -> float | None:
    """Post the frames to `stream` in order; the mIoU of the label maps the server answered (if `folder`)."""
    cm = ConfusionMatrix(len(folder.class_names), folder.ignore_index) if folder else None
    for data, label in frames:
        r = client.post("/segment", params={"format": "png"}, content=data,
                        headers={"Content-Type": "image/jpeg", "X-Stream-Id": stream})
        r.raise_for_status()
        if cm is not None:
            pred = np.array(Image.open(io.BytesIO(r.content)))
            cm.update(torch.from_numpy(label.astype(np.int64))[None], torch.from_numpy(pred.astype(np.int64))[None])
    return round(cm.miou(), 2) if cm is not None else None


def wait_for_job(client: httpx.Client, job_id: str, until=lambda job: job["status"] not in ("queued", "running")) -> dict:
    """Poll the job, printing its progress, until `until` (by default: until it has finished)."""
    start = time.monotonic()
    while True:
        job = client.get(f"/adaptation/jobs/{job_id}").raise_for_status().json()
        if until(job):
            return job
        elapsed = time.monotonic() - start
        eta = f", ETA {elapsed / job['progress'] - elapsed:.0f} s" if job["progress"] > 0 else ""
        print(f"job {job_id[:8]}: {job['status']} {job['message']}, {100 * job['progress']:.0f}% after "
              f"{elapsed:.0f} s{eta}", flush=True)
        time.sleep(POLL_SECONDS)


def load_level(load: dict, frames: list[bytes]) -> dict:
    level = asyncio.run(run_level(load["url"], load["cameras"], frames, load["seconds"], load["rate"]))
    level.pop("latency_over_run")
    return level


def run(client: httpx.Client, folder: FrameFolder, record: str, score: str, check: str, prefix: str,
        load: dict | None = None) -> dict:
    """The loop through `client` (the server's); `load` ({url, cameras, rate, seconds, stream}) times
    the other cameras too."""
    recorded, scored, checked = (labelled_jpegs(s, folder) for s in (record, score, check))
    camera, base = f"{prefix}-camera", f"{prefix}-base"
    for stream in (camera, base):
        post_and_score(client, stream, recorded, None)
    if load:
        load_frames = jpeg_frames(load["stream"], str(folder.root), 40)
        load["without_job"] = load_level(load, load_frames)
    start = time.monotonic()
    r = client.post("/adaptation/jobs", params={"stream": camera})
    if r.status_code != 202:
        raise RuntimeError(f"the server refused the job ({r.status_code}): {r.text}")
    if load:  # once training is under way (its first tenth done), the same load again
        wait_for_job(client, r.json()["id"], until=lambda job: job["progress"] > 0 or job["status"] != "running")
        load["with_job"] = load_level(load, load_frames)
        load["job_ran_throughout"] = client.get(f"/adaptation/jobs/{r.json()['id']}").json()["status"] == "running"
        for q in ("p50", "p95"):
            load[f"{q}_ratio"] = round(load["with_job"][f"{q}_ms"] / load["without_job"][f"{q}_ms"], 3)
    job = wait_for_job(client, r.json()["id"])
    seconds = round(time.monotonic() - start, 1)
    print(f"job {job['id'][:8]}: {job['status']} after {seconds} s: {job['message']}", flush=True)
    result = {"record": record, "score": score, "check": check, "job": job, "job_seconds": seconds,
              "score_miou": {"camera": post_and_score(client, camera, scored, folder),
                             "base": post_and_score(client, base, scored, folder)}}
    if load:
        result["load"] = load
    check_streams = {"base": f"{prefix}-check-base"}
    if job["status"] == "promoted":
        check_streams["camera"] = f"{prefix}-check-camera"
        client.put("/adaptation/model", params={"stream": check_streams["camera"]},
                   json={"model": job["model"]}).raise_for_status()
    result["check_miou"] = {arm: post_and_score(client, stream, checked, folder)
                            for arm, stream in check_streams.items()}
    return result


def markdown(result: dict) -> str:
    score, check = result["score_miou"], result["check_miou"]
    rows = [["camera stream (after the job)", f"{score['camera']:.1f}", f"{check['camera']:.1f}" if "camera" in check else "",
             result["job"]["status"]],
            ["base model, `auto`, same frames", f"{score['base']:.1f}", f"{check['base']:.1f}", ""]]
    rows.append(["change", f"{score['camera'] - score['base']:+.1f}",
                 f"{check['camera'] - check['base']:+.1f}" if "camera" in check else "", ""])
    report = result["job"]["report"]
    lines = [table(["stream", f"`{result['score']}` mIoU", f"`{result['check']}` mIoU", "job"], rows)]
    if report:
        lines.append("\nThe gate's checks of each candidate it judged:\n")
        lines.append(table(["candidate", "check", "passed", "figures"],
                           [[tried["candidate"], name, "yes" if c["passed"] else "no",
                             ", ".join(f"{k} {v}" for k, v in c.items() if k != "passed")]
                            for tried in report["tried"] for name, c in tried["checks"].items()]))
    if "load" in result:
        load = result["load"]
        lines.append(f"\nThe other streams' latency, {load['cameras']} cameras on the base model at {load['rate']} "
                     f"frames/s each for {load['seconds']:.0f} s, without and with the job training"
                     f"{'' if load['job_ran_throughout'] else ' (the job ended before the load did)'}:\n")
        lines.append(table(["", "frames/s", "p50 ms", "p95 ms", "p99 ms", "errors"],
                           [[name, f"{r['frames_per_s']:.1f}", f"{r['p50_ms']:.1f}", f"{r['p95_ms']:.1f}",
                             f"{r['p99_ms']:.1f}", str(r["errors"])]
                            for name, r in (("without a job", load["without_job"]), ("with a job", load["with_job"]))]
                           + [["ratio", "", f"{load['p50_ratio']:.2f}x", f"{load['p95_ratio']:.2f}x", "", ""]]))
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="driftseg bench loop", description=__doc__)
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the server's base URL")
    p.add_argument("--record", default="target_dusk[:31]", help="the frames the camera posts before its job")
    p.add_argument("--score", default="target_dusk[31:]", help="the frames posted and scored after it")
    p.add_argument("--check", default="day", help="the source-domain frames the job's model is checked on")
    p.add_argument("--prefix", default="loop", help="the stream ids' prefix")
    p.add_argument("--api-key", help="the server's DRIFTSEG_API_KEY, if it has one")
    p.add_argument("--load-cameras", type=int, help="time this many other cameras on the base model before the job "
                   "and while it trains (open loop)")
    p.add_argument("--load-rate", type=float, default=2.0, help="frames/s each load camera sends")
    p.add_argument("--load-seconds", type=float, default=60.0, help="seconds of load, without and with the job")
    p.add_argument("--load-stream", default="day", help="the frames the load cameras send (a stream spec)")
    add_common_arguments(p, checkpoint=False, device=False)
    args = p.parse_args(argv)
    try:
        load = ({"url": args.url, "cameras": args.load_cameras, "rate": args.load_rate, "seconds": args.load_seconds,
                 "stream": args.load_stream} if args.load_cameras else None)
        with httpx.Client(base_url=args.url, timeout=120,
                          headers={"X-API-Key": args.api_key} if args.api_key else {}) as client:
            result = run(client, FrameFolder.open(args.data), args.record, args.score, args.check, args.prefix, load)
    except (ValueError, KeyError, FileNotFoundError, RuntimeError, httpx.HTTPError) as e:
        p.exit(2, f"driftseg bench loop: error: {e}\n")
    text = markdown(result)
    print(text)
    if args.out:
        write_results(args.out, result, text)

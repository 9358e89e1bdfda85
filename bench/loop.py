"""`driftseg bench loop`: the self-improving loop end to end against a running server (issue 32's measure).

A camera's stream posts the first part of a drifted sequence (`--record`, `target_dusk[:31]`), which the
server records; an adaptation job (POST /adaptation/jobs) adapts a model to it and the gate decides; then
the rest of the sequence (`--score`, `target_dusk[31:]`) is posted to the same stream and scored, against a
second stream on the base model that was sent exactly the same frames. The job's model is also scored on
`--check` (`day`) beside the base, each on a fresh stream, for what it costs in the source domain. The
server must record (DRIFTSEG_RECORD=all or drifted) and have the source data (DRIFTSEG_SOURCE_DATA).
"""
import argparse
import io
import time

import httpx
import numpy as np
import torch
from PIL import Image

from driftseg.bench.report import add_common_arguments, table, write_results
from driftseg.data.folder import FrameFolder
from driftseg.data.metrics import ConfusionMatrix
from driftseg.data.streams import open_stream

POLL_SECONDS = 5


def labelled_jpegs(spec: str, folder: FrameFolder) -> list[tuple[bytes, np.ndarray]]:
    out = []
    for image, label in open_stream(spec, folder).frames():
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", quality=95)
        out.append((buf.getvalue(), label))
    return out


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


def wait_for_job(client: httpx.Client, job_id: str) -> dict:
    start = time.monotonic()
    while True:
        job = client.get(f"/adaptation/jobs/{job_id}").raise_for_status().json()
        if job["status"] not in ("queued", "running"):
            return job
        elapsed = time.monotonic() - start
        eta = f", ETA {elapsed / job['progress'] - elapsed:.0f} s" if job["progress"] > 0 else ""
        print(f"job {job_id[:8]}: {job['status']} {job['message']}, {100 * job['progress']:.0f}% after "
              f"{elapsed:.0f} s{eta}", flush=True)
        time.sleep(POLL_SECONDS)


def run(url: str, folder: FrameFolder, record: str, score: str, check: str, prefix: str, key: str | None) -> dict:
    headers = {"X-API-Key": key} if key else {}
    with httpx.Client(base_url=url, timeout=120, headers=headers) as client:
        recorded, scored, checked = (labelled_jpegs(s, folder) for s in (record, score, check))
        camera, base = f"{prefix}-camera", f"{prefix}-base"
        for stream in (camera, base):
            post_and_score(client, stream, recorded, None)
        start = time.monotonic()
        r = client.post("/adaptation/jobs", params={"stream": camera})
        if r.status_code != 202:
            raise RuntimeError(f"the server refused the job ({r.status_code}): {r.text}")
        job = wait_for_job(client, r.json()["id"])
        seconds = round(time.monotonic() - start, 1)
        print(f"job {job['id'][:8]}: {job['status']} after {seconds} s: {job['message']}", flush=True)
        result = {"record": record, "score": score, "check": check, "job": job, "job_seconds": seconds,
                  "score_miou": {"camera": post_and_score(client, camera, scored, folder),
                                 "base": post_and_score(client, base, scored, folder)}}
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
    gate = result["job"]["report"]["checks"] if result["job"]["report"] else {}
    lines = [table(["stream", f"`{result['score']}` mIoU", f"`{result['check']}` mIoU", "job"], rows)]
    if gate:
        lines.append("\nThe gate's checks:\n")
        lines.append(table(["check", "passed", "figures"],
                           [[name, "yes" if c["passed"] else "no",
                             ", ".join(f"{k} {v}" for k, v in c.items() if k != "passed")] for name, c in gate.items()]))
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="driftseg bench loop", description=__doc__)
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the server's base URL")
    p.add_argument("--record", default="target_dusk[:31]", help="the frames the camera posts before its job")
    p.add_argument("--score", default="target_dusk[31:]", help="the frames posted and scored after it")
    p.add_argument("--check", default="day", help="the source-domain frames the job's model is checked on")
    p.add_argument("--prefix", default="loop", help="the stream ids' prefix")
    p.add_argument("--api-key", help="the server's DRIFTSEG_API_KEY, if it has one")
    add_common_arguments(p, checkpoint=False, device=False)
    args = p.parse_args(argv)
    try:
        result = run(args.url, FrameFolder.open(args.data), args.record, args.score, args.check, args.prefix,
                     args.api_key)
    except (ValueError, KeyError, FileNotFoundError, RuntimeError, httpx.HTTPError) as e:
        p.exit(2, f"driftseg bench loop: error: {e}\n")
    text = markdown(result)
    print(text)
    if args.out:
        write_results(args.out, result, text)

"""`driftseg bench load`: a closed-loop load test of a running `driftseg serve`.

Each simulated camera is one stream: it sends its frames in order (480x360 JPEGs of a stream of the
data folder, each camera starting at another frame) and waits for each answer before the next. For
each number of cameras it reports the frames answered per second, the client's latency percentiles,
the server's own time per frame (the sum of its Server-Timing stages) and the errors. The cameras'
streams are reset afterwards, so a run leaves the server as it found it. With `--raw-batch B` the
same run then times the raw pipeline the server runs (its method, device, compilation and precision,
read from /readyz; the checkpoint checked against the server's) at batch B without HTTP, and each
level's throughput is also given as a share of that.
"""
import argparse
import asyncio
import io
import statistics
import time
from collections.abc import Sequence

import httpx
import numpy as np
import torch
from PIL import Image

from adapters.pipeline import Pipeline
from adapters.spec import parse_method
from bench import model
from bench.accuracy import to_tensor
from bench.data import FrameFolder
from bench.report import add_common_arguments, write_results
from bench.streams import open_stream
from models.checkpoint import file_sha256, load_checkpoint


def jpeg_frames(stream: str, data: str | None, count: int) -> list[bytes]:
    out = []
    for image, _ in open_stream(stream, FrameFolder.open(data)).frames(count):
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    if not out:
        raise ValueError(f"stream {stream!r} has no frames")
    return out


def server_ms(response: httpx.Response) -> float:
    """The sum of the Server-Timing stages (wait, decode, model, encode), in ms."""
    total = 0.0
    for part in response.headers.get("server-timing", "").split(","):
        _, _, dur = part.partition(";dur=")
        total += float(dur) if dur else 0.0
    return total


async def _camera(client: httpx.AsyncClient, stream: str, frames: list[bytes], offset: int, until: float,
                  record: dict) -> None:
    headers = {"Content-Type": "image/jpeg", "X-Stream-Id": stream}
    await client.post("/segment", content=frames[offset % len(frames)], headers=headers)  # warm, not counted
    i = offset + 1
    while time.perf_counter() < until:
        start = time.perf_counter()
        try:
            r = await client.post("/segment", content=frames[i % len(frames)], headers=headers)
        except httpx.HTTPError as e:
            record["errors"].append(type(e).__name__)
        else:
            if r.status_code == 200:
                record["latency"].append(time.perf_counter() - start)
                record["server"].append(server_ms(r))
            else:
                record["errors"].append(str(r.status_code))
        i += 1


def _percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


async def run_level(url: str, cameras: int, frames: list[bytes], duration: float) -> dict:
    record = {"latency": [], "server": [], "errors": []}
    limits = httpx.Limits(max_connections=cameras, max_keepalive_connections=cameras)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        streams = [f"load-{cameras}-{i}" for i in range(cameras)]
        start = time.perf_counter()
        await asyncio.gather(*(_camera(client, s, frames, i * 7, start + duration, record)
                               for i, s in enumerate(streams)))
        elapsed = time.perf_counter() - start
        for s in streams:
            await client.post("/adapt/reset", params={"stream": s})
    lat = record["latency"]
    if not lat:
        raise RuntimeError(f"no frame was answered with 200 at {cameras} cameras: errors {record['errors'][:5]}")
    return {"cameras": cameras, "frames": len(lat), "seconds": round(elapsed, 2),
            "frames_per_s": round(len(lat) / elapsed, 1),
            "p50_ms": round(1000 * _percentile(lat, 50), 2), "p95_ms": round(1000 * _percentile(lat, 95), 2),
            "p99_ms": round(1000 * _percentile(lat, 99), 2),
            "server_p50_ms": round(statistics.median(record["server"]), 2),
            "errors": len(record["errors"]), "error_kinds": sorted(set(record["errors"]))}


def raw_throughput(url: str, checkpoint, frame: bytes, batch: int, steps: int = 20) -> dict:
    """The frames/s of the pipeline the server at `url` runs (its method, device, compilation and
    precision, from /readyz), at `batch` frames of different streams per step, without HTTP;
    `checkpoint` must be the server's."""
    ready = httpx.get(f"{url}/readyz", timeout=30).json()
    if ready.get("checkpoint") != file_sha256(checkpoint):
        raise ValueError(f"the server serves another checkpoint than {checkpoint} (sha256 {ready.get('checkpoint')}): "
                         "pass the server's with --checkpoint")
    if ready.get("engine") != "torch":
        raise ValueError(f"--raw-batch times the torch engine, the server runs {ready.get('engine')}: "
                         "time that with `driftseg bench model --engines onnx`")
    method, device = ready["method"], torch.device(ready["device"])
    pipeline = Pipeline(load_checkpoint(checkpoint), parse_method(method), device, compile=ready["compiled"],
                        precision=ready["precision"])
    image = to_tensor(np.array(Image.open(io.BytesIO(frame)).convert("RGB")))
    timing = model.measure({method: pipeline}, image, [batch], steps)[batch][method]
    return {"method": method, "device": str(device), "compiled": ready["compiled"], "precision": ready["precision"],
            "batch": batch, **timing}


def markdown_table(levels: Sequence[dict], raw: dict | None = None) -> str:
    extra = f" x raw model (batch {raw['batch']}) |" if raw else ""
    lines = ["| cameras | frames/s | p50 ms | p95 ms | p99 ms | server p50 ms | errors |" + extra,
             "| --- | --- | --- | --- | --- | --- | --- |" + (" --- |" if raw else "")]
    lines += [f"| {r['cameras']} | {r['frames_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} "
              f"| {r['server_p50_ms']:.1f} | {r['errors']} |" + (f" {r['frames_per_s'] / raw['frames_per_s']:.2f} |" if raw else "")
              for r in levels]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="driftseg bench load", description=__doc__)
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the server's base URL")
    p.add_argument("--stream", default="day", help="the frames the cameras send (a stream spec)")
    p.add_argument("--frames", type=int, default=40, help="distinct frames, cycled")
    p.add_argument("--streams", nargs="+", type=int, default=[1, 8, 32], help="numbers of cameras, one level each")
    p.add_argument("--duration", type=float, default=20.0, help="seconds per level")
    p.add_argument("--raw-batch", type=int, help="then time the server's pipeline without HTTP at this batch size "
                   "(its DRIFTSEG_MAX_BATCH, say), in this process")
    add_common_arguments(p, device=False)
    args = p.parse_args(argv)
    try:
        frames = jpeg_frames(args.stream, args.data, args.frames)
        levels = []
        for cameras in args.streams:
            levels.append(asyncio.run(run_level(args.url, cameras, frames, args.duration)))
            print(f"{cameras} cameras: {levels[-1]['frames_per_s']} frames/s, p99 {levels[-1]['p99_ms']} ms", flush=True)
        raw = raw_throughput(args.url, args.checkpoint, frames[0], args.raw_batch) if args.raw_batch else None
    except (ValueError, KeyError, FileNotFoundError, RuntimeError, httpx.HTTPError) as e:
        p.exit(2, f"driftseg bench load: error: {e}\n")
    table = markdown_table(levels, raw)
    print(table)
    if args.out:
        write_results(args.out, {"url": args.url, "stream": args.stream, "duration_s": args.duration,
                                 "levels": levels, "raw_model": raw}, table)

"""`driftseg bench load`: a load test of a running `driftseg serve`.

Each simulated camera is one stream: it sends its frames in order (480x360 JPEGs of a stream of the
data folder, each camera starting at another frame) and waits for each answer before the next
(closed loop), or with `--rate FPS` sends a frame every 1/FPS seconds whether or not the last was
answered, as a real camera does (open loop; a frame's latency counts from when it was due, so a
server that falls behind shows it). For each number of cameras (and rate) it reports the frames
answered per second, the client's latency percentiles, the server's own time per frame (the sum of
its Server-Timing stages), the errors, and whether the level held steady: no errors, and the median
latency of the last third of the run within 1.5x that of the first third (a queue that grows makes
latency climb). Open-loop runs also plot latency over the run (a PNG beside --out). The cameras'
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

from driftseg.adapters.backends import Compiled
from driftseg.adapters.pipeline import Pipeline
from driftseg.adapters.spec import parse_method
from driftseg.bench import model
from driftseg.bench.plot import plot_latency
from driftseg.bench.report import add_common_arguments, table, write_results
from driftseg.data.folder import FrameFolder
from driftseg.data.streams import open_stream
from driftseg.data.transforms import to_tensor
from driftseg.models.checkpoint import file_sha256, load_checkpoint


def jpeg_bytes(image: np.ndarray, quality: int) -> bytes:
    """An RGB frame encoded as a camera would send it."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def jpeg_frames(stream: str, data: str | None, count: int) -> list[bytes]:
    out = [jpeg_bytes(image, 90) for image, _ in open_stream(stream, FrameFolder.open(data)).frames(count)]
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


STEADY_GROWTH = 1.5  # the last third's median latency over the first third's that still counts as steady


def _new_record() -> dict[str, list]:
    return {"latency": [], "due": [], "server": [], "errors": []}


async def _post(client: httpx.AsyncClient, stream: str, frame: bytes, due: float, start: float, record: dict) -> None:
    """One frame; on 200 its latency from `due` and its due time into the run are recorded."""
    try:
        r = await client.post("/segment", content=frame, headers={"Content-Type": "image/jpeg", "X-Stream-Id": stream})
    except httpx.HTTPError as e:
        record["errors"].append(type(e).__name__)
        return
    if r.status_code != 200:
        record["errors"].append(str(r.status_code))
        return
    record["latency"].append(time.perf_counter() - due)
    record["due"].append(due - start)
    record["server"].append(server_ms(r))


async def _closed_camera(client, stream: str, frames: list[bytes], offset: int, start: float, until: float,
                         record: dict) -> None:
    i = offset
    while time.perf_counter() < until:
        await _post(client, stream, frames[i % len(frames)], time.perf_counter(), start, record)
        i += 1


async def _open_camera(client, stream: str, frames: list[bytes], offset: int, start: float, duration: float,
                       rate: float, record: dict) -> None:
    """Frame k is due at start + k / rate and leaves then, whatever is still unanswered."""
    posts = []
    for k in range(int(duration * rate)):
        due = start + k / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        posts.append(asyncio.create_task(_post(client, stream, frames[(offset + k) % len(frames)], due, start, record)))
    await asyncio.gather(*posts)


def _percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def thirds_p50_ms(due: list[float], latency: list[float], duration: float) -> tuple[float | None, float | None]:
    """The median latency (ms) of the frames due in the first and in the last third of the run."""
    def p50(values):
        return round(1000 * statistics.median(values), 2) if values else None
    first = [lat for t, lat in zip(due, latency) if t < duration / 3]
    last = [lat for t, lat in zip(due, latency) if t >= 2 * duration / 3]
    return p50(first), p50(last)


async def run_level(url: str, cameras: int, frames: list[bytes], duration: float, rate: float | None = None,
                    transport: httpx.AsyncBaseTransport | None = None) -> dict:
    """One level: `cameras` streams for `duration` seconds, closed loop, or open loop at `rate`
    frames/s per camera."""
    record = _new_record()
    # open loop: as many connections as frames in flight, so waiting shows on the server, not in the client's pool
    limits = httpx.Limits(max_connections=None if rate else cameras, max_keepalive_connections=cameras)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits, transport=transport) as client:
        streams = [f"load-{cameras}-{i}" for i in range(cameras)]
        await asyncio.gather(*(_post(client, s, frames[i * 7 % len(frames)], 0.0, 0.0, _new_record())  # not counted
                               for i, s in enumerate(streams)))
        start = time.perf_counter()
        if rate:
            await asyncio.gather(*(_open_camera(client, s, frames, i * 7 + 1, start, duration, rate, record)
                                   for i, s in enumerate(streams)))
        else:
            await asyncio.gather(*(_closed_camera(client, s, frames, i * 7 + 1, start, start + duration, record)
                                   for i, s in enumerate(streams)))
        elapsed = time.perf_counter() - start
        for s in streams:
            await client.post("/adapt/reset", params={"stream": s})
    lat = record["latency"]
    if not lat:
        raise RuntimeError(f"no frame was answered with 200 at {cameras} cameras: errors {record['errors'][:5]}")
    first, last = thirds_p50_ms(record["due"], lat, duration)
    level = {"cameras": cameras, "rate_per_camera": rate, "offered_frames_per_s": cameras * rate if rate else None,
             "frames": len(lat), "seconds": round(elapsed, 2), "frames_per_s": round(len(lat) / elapsed, 1),
             "p50_ms": round(1000 * _percentile(lat, 50), 2), "p95_ms": round(1000 * _percentile(lat, 95), 2),
             "p99_ms": round(1000 * _percentile(lat, 99), 2),
             "server_p50_ms": round(statistics.median(record["server"]), 2),
             "errors": len(record["errors"]), "error_kinds": sorted(set(record["errors"])),
             "p50_first_third_ms": first, "p50_last_third_ms": last,
             "steady": not record["errors"] and None not in (first, last) and last <= STEADY_GROWTH * first}
    if rate:  # the picture's points: when each answered frame was due, and its latency
        level["latency_over_run"] = sorted((round(t, 3), round(1000 * x, 2)) for t, x in zip(record["due"], lat))
    return level


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
    pipeline = Pipeline(load_checkpoint(checkpoint), parse_method(method), device,
                        backend=Compiled() if ready["compiled"] else None, precision=ready["precision"])
    image = to_tensor(np.array(Image.open(io.BytesIO(frame)).convert("RGB")))
    timing = model.measure({method: pipeline}, image, [batch], steps)[batch][method]
    return {"method": method, "device": str(device), "compiled": ready["compiled"], "precision": ready["precision"],
            "batch": batch, **timing}


def markdown_table(levels: Sequence[dict], raw: dict | None = None) -> str:
    """Closed-loop levels as before; with open-loop levels, the rate sent and the steadiness too."""
    open_loop = any(r.get("rate_per_camera") for r in levels)
    head = ["cameras", *(["frames/s sent"] if open_loop else []), "frames/s", "p50 ms", "p95 ms", "p99 ms",
            "server p50 ms", "errors", *(["p50 ms first / last third", "steady"] if open_loop else []),
            *([f"x raw model (batch {raw['batch']})"] if raw else [])]
    rows = []
    for r in levels:
        cells = [str(r["cameras"])]
        if open_loop:
            cells.append(f"{r['offered_frames_per_s']:.1f}" if r.get("rate_per_camera") else "closed loop")
        cells += [f"{r['frames_per_s']:.1f}", f"{r['p50_ms']:.1f}", f"{r['p95_ms']:.1f}", f"{r['p99_ms']:.1f}",
                  f"{r['server_p50_ms']:.1f}", str(r["errors"])]
        if open_loop:
            thirds = [f"{v:.1f}" if v is not None else "-" for v in (r["p50_first_third_ms"], r["p50_last_third_ms"])]
            cells += [" / ".join(thirds), "yes" if r["steady"] else "no"]
        if raw:
            cells.append(f"{r['frames_per_s'] / raw['frames_per_s']:.2f}")
        rows.append(cells)
    return table(head, rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="driftseg bench load", description=__doc__)
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the server's base URL")
    p.add_argument("--stream", default="day", help="the frames the cameras send (a stream spec)")
    p.add_argument("--frames", type=int, default=40, help="distinct frames, cycled")
    p.add_argument("--streams", nargs="+", type=int, default=[1, 8, 32], help="numbers of cameras, one level each")
    p.add_argument("--duration", type=float, default=20.0, help="seconds per level")
    p.add_argument("--rate", type=float, nargs="+", help="frames/s per camera, sent without waiting for answers (open "
                   "loop); one level per number of cameras and rate (default: closed loop)")
    p.add_argument("--raw-batch", type=int, help="then time the server's pipeline without HTTP at this batch size "
                   "(its DRIFTSEG_MAX_BATCH, say), in this process")
    add_common_arguments(p, device=False)
    args = p.parse_args(argv)
    if args.rate and min(args.rate) <= 0:
        p.error(f"--rate takes frames/s per camera above 0, got {args.rate}")
    try:
        frames = jpeg_frames(args.stream, args.data, args.frames)
        levels = []
        for cameras in args.streams:
            for rate in args.rate or [None]:
                level = asyncio.run(run_level(args.url, cameras, frames, args.duration, rate))
                levels.append(level)
                sent = f" ({level['offered_frames_per_s']:g} frames/s sent)" if rate else ""
                print(f"{cameras} cameras{sent}: {level['frames_per_s']} frames/s, p99 {level['p99_ms']} ms, "
                      f"{'steady' if level['steady'] else 'not steady'}", flush=True)
        raw = raw_throughput(args.url, args.checkpoint, frames[0], args.raw_batch) if args.raw_batch else None
    except (ValueError, KeyError, FileNotFoundError, RuntimeError, httpx.HTTPError) as e:
        p.exit(2, f"driftseg bench load: error: {e}\n")
    table = markdown_table(levels, raw)
    print(table)
    if args.out:
        write_results(args.out, {"url": args.url, "stream": args.stream, "duration_s": args.duration,
                                 "levels": levels, "raw_model": raw}, table)
        if args.rate:
            png = args.out.with_suffix(".png")
            plot_latency(levels, png)
            print(f"wrote {png}")

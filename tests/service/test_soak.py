"""Soak and churn against a real `driftseg serve`: more camera streams than the registry holds
(every round evicts and restores states), for DRIFTSEG_SOAK_SECONDS (20 by default: the short
version CI runs; set it to 600 or more by hand), with the server's memory flat and every stream's
frame count going on across its evictions."""
import os
import statistics
import threading
import time
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from driftseg.data.folder import resolve_data_dir
from service_util import start, stop

STREAMS, MAX_STREAMS = 10, 4
SECONDS = float(os.environ.get("DRIFTSEG_SOAK_SECONDS", "20"))


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads memory from /proc")
def test_memory_stays_flat_while_streams_churn(tmp_path):
    try:
        images = sorted((resolve_data_dir(None) / "images").glob("*.jpg"))[:8]
    except FileNotFoundError as e:
        pytest.skip(str(e))
    frames = [p.read_bytes() for p in images]
    proc, client = start(tmp_path / "state", tmp_path / "serve.log", DRIFTSEG_MAX_STREAMS=str(MAX_STREAMS),
                         DRIFTSEG_SNAPSHOT_EVERY="0")
    samples: list[tuple[float, float]] = []
    counts = {f"cam{i}": [] for i in range(STREAMS)}
    errors: list[str] = []
    try:
        with closing(client):
            def camera(stream: str, until: float) -> None:
                with httpx.Client(base_url=client.base_url, timeout=30) as c:
                    i = 0
                    while time.monotonic() < until:
                        r = c.post("/segment", content=frames[i % len(frames)],
                                   headers={"Content-Type": "image/jpeg", "X-Stream-Id": stream})
                        if r.status_code == 200:
                            counts[stream].append(int(r.headers["X-Frame-Index"]))
                        else:
                            errors.append(f"{r.status_code} {r.text[:100]}")
                        i += 1

            start_time = time.monotonic()
            until = start_time + SECONDS
            threads = [threading.Thread(target=camera, args=(s, until), daemon=True) for s in counts]
            for t in threads:
                t.start()
            while time.monotonic() < until:
                samples.append((time.monotonic() - start_time, rss_mib(proc.pid)))
                time.sleep(0.5)
            for t in threads:
                t.join(60)
            streams = client.get("/adaptation/streams").json()
    finally:
        stop(proc)

    warm = [m for t, m in samples if t >= SECONDS / 4]  # after the first quarter: allocator warmed up
    third = max(1, len(warm) // 3)
    early, late = statistics.median(warm[:third]), statistics.median(warm[-third:])
    print(f"\n{STREAMS} streams, registry of {MAX_STREAMS}, {SECONDS:.0f} s: "
          f"{sum(map(len, counts.values()))} frames, RSS median {early:.0f} MiB early, {late:.0f} MiB late "
          f"(peak {max(warm):.0f}: batches of several frames come and go), {streams['on_disk']} snapshots on disk")
    assert not errors, errors[:3]
    for stream, seen in counts.items():
        assert seen and seen == list(range(1, len(seen) + 1)), stream  # restored after every eviction
    assert streams["in_memory"] <= MAX_STREAMS + 1 and streams["on_disk"] >= STREAMS - MAX_STREAMS
    assert late - early < 0.05 * early + 50  # flat: no growth with frames or churn

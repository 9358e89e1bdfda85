"""Two `driftseg serve` replicas behind nginx hashing the stream id (consistent), snapshots in a shared
redis-server; camera streams flowing; one replica killed with SIGKILL mid-stream. Its streams go on
on the other replica from their last snapshots (frame counts continue, no reset to the source), only
the requests in flight at the kill fail, each with a 502/503 that the client helper retries.
Needs Debian's nginx and redis-server (`apt install nginx redis-server`); skipped without them."""
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from driftseg.data.folder import resolve_data_dir
from service_util import RedisServer, free_port, start

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("nginx") is None or shutil.which("redis-server") is None,
                       reason="needs nginx and redis-server (apt install nginx redis-server)"),
]
STREAMS = [f"cam{i}" for i in range(12)]
FRAMES_BEFORE_KILL, FRAMES_IN_ALL, SNAPSHOT_EVERY = 5, 12, 2
RETRIED = (502, 503)

NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  map $http_x_stream_id $stream_key {{ "" $arg_stream; default $http_x_stream_id; }}
  upstream driftseg {{
    hash $stream_key consistent;
    server 127.0.0.1:{a} max_fails=1 fail_timeout=30s;
    server 127.0.0.1:{b} max_fails=1 fail_timeout=30s;
  }}
  server {{
    listen 127.0.0.1:{port};
    client_max_body_size 20m;
    client_body_buffer_size 1m;
    location / {{
      proxy_pass http://driftseg;
      proxy_next_upstream error timeout http_502 http_503;
      add_header X-Upstream $upstream_addr always;
    }}
  }}
}}
"""


def camvid_frames(n: int) -> list[bytes]:
    try:
        images = sorted((resolve_data_dir(None) / "images").glob("*.jpg"))
    except FileNotFoundError as e:
        pytest.skip(str(e))
    if len(images) < n:
        pytest.skip(f"needs {n} CamVid frames")
    return [p.read_bytes() for p in images[:n]]


class Camera(threading.Thread):
    """One stream sending its frames in order through the router; a 502/503 or a broken connection
    is retried (and counted), as a client of a fleet would."""

    def __init__(self, url: str, stream: str, frames: list[bytes], killed: threading.Event):
        super().__init__(daemon=True)
        self.url, self.stream, self.frames, self.killed = url, stream, frames, killed
        self.answers: list[tuple[int, str]] = []  # (frame index, replica) per frame
        self.failures: list[str] = []
        self.reached = threading.Event()  # FRAMES_BEFORE_KILL frames answered

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            for i in range(FRAMES_IN_ALL):
                if i == FRAMES_BEFORE_KILL + 2:
                    # a fast stream waits here, so that every stream has frames left after the kill;
                    # the kill comes while others still send frame FRAMES_BEFORE_KILL + 1 or + 2
                    self.killed.wait(60)
                for _ in range(5):
                    try:
                        r = client.post("/segment", content=self.frames[i % len(self.frames)],
                                        headers={"Content-Type": "image/jpeg", "X-Stream-Id": self.stream})
                    except httpx.TransportError as e:
                        self.failures.append(type(e).__name__)
                        continue
                    if r.status_code in RETRIED:
                        self.failures.append(str(r.status_code))
                        time.sleep(float(r.headers.get("Retry-After", "0.2")))
                        continue
                    assert r.status_code == 200, r.text
                    # $upstream_addr lists every replica nginx tried, the one that answered last: once the
                    # killed replica's fail_timeout is over (a slow machine), nginx tries it first again
                    answered_by = r.headers["X-Upstream"].rsplit(", ", 1)[-1]
                    self.answers.append((int(r.headers["X-Frame-Index"]), answered_by))
                    break
                if i + 1 == FRAMES_BEFORE_KILL:
                    self.reached.set()


def test_a_killed_replica_s_streams_go_on_elsewhere_from_their_snapshots(tmp_path: Path):
    frames = camvid_frames(FRAMES_IN_ALL)
    redis = RedisServer(free_port(), tmp_path).start()
    procs = []
    nginx = None
    try:
        settings = dict(DRIFTSEG_STATE_STORE=redis.url, DRIFTSEG_SNAPSHOT_EVERY=str(SNAPSHOT_EVERY))
        replicas = [start(tmp_path / f"state-{i}", tmp_path / f"serve-{i}.log", **settings) for i in range(2)]
        procs = [p for p, _ in replicas]
        ports = [int(str(c.base_url).rsplit(":", 1)[1]) for _, c in replicas]
        for _, client in replicas:
            client.close()
        port = free_port()
        conf = tmp_path / "nginx.conf"
        conf.write_text(NGINX_CONF.format(tmp=tmp_path, a=ports[0], b=ports[1], port=port))
        nginx = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(tmp_path)], stderr=subprocess.PIPE)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{url}/healthz", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)

        killed = threading.Event()
        cameras = [Camera(url, s, frames, killed) for s in STREAMS]
        began = time.monotonic()
        for c in cameras:
            c.start()
        for c in cameras:
            assert c.reached.wait(120), f"{c.stream} did not get {FRAMES_BEFORE_KILL} frames through"
        # the victim: the replica holding more streams (where the ring puts them depends on the ports)
        upstreams = [f"127.0.0.1:{p}" for p in ports]
        held = {u: [c for c in cameras if c.answers[FRAMES_BEFORE_KILL - 1][1] == u] for u in upstreams}
        k = max(range(2), key=lambda i: len(held[upstreams[i]]))
        victim, survivor, on_victim = upstreams[k], upstreams[1 - k], held[upstreams[k]]
        procs[k].send_signal(signal.SIGKILL)  # mid-stream: streams are sending their next frames now
        procs[k].wait()
        killed_after = time.monotonic() - began
        killed.set()
        for c in cameras:
            c.join(120)
            assert not c.is_alive()

        failures = [f for c in cameras for f in c.failures]
        print(f"\n{len(STREAMS)} streams, {len(on_victim)} on the killed replica, SIGKILL {killed_after:.1f} s after the "
              f"streams began (every stream had {FRAMES_BEFORE_KILL} frames answered); {len(failures)} request(s) "
              f"failed and were retried: {failures}")
        for c in cameras:
            indices = [i for i, _ in c.answers]
            assert len(indices) == FRAMES_IN_ALL, c.stream  # every frame answered in the end
            if c in on_victim:
                # before the kill: 1..n in order; after: on the survivor, from the last snapshot on
                last_on_victim = max(i for i, r in c.answers if r == victim)
                moved = [(i, r) for i, r in c.answers if r != victim]
                assert all(r == survivor for _, r in moved)
                first = moved[0][0]
                last_snapshot = last_on_victim - last_on_victim % SNAPSHOT_EVERY
                assert first == last_snapshot + 1, (c.stream, indices)  # no reset to the source
                assert [i for i, _ in moved] == list(range(first, first + len(moved)))
                print(f"  {c.stream}: frames {indices}, moved at {last_on_victim} -> resumed at {first}")
            else:
                assert indices == list(range(1, FRAMES_IN_ALL + 1)), (c.stream, indices)
                assert {r for _, r in c.answers} == {survivor}
        # only requests in flight at the kill fail: at most one per stream of the killed replica
        assert len(failures) <= len(on_victim) and set(failures) <= {"502", "503", "RemoteProtocolError",
                                                                        "ReadError", "ConnectError"}
    finally:
        if nginx is not None:
            nginx.kill()
            nginx.wait()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        redis.stop()

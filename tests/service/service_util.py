"""Helpers for the service tests (imported by them; pytest adds this folder to sys.path)."""
import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 60


def exported_state(client, stream: str) -> dict:
    """The stream's state dict, through GET /adaptation/state?format=binary."""
    r = client.get("/adaptation/state", params={"stream": stream, "format": "binary"})
    assert r.status_code == 200, r.text
    return torch.load(io.BytesIO(r.content), weights_only=True)["state"]


def assert_same(a, b, where="state"):
    """Equal state dicts: same keys, equal tensors and values, recursively."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: {sorted(a)} != {sorted(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(state_dir: Path, log: Path, **settings: str) -> tuple[subprocess.Popen, httpx.Client]:
    """`driftseg serve` on a free loopback port, once GET /readyz answers 200; the process and a client.
    `settings`: more DRIFTSEG_* variables, e.g. DRIFTSEG_STATE_STORE="redis://..."."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTSEG_")}
    env.update(DRIFTSEG_STATE_DIR=str(state_dir), DRIFTSEG_DEVICE="cpu", **settings)
    port = free_port()
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "driftseg", "serve", "--host", "127.0.0.1", "--port", str(port),
                                 "--log-level", "info"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if proc.poll() is not None:
            client.close()
            pytest.fail(f"driftseg serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if client.get("/readyz", timeout=2).status_code == 200:
                return proc, client
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            client.close()
            proc.kill()
            pytest.fail(f"driftseg serve not ready after {READY_TIMEOUT} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


def stop(proc: subprocess.Popen) -> int:
    """SIGTERM, then the exit status (killed after 20 s). uvicorn shuts down gracefully and then
    re-raises the signal it caught, so a clean stop exits with -SIGTERM (or 0 on older uvicorn)."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


class RedisServer:
    def __init__(self, port: int, workdir):
        self.port, self.workdir, self.proc = port, workdir, None

    def start(self) -> "RedisServer":
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.workdir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

"""Hostile and careless clients against a running `driftseg serve`, on raw sockets: a half-sent body or
half-sent headers get a 408 and the connection closed within the read deadlines, a connection left
idle is closed, a client that hangs up mid-body is one INFO line (no traceback), connections past
DRIFTSEG_MAX_CONNECTIONS are answered 503, and a key sent in the URL never reaches the log."""
import json
import socket
import time

import pytest
from service_util import start, stop

KEY = "the-server-key-3x7"
DEADLINE = 1.5  # DRIFTSEG_HEADER_TIMEOUT and DRIFTSEG_BODY_TIMEOUT of the server under test
MAX_CONNECTIONS = 6


@pytest.fixture(scope="module")
def server(ckpt_file, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("connections")
    log = tmp / "serve.log"
    proc, client = start(tmp / "state", log, DRIFTSEG_CHECKPOINT=str(ckpt_file), DRIFTSEG_API_KEY=KEY,
                         DRIFTSEG_HEADER_TIMEOUT=str(DEADLINE), DRIFTSEG_BODY_TIMEOUT=str(DEADLINE),
                         DRIFTSEG_MAX_CONNECTIONS=str(MAX_CONNECTIONS))
    try:
        yield client, log
    finally:
        client.close()
        stop(proc)


def connect(client) -> socket.socket:
    sock = socket.create_connection((client.base_url.host, client.base_url.port), timeout=DEADLINE * 4)
    return sock


def read_all(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    start, data = time.monotonic(), b""
    while chunk := sock.recv(65536):
        data += chunk
    return data, time.monotonic() - start


def read_response(sock: socket.socket) -> bytes:
    """One whole answer on a kept-alive connection: its headers, then content-length bytes of body."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def half_body() -> bytes:
    return (b"POST /segment HTTP/1.1\r\nHost: test\r\nContent-Type: image/jpeg\r\nContent-Length: 815\r\n\r\n"
            + b"\xff" * 400)


def test_a_half_sent_body_is_answered_408_and_closed(server):
    client, log = server
    socks = [connect(client) for _ in range(4)]
    for sock in socks:
        sock.sendall(half_body())
    for sock in socks:
        data, waited = read_all(sock)
        sock.close()
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 "), data[:200]
        assert "DRIFTSEG_BODY_TIMEOUT" in json.loads(body)["detail"]
        assert waited < DEADLINE + 2
    assert client.get("/readyz").status_code == 200  # the server goes on


def test_half_sent_headers_get_408_and_an_idle_connection_is_closed(server):
    client, _ = server
    with connect(client) as partial, connect(client) as idle:
        partial.sendall(b"POST /segment HTTP/1.1\r\nHost: test\r\nContent-Ty")
        data, waited = read_all(partial)
        assert data.startswith(b"HTTP/1.1 408 ") and b"DRIFTSEG_HEADER_TIMEOUT" in data and waited < DEADLINE + 2
        assert read_all(idle)[0] == b""  # nothing was asked: closed without an answer


def test_a_kept_alive_connection_gets_the_header_deadline_again(server):
    client, _ = server
    with connect(client) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHo")  # the next request, cut short
        data, waited = read_all(sock)
        assert data.startswith(b"HTTP/1.1 408 ") and waited < DEADLINE + 2


def test_a_client_that_hangs_up_mid_body_is_one_info_line(server):
    client, log = server
    before = log.read_text()
    with connect(client) as sock:
        sock.sendall(half_body())
        time.sleep(0.3)
    time.sleep(0.5)
    new = log.read_text()[len(before):]
    assert "disconnected before its request body of POST /segment arrived" in new, new
    assert "INFO" in new.split("disconnected before")[0].rsplit("\n", 1)[-1]
    assert "Traceback" not in new and "Exception in ASGI application" not in new and "ERROR" not in new


def test_connections_past_the_bound_are_answered_503_until_the_idle_ones_close(server):
    client, _ = server
    idle = [connect(client) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.2)
        with connect(client) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            assert read_all(sock)[0].startswith(b"HTTP/1.1 503 ")
        time.sleep(DEADLINE + 0.5)  # the idle connections reach their header deadline and are closed
        with connect(client) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            assert read_all(sock)[0].startswith(b"HTTP/1.1 200 ")
    finally:
        for sock in idle:
            sock.close()


def test_a_key_in_the_url_never_reaches_the_log(server):
    client, log = server
    client.get("/healthz", params={"api_key": "leaked-by-mistake", "stream": "cam1"})
    client.get("/adaptation/streams", params={"k": KEY})  # the server's own key under any name
    time.sleep(0.3)
    text = log.read_text()
    assert "leaked-by-mistake" not in text and KEY not in text
    assert "GET /healthz?api_key=REDACTED&stream=cam1" in text and "GET /adaptation/streams?k=REDACTED" in text

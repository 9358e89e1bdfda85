"""service/redis_store.py against a real redis-server (skipped where there is none): versioned
snapshots, a stream resumed by another replica, and serving on while Redis is down, caught up when
it is back."""
import shutil
import time

import pytest
from fastapi.testclient import TestClient

from driftseg.adapters.component import StreamState
from driftseg.service.app import create_app
from driftseg.service.redis_store import RedisStore, StoreUnavailable
from service_util import RedisServer, free_port

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server (apt install redis-server)")


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(free_port(), tmp_path).start()
    yield server
    server.stop()


def post(client, data, stream="cam"):
    r = client.post("/segment", content=data, headers={"Content-Type": "image/jpeg", "X-Stream-Id": stream},
                    params={"format": "json"})
    assert r.status_code == 200, r.text
    return r.json()


def test_a_snapshot_is_never_replaced_by_an_older_one(redis_server):
    store = RedisStore(redis_server.url, "c" * 64, "source")
    store.prepare()
    assert store.healthy and store.scan() == {}
    assert store.write("cam", StreamState(frames=10), 1.0)
    assert not store.write("cam", StreamState(frames=4), 2.0)  # a replica that lags behind
    assert store.read("cam")["state"]["frames"] == 10
    assert store.write("cam", StreamState(frames=4), 3.0, force=True)  # an imported state
    assert store.read("cam")["state"]["frames"] == 4
    assert store.scan()["cam"].frames == 4
    assert RedisStore(redis_server.url, "d" * 64, "source").scan() == {}  # another checkpoint's keys
    store.client.hset(store.key("gone"), "version", 3)  # a key a replica reset between SCAN and HGET
    assert set(store.scan()) == {"cam"}
    store.delete("cam")
    assert store.read("cam") is None


def test_another_replica_resumes_the_stream(make_settings, frames, redis_server, tmp_path):
    settings = dict(state_store=redis_server.url, snapshot_every=3)
    with TestClient(create_app(make_settings(state_dir=tmp_path / "a", **settings))) as replica_a:
        for data in frames[:3]:
            post(replica_a, data)
        score = replica_a.get("/adaptation/state", params={"stream": "cam"}).json()["shift_score"]
        # replica b starts while a is still up, as after a router change: b resumes from a's snapshot
        with TestClient(create_app(make_settings(state_dir=tmp_path / "b", **settings))) as replica_b:
            state = replica_b.get("/adaptation/state", params={"stream": "cam"}).json()
            assert state["frames"] == 3 and state["shift_score"] == pytest.approx(score)
            assert post(replica_b, frames[3])["frame"] == 4


def test_serves_from_memory_while_redis_is_down_and_catches_up(make_settings, frames, tmp_path):
    server = RedisServer(free_port(), tmp_path)  # not started yet
    settings = make_settings(state_store=server.url, snapshot_every=1, store_retry_seconds=0.2)
    with TestClient(create_app(settings)) as client:
        assert "degraded" in client.get("/readyz").json()["detail"]
        assert "driftseg_state_store_up 0.0" in client.get("/metrics").text
        assert [post(client, data)["frame"] for data in frames[:2]] == [1, 2]  # served all the same
        server.start()
        try:
            deadline = time.monotonic() + 10
            while client.get("/readyz").json()["detail"] is not None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert client.get("/readyz").json()["detail"] is None
            assert "driftseg_state_store_up 1.0" in client.get("/metrics").text
            store = RedisStore(server.url, client.app.state.engine.fingerprint, client.app.state.engine.method)
            deadline = time.monotonic() + 10
            while store.read("cam") is None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert store.read("cam")["state"]["frames"] == 2  # the frames served while it was down
        finally:
            server.stop()
        with pytest.raises(StoreUnavailable):
            store.read("cam")


def test_snapshots_expire_state_ttl_after_their_stream_was_last_seen(redis_server):
    store = RedisStore(redis_server.url, "c" * 64, "source", ttl=100)
    store.prepare()
    now = time.time()
    assert store.write("fresh", StreamState(frames=1), now)
    assert 95 <= store.client.ttl(store.key("fresh")) <= 101
    assert store.write("stale", StreamState(frames=1), now - 200)  # unseen for longer than the TTL: gone at once
    assert store.read("stale") is None and set(store.scan()) == {"fresh"}
    forever = RedisStore(redis_server.url, "c" * 64, "source", ttl=0)
    assert forever.write("fresh", StreamState(frames=2), now)
    assert forever.client.ttl(forever.key("fresh")) == -1  # no expiry

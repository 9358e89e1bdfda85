"""Retention of stream snapshots on a running `driftseg serve`: past DRIFTSEG_MAX_STORED_STREAMS the least
recently seen snapshots are deleted, and past DRIFTSEG_STATE_TTL (shortened here to seconds) every idle
one is, files and listing and the streams-stored metric alike, and the frames recorded of it."""
import re
import time

from service_util import start, stop

TTL = 8.0
CAP = 3


def stored_metric(client) -> float:
    return float(re.search(r'^driftseg_streams_held\{where="disk"\} (\S+)$', client.get("/metrics").text, re.M).group(1))


def test_snapshots_past_the_cap_and_the_ttl_are_deleted(ckpt_file, frames, tmp_path):
    state = tmp_path / "state"
    proc, client = start(state, tmp_path / "serve.log", DRIFTSEG_CHECKPOINT=str(ckpt_file), DRIFTSEG_MAX_STREAMS="1",
                         DRIFTSEG_MAX_STORED_STREAMS=str(CAP), DRIFTSEG_STATE_TTL=str(TTL),
                         DRIFTSEG_STORE_RETRY_SECONDS="0.3", DRIFTSEG_RECORD="all",
                         DRIFTSEG_RECORD_DIR=str(tmp_path / "rec"))
    try:
        streams = [f"ret-{i}" for i in range(6)]
        for stream in streams:  # one in memory at a time: each new stream evicts (snapshots) the one before
            r = client.post("/segment", content=frames[0], headers={"Content-Type": "image/jpeg", "X-Stream-Id": stream})
            assert r.status_code == 200, r.text
        posted = time.monotonic()
        listing = client.get("/adaptation/streams").json()
        assert [(row["stream"], row["on_disk"]) for row in listing["streams"]] == \
            [("ret-5", False), ("ret-4", True), ("ret-3", True), ("ret-2", True)]  # the 3 newest snapshots kept
        assert len(list(state.glob("*.pt"))) == CAP and stored_metric(client) == CAP
        assert sorted(p.name for p in (tmp_path / "rec").iterdir()) == [f"{s}.frames" for s in streams]
        assert time.monotonic() - posted < TTL  # still within the TTL: the checks above saw the cap alone

        deadline = posted + TTL + 10
        while list(state.glob("*.pt")) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert not list(state.glob("*.pt")) and time.monotonic() - posted > TTL - 1
        while list((tmp_path / "rec").iterdir()) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert not list((tmp_path / "rec").iterdir())  # the footage goes with the snapshots
        assert [row["stream"] for row in client.get("/adaptation/streams").json()["streams"]] == ["ret-5"]
        assert stored_metric(client) == 0
        r = client.get("/adaptation/state", params={"stream": "ret-2"})
        assert r.status_code == 404  # expired: it would start afresh
    finally:
        client.close()
        stop(proc)

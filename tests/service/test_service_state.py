"""Stream state: summary, export/import, reset, LRU eviction, restart, periodic snapshots, concurrency."""
import dataclasses
import datetime
import hashlib
import io
from concurrent.futures import ThreadPoolExecutor

import torch
from fastapi.testclient import TestClient

from driftseg.models.checkpoint import save_checkpoint
from driftseg.service.app import create_app
from service_util import assert_same, exported_state

JPEG = {"Content-Type": "image/jpeg"}


def post(client, data, stream, **params):
    return client.post("/segment", content=data, headers={**JPEG, "X-Stream-Id": stream}, params=params)


def put_state(client, stream, data):
    return client.put("/adaptation/state", params={"stream": stream}, content=data,
                      headers={"Content-Type": "application/octet-stream"})


def snapshot_bytes(client, stream) -> bytes:
    return client.get("/adaptation/state", params={"stream": stream, "format": "binary"}).content


def test_state_summary(make_settings, frames):
    with TestClient(create_app(make_settings())) as client:
        for f in frames[:3]:
            post(client, f, "cam")
        s = client.get("/adaptation/state?stream=cam").json()
        assert client.get("/adaptation/state?stream=nobody").status_code == 404
    assert s["stream"] == "cam" and s["frames"] == 3 and len(s["checkpoint"]) == 64
    assert s["method"]["spec"].startswith("auto(") and s["method"]["parameters"]["auto"]["m"] == 1.0
    assert [p["frame"] for p in s["shift_history"]] == [1, 2, 3]
    assert s["shift_score"] == s["shift_history"][-1]["score"]
    assert s["layers"] and all(0 <= layer["alpha"] <= 1 and layer["divergence"] >= 0 for layer in s["layers"])
    assert s["layers"][0]["name"] and s["layers"][0]["shift"] is not None
    lc = s["label_calibration"]
    assert len(lc["classes"]) == 11 and len(lc["prototypes"]) == 11 and sum(lc["weight"]) > 0


def test_export_reset_import_restores_the_exact_state(make_settings, frames):
    with TestClient(create_app(make_settings())) as client:
        for f in frames[:3]:
            post(client, f, "cam")
        saved, state = snapshot_bytes(client, "cam"), exported_state(client, "cam")
        expected = post(client, frames[3], "cam", adapt="false").content

        assert client.post("/adapt/reset?stream=cam").json() == {"reset": ["cam"]}
        assert client.get("/adaptation/state?stream=cam").status_code == 404
        post(client, frames[3], "cam")  # a different state
        assert post(client, frames[3], "cam", adapt="false").headers["X-Frame-Index"] == "1"

        r = put_state(client, "cam", saved)
        assert r.status_code == 200, r.text
        assert r.json()["frames"] == 3
        assert_same(exported_state(client, "cam"), state)
        assert post(client, frames[3], "cam", adapt="false").content == expected
        # the same state can seed another stream
        assert put_state(client, "cam-copy", saved).status_code == 200
        assert post(client, frames[3], "cam-copy", adapt="false").content == expected


def test_import_refuses_other_checkpoints_methods_and_bad_files(make_settings, frames):
    with TestClient(create_app(make_settings())) as client:
        post(client, frames[0], "cam")
        good = snapshot_bytes(client, "cam")
        before = exported_state(client, "cam")
        payload = torch.load(io.BytesIO(good), weights_only=True)

        def variant(**changes) -> bytes:
            buf = io.BytesIO()
            torch.save({**payload, **changes}, buf)
            return buf.getvalue()

        bad_stats = {**payload["state"], "norm": {"stats": torch.zeros(2, 3)}}
        nan_stats = {**payload["state"], "norm": {"stats": torch.full_like(payload["state"]["norm"]["stats"], float("nan"))}}
        cases = [
            (variant(checkpoint="0" * 64), 409, "checkpoint"),
            (variant(method="ema(m=0.1)"), 409, "method"),
            (good[: len(good) // 2], 422, "snapshot"),
            (b"garbage", 422, "snapshot"),
            (b"# README\n\nA text file.\n", 422, "not a driftseg stream-state snapshot"),
            (variant(last_seen=datetime.datetime.now()), 422, "not a driftseg stream-state snapshot"),  # no plain value
            (variant(format="something-else"), 422, "format"),
            (variant(version=2), 422, "version"),
            (variant(state=bad_stats), 422, "shape"),
            (variant(state=nan_stats), 422, "non-finite"),
            (variant(state={"frames": 1}), 422, "state"),
            # bounds, named: a frame count past 2**53 - 1 (JavaScript's and float64's exact integers), a
            # count inside a part, a tensor of another shape or dtype
            (variant(state={**payload["state"], "frames": 10**30}), 422, "state.frames is 1" + "0" * 30),
            (variant(state={**payload["state"], "frames": -1}), 422, "state.frames is -1"),
            (variant(state={**payload["state"], "auto": {**payload["state"]["auto"], "switches": [3, 2**60]}}), 422,
             "state.auto.switches[1]"),
            (variant(state={**payload["state"], "lc": {**payload["state"]["lc"], "weight": torch.ones(12)}}), 422,
             "state.lc.weight should be a torch.float32 tensor of shape [11], got torch.float32 [12]"),
            (variant(state={**payload["state"], "auto": {**payload["state"]["auto"],
                                                          "alpha": payload["state"]["auto"]["alpha"].double()}}),
             422, "state.auto.alpha should be a torch.float32 tensor"),
        ]
        for data, status, word in cases:
            r = put_state(client, "cam", data)
            assert r.status_code == status, (word, r.text)
            assert word in r.json()["detail"], r.json()["detail"]
            assert "weights_only=False" not in r.json()["detail"]  # never the advice to load unsafely
            assert_same(exported_state(client, "cam"), before)
        assert put_state(client, "cam", good).status_code == 200


def test_lru_eviction_snapshots_and_the_stream_resumes(make_settings, frames, tmp_path):
    with TestClient(create_app(make_settings(max_streams=2))) as client:
        post(client, frames[0], "a")
        post(client, frames[1], "a")
        a_state = exported_state(client, "a")
        post(client, frames[0], "b")
        post(client, frames[0], "c")  # a is the least recently used: snapshotted and evicted
        streams = {s["stream"]: s for s in client.get("/adaptation/streams").json()["streams"]}
        assert streams["a"]["in_memory"] is False and streams["a"]["on_disk"] is True and streams["a"]["frames"] == 2
        assert streams["c"]["in_memory"] is True
        path = tmp_path / "state" / f"{hashlib.sha256(b'a').hexdigest()}.pt"
        assert path.is_file() and torch.load(path, weights_only=True)["stream"] == "a"
        assert_same(exported_state(client, "a"), a_state)  # resumed (evicting b)
        assert post(client, frames[2], "a").headers["X-Frame-Index"] == "3"
        listing = client.get("/adaptation/streams").json()
        assert listing["in_memory"] == 2 and listing["max_streams"] == 2


def test_restart_resumes_streams(make_settings, frames):
    settings = make_settings()
    with TestClient(create_app(settings)) as client:
        for f in frames[:2]:
            post(client, f, "cam")
        state = exported_state(client, "cam")
    # shutdown flushed the state; a new server on the same state dir lists it, then resumes it
    with TestClient(create_app(settings)) as client:
        streams = client.get("/adaptation/streams").json()["streams"]
        assert [(s["stream"], s["frames"], s["in_memory"], s["on_disk"]) for s in streams] == [("cam", 2, False, True)]
        assert_same(exported_state(client, "cam"), state)
        assert post(client, frames[2], "cam").headers["X-Frame-Index"] == "3"


def test_snapshots_of_another_checkpoint_are_not_resumed(make_settings, frames, tiny_ckpt, tmp_path):
    with TestClient(create_app(make_settings())) as client:
        post(client, frames[0], "cam")
    other = tmp_path / "other.pt"  # same weights, another file: another fingerprint
    save_checkpoint(dataclasses.replace(tiny_ckpt, git_commit="another"), other)
    with TestClient(create_app(make_settings(checkpoint=other))) as client:
        assert client.get("/adaptation/streams").json()["streams"] == []
        assert post(client, frames[0], "cam").headers["X-Frame-Index"] == "1"


def test_periodic_snapshot(make_settings, frames, tmp_path):
    path = tmp_path / "state" / f"{hashlib.sha256(b'cam').hexdigest()}.pt"
    with TestClient(create_app(make_settings(snapshot_every=2))) as client:
        post(client, frames[0], "cam")
        assert not path.exists()
        post(client, frames[1], "cam")
        assert torch.load(path, weights_only=True)["state"]["frames"] == 2
        post(client, frames[2], "cam", adapt="false")  # not a change of state
        assert torch.load(path, weights_only=True)["state"]["frames"] == 2
        assert "driftseg_snapshots_written_total 1.0" in client.get("/metrics").text


def test_reset_all_and_unknown(make_settings, frames, tmp_path):
    with TestClient(create_app(make_settings(max_streams=1))) as client:
        post(client, frames[0], "a")
        post(client, frames[0], "b")  # a goes to disk
        assert client.post("/adapt/reset?stream=zzz").status_code == 404
        assert client.post("/adapt/reset").status_code == 404  # like every stream route: the stream "default"
        assert client.post("/adapt/reset?stream=a%2Fb").status_code == 422
        assert client.post("/adapt/reset?all=true").json() == {"reset": ["a", "b"]}
        assert client.get("/adaptation/streams").json()["streams"] == []
        assert not list((tmp_path / "state").glob("*.pt"))
        assert post(client, frames[0], "a").headers["X-Frame-Index"] == "1"


def test_concurrent_requests_on_one_stream_all_apply(make_settings, frames):
    with TestClient(create_app(make_settings())) as client:
        with ThreadPoolExecutor(8) as pool:
            rs = list(pool.map(lambda i: post(client, frames[i % 4], "busy"), range(8)))
        assert all(r.status_code == 200 for r in rs)
        assert sorted(int(r.headers["X-Frame-Index"]) for r in rs) == list(range(1, 9))
        assert exported_state(client, "busy")["frames"] == 8


def test_the_stream_list_comes_in_pages(make_settings, frames):
    with TestClient(create_app(make_settings(max_streams=3))) as client:  # some in memory, some only stored
        for i in range(7):
            post(client, frames[0], f"page-{i}")
        everything = client.get("/adaptation/streams").json()
        assert everything["next_cursor"] is None and len(everything["streams"]) == 7
        pages, cursor = [], None
        while True:
            page = client.get("/adaptation/streams", params={"limit": 3, **({"cursor": cursor} if cursor else {})}).json()
            pages.append([row["stream"] for row in page["streams"]])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert [len(p) for p in pages] == [3, 3, 1]
        assert sum(pages, []) == [row["stream"] for row in everything["streams"]] == [f"page-{i}" for i in range(6, -1, -1)]
        for params in ({"limit": 0}, {"limit": 1001}, {"cursor": "not-a-cursor"}):
            assert client.get("/adaptation/streams", params=params).status_code == 422, params

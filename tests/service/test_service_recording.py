"""DRIFTSEG_RECORD through the app: frames kept as posted, shown in the stream's state, deleted on request;
`drifted` keeps exactly the frames after which the stream's shift score says it has left the source."""
import json

import pytest
from fastapi.testclient import TestClient

from driftseg.data.folder import resolve_data_dir
from driftseg.models.checkpoint import DEFAULT_CHECKPOINT
from driftseg.service.app import create_app
from driftseg.service.recorder import DRIFTED
from driftseg.service.settings import load_settings


def post(client, stream: str, data: bytes):
    r = client.post("/segment?format=json", content=data, headers={"Content-Type": "image/jpeg", "X-Stream-Id": stream})
    assert r.status_code == 200, r.text
    return r


def test_record_all_keeps_the_frames_as_posted_and_delete_removes_them(make_settings, frames, tmp_path) -> None:
    settings = make_settings(record="all", record_dir=tmp_path / "rec", record_max_frames=3, api_key="k3y-for-tests")
    with TestClient(create_app(settings)) as client:
        for data in frames:
            post(client, "cam1", data)
        post(client, "cam2", frames[0])
        folder = tmp_path / "rec" / "cam1.frames"
        assert [p.read_bytes() for p in sorted(folder.iterdir())] == frames[1:]  # the newest 3, unchanged
        state = client.get("/adaptation/state?stream=cam1").json()
        assert (state["recorded_frames"], state["recorded_bytes"]) == (3, sum(map(len, frames[1:])))
        metrics = client.get("/metrics").text
        assert "driftseg_frames_recorded_total 5.0" in metrics

        assert client.delete("/adaptation/recording?stream=cam1").status_code == 401  # footage: the key guards it
        r = client.delete("/adaptation/recording?stream=cam1", headers={"X-API-Key": "k3y-for-tests"})
        assert r.status_code == 200 and r.json() == {"stream": "cam1", "deleted": 3}
        assert not folder.exists() and (tmp_path / "rec" / "cam2.frames").is_dir()
        state = client.get("/adaptation/state?stream=cam1").json()
        assert state["recorded_frames"] == 0 and state["frames"] == len(frames)  # the state stays


def test_record_off_keeps_nothing(make_settings, frames, tmp_path) -> None:
    with TestClient(create_app(make_settings(record_dir=tmp_path / "rec"))) as client:
        post(client, "cam1", frames[0])
        assert client.get("/adaptation/state?stream=cam1").json()["recorded_frames"] == 0
        assert client.delete("/adaptation/recording?stream=cam1").json()["deleted"] == 0
    assert not (tmp_path / "rec").exists()


def test_record_drifted_keeps_the_frames_past_the_shift_edge(tmp_path) -> None:
    """The default checkpoint on real CamVid frames: day frames of the source's validation split, then dusk."""
    data = resolve_data_dir(None)
    if not DEFAULT_CHECKPOINT.is_file() or not (data / "splits.json").is_file():
        pytest.skip("needs the default checkpoint and CamVid")
    splits = json.loads((data / "splits.json").read_text())
    posted = [(data / "images" / f"{name}.jpg").read_bytes()
              for name in splits["source_val"][:4] + splits["target_dusk"][:6]]
    settings = load_settings(device="cpu", state_dir=tmp_path / "state", record="drifted",
                             record_dir=tmp_path / "rec", snapshot_every=0)
    with TestClient(create_app(settings)) as client:
        scores = [float(post(client, "cam1", frame).headers["X-Shift-Score"]) for frame in posted]
    kept = [frame for frame, score in zip(posted, scores) if score > DRIFTED]
    assert 0 < len(kept) < len(posted) and all(s <= DRIFTED for s in scores[:4])  # day stays, dusk crosses
    assert [p.read_bytes() for p in sorted((tmp_path / "rec" / "cam1.frames").iterdir())] == kept


def test_record_drifted_needs_auto() -> None:
    with pytest.raises(ValueError, match="RECORD=drifted.*method 'ptbn' measures none"):
        load_settings(method="ptbn", record="drifted")
    with pytest.raises(ValueError, match="record"):
        load_settings(record="sometimes")

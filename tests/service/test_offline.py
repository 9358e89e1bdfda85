"""service/offline.py (`driftseg segment`): a video or image folder as one stream, no server; its
outputs, and its final state imported into a running server, which carries the stream on."""
import io
import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from driftseg.service.app import create_app
from driftseg.service.offline import main as segment_main
from service_util import assert_same, exported_state
from synthetic_frames import domain_frames

H, W = 48, 64


def rgb_frames(n: int) -> list[np.ndarray]:
    """Frames of one synthetic domain, then of a darker, tinted one: a stream that drifts."""
    frames = torch.cat([domain_frames(n - n // 2, seed=0, size=(H, W)), domain_frames(n // 2, seed=1, shift=0.6, size=(H, W))])
    return [(f.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for f in frames]


def write_video(path, frames: list[np.ndarray], fps: int = 5) -> None:
    av = pytest.importorskip("av")
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def png(rgb: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="PNG")
    return out.getvalue()


def put_state(client, stream: str, data: bytes):
    return client.put("/adaptation/state", params={"stream": stream}, content=data,
                      headers={"Content-Type": "application/octet-stream"})


def test_segment_a_video_and_carry_its_stream_on_in_a_server(ckpt_file, make_settings, tmp_path):
    av = pytest.importorskip("av")
    write_video(tmp_path / "cam.mp4", rgb_frames(8))
    out = tmp_path / "out"
    segment_main([str(tmp_path / "cam.mp4"), "--out", str(out), "--checkpoint", str(ckpt_file), "--save", "labels",
                  "overlay", "--video", "--no-progress"])

    labels = sorted((out / "labels").glob("*.png"))
    assert [p.stem for p in labels] == [f"{i:06d}" for i in range(1, 9)]  # named by frame number, from 1
    for p in labels:
        with Image.open(p) as im:
            assert im.size == (W, H) and im.mode == "L" and np.array(im).max() < 11
    assert len(list((out / "overlays").glob("*.jpg"))) == 8
    records = [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in records] == list(range(1, 9))
    assert all(isinstance(r["shift_score"], float) and 0 <= r["alpha_mean"] <= 1 and isinstance(r["switch"], bool)
               for r in records)
    assert [r["since_reset"] for r in records if not r["switch"]][:3] == [1, 2, 3]
    with av.open(str(out / "overlay.mp4")) as container:
        decoded = list(container.decode(video=0))
    assert len(decoded) == 8 and (decoded[0].height, decoded[0].width) == (H, W)

    snapshot = (out / "state.pt").read_bytes()
    saved = torch.load(io.BytesIO(snapshot), weights_only=True)
    assert saved["stream"] == "cam" and saved["state"]["frames"] == 8
    with TestClient(create_app(make_settings())) as client:
        r = put_state(client, "cam", snapshot)
        assert r.status_code == 200, r.text
        assert r.json()["frames"] == 8
        assert_same(exported_state(client, "cam"), saved["state"])
        r = client.post("/segment", content=png(rgb_frames(2)[0]), headers={"Content-Type": "image/png", "X-Stream-Id": "cam"})
        assert r.status_code == 200 and r.headers["X-Frame-Index"] == "9"  # the stream goes on where segment left it


# switches within these six frames on the tiny network: the 12-layer auto sees the drift at once, where the
# default's jump score, averaged over every layer of a network calibrated on other frames, does not
SWITCHING = "auto(m=1,floor=0.8,switch=2,layers=12)+lc"


def test_an_image_folder_is_the_stream_a_server_would_see(ckpt_file, make_settings, tmp_path):
    frames = rgb_frames(6)
    (tmp_path / "in").mkdir()
    for i, rgb in enumerate(frames):
        (tmp_path / "in" / f"f{i:02d}.png").write_bytes(png(rgb))
    segment_main([str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--checkpoint", str(ckpt_file),
                  "--stream", "door", "--method", SWITCHING, "--no-progress"])
    assert sorted(p.name for p in (tmp_path / "out" / "labels").iterdir()) == [f"f{i:02d}.png" for i in range(6)]
    saved = torch.load(tmp_path / "out" / "state.pt", weights_only=True)
    assert saved["stream"] == "door"
    records = [json.loads(line) for line in (tmp_path / "out" / "frames.jsonl").read_text().splitlines()]
    with TestClient(create_app(make_settings(method=SWITCHING))) as client:
        for i, rgb in enumerate(frames):
            r = client.post("/segment", content=png(rgb), headers={"Content-Type": "image/png", "X-Stream-Id": "door"})
            assert r.status_code == 200
            with Image.open(tmp_path / "out" / "labels" / f"f{i:02d}.png") as im:
                assert np.array_equal(np.array(Image.open(io.BytesIO(r.content))), np.array(im)), f"frame {i}"
            # one frame numbering: frames.jsonl's frame is the server's X-Frame-Index for the same frame
            assert int(r.headers["X-Frame-Index"]) == records[i]["frame"] == i + 1
        served = exported_state(client, "door")
        switches = client.get("/adaptation/state", params={"stream": "door"}).json()["switches"]
    # and the frames frames.jsonl marks as switches are the ones the server's `switches` lists
    assert switches and [r["frame"] for r in records if r["switch"]] == switches == saved["state"]["auto"]["switches"]
    for key in saved["state"]:
        if isinstance(saved["state"][key], dict):
            for name, value in saved["state"][key].items():
                if isinstance(value, torch.Tensor):
                    torch.testing.assert_close(value, served[key][name], rtol=1e-5, atol=1e-6)


def test_refusals(ckpt_file, tmp_path):
    with pytest.raises(FileNotFoundError, match="neither an image folder nor a video file"):
        segment_main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"), "--checkpoint", str(ckpt_file)])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        segment_main([str(tmp_path / "empty"), "--out", str(tmp_path / "out"), "--checkpoint", str(ckpt_file)])
    pytest.importorskip("av")
    (tmp_path / "notes.mp4").write_text("not a video")
    with pytest.raises(ValueError, match="cannot read .* as a video"):
        segment_main([str(tmp_path / "notes.mp4"), "--out", str(tmp_path / "out"), "--checkpoint", str(ckpt_file)])

"""POST /segment, health, metrics: one app for the module, a stream id of its own per test."""
import io
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from driftseg.service.app import create_app
from driftseg.service.stages import Stage
from service_util import assert_same, exported_state


def post(client, data, stream, content_type="image/jpeg", **params):
    return client.post("/segment", content=data, headers={"Content-Type": content_type, "X-Stream-Id": stream},
                       params=params)


def test_png_is_a_label_map_at_the_input_size(client, frames, camvid_jpegs):
    r = post(client, frames[0], "png")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    labels = Image.open(io.BytesIO(r.content))
    assert labels.mode == "L" and labels.size == (160, 120)
    assert np.asarray(labels).max() < 11

    wide = io.BytesIO()  # a PNG frame of another size and shape
    Image.open(io.BytesIO(camvid_jpegs[1])).convert("RGB").resize((97, 61)).save(wide, format="PNG")
    r = post(client, wide.getvalue(), "png", content_type="image/png")
    assert r.status_code == 200, r.text
    assert Image.open(io.BytesIO(r.content)).size == (97, 61)


def test_headers_and_json_summary(client, frames):
    for i, frame in enumerate(frames[:3], start=1):
        r = post(client, frame, "json", format="json")
        assert r.status_code == 200, r.text
        assert r.headers["X-Stream-Id"] == "json" and r.headers["X-Frame-Index"] == str(i)
        assert float(r.headers["X-Shift-Score"]) >= 0
        timing = r.headers["Server-Timing"]
        assert all(f"{stage};dur=" in timing for stage in ("decode", "model", "encode"))
    body = r.json()
    assert body["stream"] == "json" and body["frame"] == 3 and body["adapted"] is True
    assert (body["width"], body["height"]) == (160, 120)
    assert len(body["classes"]) == 11 and sum(c["pixels"] for c in body["classes"]) == 160 * 120
    assert body["classes"][0]["name"] and abs(sum(c["fraction"] for c in body["classes"]) - 1) < 1e-6
    assert 0 <= body["alpha_mean"] <= 1 and body["shift_score"] == pytest.approx(float(r.headers["X-Shift-Score"]), abs=1e-4)
    assert set(body["timings_ms"]) == {"wait", "decode", "model", "encode"}


def test_stage_names_are_the_same_in_every_view(client, frames):
    """Server-Timing, the JSON summary, its schema and the stage histogram name the same stages, in order."""
    names = [stage.value for stage in Stage]
    r = post(client, frames[0], "stages", format="json")
    assert [part.split(";")[0] for part in r.headers["Server-Timing"].split(", ")] == names
    assert list(r.json()["timings_ms"]) == names
    schema = client.get("/openapi.json").json()["components"]["schemas"]["Timings"]
    assert list(schema["properties"]) == names and all(p["description"] for p in schema["properties"].values())
    observed = [line.split('stage="')[1].split('"')[0] for line in client.get("/metrics").text.splitlines()
                if line.startswith("driftseg_stage_duration_seconds_count{")]
    assert observed == names


def test_overlay_by_query_and_by_accept(client, frames):
    for r in (post(client, frames[0], "overlay", format="overlay"),
              client.post("/segment?stream=overlay", content=frames[0],
                          headers={"Content-Type": "image/jpeg", "Accept": "image/jpeg"})):
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "image/jpeg"
        im = Image.open(io.BytesIO(r.content))
        assert im.format == "JPEG" and im.mode == "RGB" and im.size == (160, 120)
    r = client.post("/segment?stream=overlay", content=frames[0],
                    headers={"Content-Type": "image/jpeg", "Accept": "application/json"})
    assert r.json()["frame"] == 3


def test_multipart_upload(client, frames):
    r = client.post("/segment?stream=multipart&format=json", files={"image": ("f.jpg", frames[1], "image/jpeg")})
    assert r.status_code == 200, r.text
    assert r.json()["frame"] == 1 and r.json()["width"] == 160
    r = client.post("/segment?stream=multipart", files={"other": ("f.jpg", frames[1], "image/jpeg")})
    assert r.status_code == 422 and "'image'" in r.json()["detail"]
    r = client.post("/segment?stream=multipart", files={"image": ("f.txt", b"hello", "text/plain")})
    assert r.status_code == 415


def test_adapt_false_leaves_the_state(client, frames):
    post(client, frames[0], "frozen")
    before = exported_state(client, "frozen")
    r = post(client, frames[1], "frozen", adapt="false")
    assert r.status_code == 200 and r.headers["X-Frame-Index"] == "1"
    assert_same(exported_state(client, "frozen"), before)
    assert post(client, frames[1], "frozen").headers["X-Frame-Index"] == "2"


@pytest.mark.parametrize("case", ["415", "413-bytes", "413-pixels", "422-garbage", "422-truncated"])
def test_errors_leave_the_state_unchanged(client, frames, camvid_jpegs, case):
    stream = f"err-{case}"
    assert post(client, frames[0], stream).status_code == 200
    before = exported_state(client, stream)
    if case == "415":
        r = post(client, frames[1], stream, content_type="text/plain")
        assert r.status_code == 415 and "image/jpeg" in r.json()["detail"]
    elif case == "413-bytes":
        r = post(client, b"\xff" * 300_001, stream)
        assert r.status_code == 413 and "DRIFTSEG_MAX_IMAGE_BYTES" in r.json()["detail"]
    elif case == "413-pixels":
        r = post(client, camvid_jpegs[0], stream)  # 480x360, over the 100k pixel limit
        assert r.status_code == 413 and "480x360" in r.json()["detail"]
    elif case == "422-garbage":
        r = post(client, b"not an image at all", stream)
        detail = r.json()["detail"]
        assert r.status_code == 422 and "cannot decode" in detail and "b'not an i'" in detail
    else:
        r = post(client, frames[1][: len(frames[1]) // 2], stream)
        assert r.status_code == 422
    assert_same(exported_state(client, stream), before)
    assert post(client, frames[1], stream).headers["X-Frame-Index"] == "2"


BAD_INPUTS = ["not-jpeg", "not-png", "not-webp", "png-as-jpeg-header-only", "empty", "empty-png", "empty-multipart",
              "format=gif", "format=empty", "adapt=maybe", "adapt=empty"]


def send_bad_input(client, frames, stream, case):
    """One bad /segment request; the response."""
    if case.startswith("not-"):  # bytes that are no image, under an image content type
        return post(client, b"GIF89a" + bytes(range(256)) * 4, stream, content_type=f"image/{case[4:]}")
    if case == "png-as-jpeg-header-only":
        return post(client, b"\x89PNG\r\n\x1a\n", stream, content_type="image/jpeg")
    if case == "empty":
        return post(client, b"", stream)
    if case == "empty-png":
        return post(client, b"", stream, content_type="image/png")
    if case == "empty-multipart":
        return client.post("/segment", params={"stream": stream}, files={"image": ("f.jpg", b"", "image/jpeg")})
    name, value = case.split("=")
    return post(client, frames[1], stream, **{name: "" if value == "empty" else value})


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_422_and_changes_nothing(client, frames, case):
    stream, fresh = f"bad-{case.replace('=', '-')}", f"fresh-{case.replace('=', '-')}"
    assert post(client, frames[0], stream).status_code == 200
    before = exported_state(client, stream)
    for target in (stream, fresh):
        r = send_bad_input(client, frames, target, case)
        assert r.status_code == 422, r.text
        detail = r.json()["detail"]
        if "=" in case:  # FastAPI's validation error, naming the parameter
            assert detail[0]["loc"] == ["query", case.split("=")[0]], detail
        elif case.startswith("empty"):
            assert "empty" in detail, detail
        else:
            assert "decode" in detail, detail
    assert_same(exported_state(client, stream), before)
    assert client.get("/adaptation/state", params={"stream": fresh}).status_code == 404  # no stream made
    assert post(client, frames[1], stream).headers["X-Frame-Index"] == "2"


def test_bad_values_on_the_state_routes_are_422(client, frames):
    assert post(client, frames[0], "q-bad").status_code == 200
    before = exported_state(client, "q-bad")
    octet = {"Content-Type": "application/octet-stream"}
    for r in (client.get("/adaptation/state", params={"stream": "q-bad", "format": "gif"}),
              client.post("/adapt/reset", params={"stream": "q-bad", "all": "maybe"}),
              client.put("/adaptation/state", params={"stream": "q-bad"}, content=b"", headers=octet),
              client.put("/adaptation/state", params={"stream": "q-new"}, content=b"", headers=octet)):
        assert r.status_code == 422, r.text
    assert_same(exported_state(client, "q-bad"), before)
    assert client.get("/adaptation/state", params={"stream": "q-new"}).status_code == 404


def test_truncated_camvid_jpeg_is_422(make_settings, camvid_jpegs):
    """The first half of a full-size CamVid JPEG: its header decodes (480x360), its pixels do not."""
    with TestClient(create_app(make_settings(max_image_pixels=480 * 360))) as client:
        assert post(client, camvid_jpegs[0], "cut").status_code == 200
        before = exported_state(client, "cut")
        for data in (camvid_jpegs[1][: len(camvid_jpegs[1]) // 2], camvid_jpegs[1][:200], camvid_jpegs[1][:2]):
            r = post(client, data, "cut")
            assert r.status_code == 422, r.text
            assert "decode" in r.json()["detail"]
            assert_same(exported_state(client, "cut"), before)
            assert post(client, data, "cut-fresh").status_code == 422
        assert client.get("/adaptation/state?stream=cut-fresh").status_code == 404
        assert post(client, camvid_jpegs[1], "cut").headers["X-Frame-Index"] == "2"
        assert client.get("/metrics").text.count('status="500"') == 0


@pytest.mark.parametrize("stream", ["../etc", "a/b", "x" * 129, "sp ace", ""])
def test_bad_stream_ids_are_rejected(client, frames, stream):
    r = client.post("/segment", params={"stream": stream}, content=frames[0], headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 422 and "stream id" in r.json()["detail"]


def test_stream_from_query_header_or_default(client, frames):
    r = client.post("/segment?stream=q.1", content=frames[0], headers={"Content-Type": "image/jpeg"})
    assert r.headers["X-Stream-Id"] == "q.1"
    r = client.post("/segment", content=frames[0], headers={"Content-Type": "image/jpeg"})
    assert r.headers["X-Stream-Id"] == "default"
    r = client.post("/segment?stream=a", content=frames[0], headers={"Content-Type": "image/jpeg", "X-Stream-Id": "b"})
    assert r.status_code == 422


def test_a_server_that_requires_the_stream_id_refuses_a_frame_without_one(make_settings, frames):
    with TestClient(create_app(make_settings(require_stream_id=True))) as client:
        r = client.post("/segment", content=frames[0], headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 422 and "send the header X-Stream-Id" in r.json()["detail"]
        assert client.get("/adaptation/streams").json()["streams"] == []  # no 'default' stream adapted
        assert client.get("/adaptation/state").status_code == 422  # the state routes name their stream too
        assert post(client, frames[0], "cam").status_code == 200
        assert client.post("/segment?stream=cam2", content=frames[0], headers={"Content-Type": "image/jpeg"}).status_code == 200
        header = next(p for p in client.get("/openapi.json").json()["paths"]["/segment"]["post"]["parameters"]
                      if p["name"] == "x-stream-id")
        assert "DRIFTSEG_REQUIRE_STREAM_ID" in header["description"]


def test_health_readiness_metrics_openapi(client, frames):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True and ready.json()["device"] == "cpu"
    assert {k: ready.json()[k] for k in ("engine", "compiled", "precision")} == \
        {"engine": "torch", "compiled": False, "precision": "fp32"}
    post(client, frames[0], "metrics")
    text = client.get("/metrics").text
    for name in ("driftseg_requests_total", "driftseg_request_duration_seconds_bucket",
                 "driftseg_stage_duration_seconds_bucket", "driftseg_frames_adapted_total", "driftseg_streams_held",
                 'driftseg_shift_score{stream="metrics"}', "process_resident_memory_bytes"):
        assert name in text, name
    assert 'route="/segment",status="200"' in text and 'stage="model"' in text
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/segment", "/adaptation/state", "/adaptation/streams", "/adapt/reset", "/metrics", "/healthz",
            "/readyz"} <= set(paths)
    assert "image/jpeg" in paths["/segment"]["post"]["requestBody"]["content"]


def test_model_info_and_the_queue_limit_are_exported_without_created_series(client):
    ready = client.get("/readyz").json()
    text = client.get("/metrics").text
    labels = f'checkpoint="{ready["checkpoint"]}",engine="torch",method="{ready["method"]}"'
    assert f"driftseg_model_info{{{labels}}} 1.0" in text
    assert "driftseg_segment_max_pending 32.0" in text  # the default DRIFTSEG_MAX_PENDING
    assert "_created" not in text


def test_readyz_is_503_before_the_model_is_loaded(make_settings):
    client = TestClient(create_app(make_settings()))  # no `with`: the lifespan has not run
    assert client.get("/readyz").status_code == 503
    r = client.post("/segment", content=b"x", headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 503 and "readyz" in r.json()["detail"]


def test_a_full_queue_is_503_with_retry_after(make_settings, frames):
    """With max_pending=1 and one frame held inside the model, the next request is turned away at
    once, the queue gauge says why, and the held frame still completes."""
    with TestClient(create_app(make_settings(max_pending=1))) as client:
        batcher = client.app.state.engine.segmenter.batcher
        inside, release = threading.Event(), threading.Event()
        step = batcher.step

        def held_step(*args):
            inside.set()
            assert release.wait(30)
            return step(*args)

        batcher.step = held_step
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(post, client, frames[0], "cam-a")
            assert inside.wait(30)
            assert "driftseg_segment_in_flight 1.0" in client.get("/metrics").text
            r = post(client, frames[1], "cam-b")
            release.set()
            assert first.result().status_code == 200
        assert r.status_code == 503 and "DRIFTSEG_MAX_PENDING" in r.json()["detail"]
        assert int(r.headers["Retry-After"]) >= 1
        held = [s["stream"] for s in client.get("/adaptation/streams").json()["streams"]]
        assert held == ["cam-a"]  # cam-b was never started
        batcher.step = step
        assert post(client, frames[1], "cam-b").status_code == 200  # the queue has room again
        assert "driftseg_segment_in_flight 0.0" in client.get("/metrics").text


def test_shift_score_series_are_capped(make_settings, frames):
    with TestClient(create_app(make_settings(metrics_stream_cap=2))) as client:
        for s in ("c1", "c2", "c3", "c4"):
            post(client, frames[0], s)
        text = client.get("/metrics").text
    series = [line for line in text.splitlines() if line.startswith("driftseg_shift_score{")]
    assert len(series) == 3 and any('stream="_other"' in line for line in series)
    assert not any('stream="c1"' in line for line in series)  # the least recently seen ones are aggregated

"""The service with DRIFTSEG_DECODE=batched (torchvision's decoder, one call per batch; what a GPU
runs with nvJPEG), here on the CPU: the labels of the PIL path, and a broken JPEG failing alone."""
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from driftseg.service.app import create_app
from driftseg.service.imaging import EXIF_ORIENTATION
from service_util import assert_same, exported_state


def post(client, stream, data, **params):
    return client.post("/segment", content=data, headers={"Content-Type": "image/jpeg", "X-Stream-Id": stream},
                       params=params)


def test_batched_decoding_serves_the_pil_labels(make_settings, frames, tmp_path):
    labels = {}
    for decode in ("pil", "batched"):
        with TestClient(create_app(make_settings(state_dir=tmp_path / decode, decode=decode))) as client:
            assert client.app.state.engine.segmenter.batched_decode == (decode == "batched")
            labels[decode] = [np.array(Image.open(io.BytesIO(post(client, "cam", data).content))) for data in frames]
            overlay = post(client, "cam", frames[0], format="overlay")
            assert overlay.status_code == 200 and overlay.headers["content-type"] == "image/jpeg"
    for a, b in zip(labels["pil"], labels["batched"]):
        assert np.array_equal(a, b)


def test_a_broken_jpeg_in_a_batch_fails_alone(make_settings, camvid_jpegs):
    settings = make_settings(decode="batched", max_image_pixels=480 * 360, max_batch=4, max_batch_delay_ms=200)
    with TestClient(create_app(settings)) as client:
        assert post(client, "cut", camvid_jpegs[0]).status_code == 200
        before = exported_state(client, "cut")
        cut = camvid_jpegs[1][: len(camvid_jpegs[1]) // 2]
        with ThreadPoolExecutor(3) as pool:  # arrive within the batch delay: one batch of three
            answers = list(pool.map(lambda args: post(client, *args), [("cut", cut), ("a", camvid_jpegs[1]),
                                                                        ("b", camvid_jpegs[2])]))
        assert [r.status_code for r in answers] == [422, 200, 200], [r.text for r in answers]
        assert "decode" in answers[0].json()["detail"]
        assert_same(exported_state(client, "cut"), before)
        metrics = dict(line.rsplit(" ", 1) for line in client.get("/metrics").text.splitlines()
                       if line.startswith(("driftseg_batch_size_count", "driftseg_batch_size_sum")))
        assert float(metrics["driftseg_batch_size_count"]) == 2 and float(metrics["driftseg_batch_size_sum"]) == 4


def test_a_phone_photo_is_segmented_upright_on_both_decoders(make_settings, frames, tmp_path):
    """A JPEG stored sideways with EXIF orientation 6: its labels are those of the picture turned as a viewer
    shows it (np.rot90 of the stored pixels, sent as a lossless PNG), on the PIL and the batched decoder."""
    stored = np.array(Image.open(io.BytesIO(frames[0])).convert("RGB"))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    out = io.BytesIO()
    Image.fromarray(stored).save(out, format="JPEG", quality=95, exif=exif)
    turned = out.getvalue()
    as_stored = np.array(Image.open(io.BytesIO(turned)).convert("RGB"))
    upright = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(np.rot90(as_stored, k=-1))).save(upright, format="PNG")
    for decode in ("pil", "batched"):
        with TestClient(create_app(make_settings(state_dir=tmp_path / decode, decode=decode))) as client:
            got = post(client, "phone", turned, adapt="false")
            want = client.post("/segment", content=upright.getvalue(), params={"adapt": "false"},
                               headers={"Content-Type": "image/png", "X-Stream-Id": "phone"})
            assert got.status_code == want.status_code == 200, got.text
            labels = np.array(Image.open(io.BytesIO(got.content)))
            assert labels.shape == stored.shape[1::-1]  # height and width swapped
            assert np.array_equal(labels, np.array(Image.open(io.BytesIO(want.content)))), decode

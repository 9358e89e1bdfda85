"""The service on the onnx engine: the labels of the torch engine, and a file exported for another
checkpoint refused at start-up."""
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from driftseg.adapters.onnx_engine import export, onnx_metadata
from driftseg.adapters.pipeline import Pipeline
from driftseg.adapters.spec import RECOMMENDED, parse_method
from driftseg.models.checkpoint import file_sha256, load_checkpoint
from driftseg.service.app import create_app


@pytest.fixture(scope="module")
def onnx_file(ckpt_file, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "auto.onnx"
    export(Pipeline(load_checkpoint(ckpt_file), parse_method(RECOMMENDED)), path,
           onnx_metadata(file_sha256(ckpt_file), RECOMMENDED))
    return path


def labels_of(settings, frames) -> list[np.ndarray]:
    with TestClient(create_app(settings)) as client:
        out = []
        for data in frames:
            r = client.post("/segment", content=data, headers={"Content-Type": "image/jpeg", "X-Stream-Id": "cam"})
            assert r.status_code == 200, r.text
            out.append(np.array(Image.open(io.BytesIO(r.content))))
        return out


def test_onnx_engine_serves_the_torch_engine_labels(make_settings, frames, onnx_file, tmp_path):
    by_torch = labels_of(make_settings(state_dir=tmp_path / "torch"), frames)
    by_onnx = labels_of(make_settings(state_dir=tmp_path / "onnx", engine="onnx", onnx_model=onnx_file), frames)
    for a, b in zip(by_torch, by_onnx):
        assert (a != b).mean() < 1e-3


def test_a_file_for_another_checkpoint_is_refused_at_start_up(make_settings, onnx_file, tmp_path):
    other = tmp_path / "other.pt"
    other.write_bytes(make_settings().checkpoint.read_bytes() + b"\0")  # another file, another fingerprint
    with pytest.raises(ValueError, match="exported for checkpoint"):
        with TestClient(create_app(make_settings(checkpoint=other, engine="onnx", onnx_model=onnx_file))):
            pass


def test_engine_onnx_settings_say_what_does_not_fit(make_settings, onnx_file):
    with pytest.raises(ValueError, match="FDA"):
        make_settings(engine="onnx", method="auto+fda")
    with pytest.raises(ValueError, match="ENGINE is not onnx"):
        make_settings(onnx_model=onnx_file)

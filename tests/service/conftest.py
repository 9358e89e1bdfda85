import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from driftseg.data.folder import resolve_data_dir
from driftseg.models.checkpoint import save_checkpoint
from driftseg.service.app import create_app
from driftseg.service.settings import Settings

SMALL = (160, 120)  # width, height of the frames most tests send: fast, and under the pixel limit below


@pytest.fixture(scope="session")
def ckpt_file(tiny_ckpt, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(tiny_ckpt, path)
    return path


@pytest.fixture(scope="session")
def camvid_jpegs() -> list[bytes]:
    """Four real CamVid frames, read from the shared data folder (never copied into the repo)."""
    paths = sorted((resolve_data_dir(None) / "images").glob("*.jpg"))
    if len(paths) < 4:
        pytest.skip(f"needs CamVid frames in {resolve_data_dir(None) / 'images'}")
    return [p.read_bytes() for p in paths[:: max(1, len(paths) // 4)][:4]]


@pytest.fixture(scope="session")
def frames(camvid_jpegs) -> list[bytes]:
    """The CamVid frames at 160x120, as JPEG bytes."""
    out = []
    for data in camvid_jpegs:
        buf = io.BytesIO()
        Image.open(io.BytesIO(data)).convert("RGB").resize(SMALL).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


@pytest.fixture(scope="module")
def client(ckpt_file, tmp_path_factory):
    """A test app on the tiny checkpoint, method auto, shared by a test module's tests."""
    settings = Settings(checkpoint=ckpt_file, method="auto", device="cpu", state_dir=tmp_path_factory.mktemp("state"),
                        max_image_bytes=300_000, max_image_pixels=100_000, snapshot_every=0)
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def make_settings(ckpt_file, tmp_path):
    """Settings for a test app on the tiny checkpoint, method auto, state under tmp_path."""

    def make(**overrides) -> Settings:
        values = dict(checkpoint=ckpt_file, method="auto", device="cpu", state_dir=tmp_path / "state",
                      max_image_bytes=300_000, max_image_pixels=100_000, snapshot_every=0)
        values.update(overrides)
        return Settings(**values)

    return make

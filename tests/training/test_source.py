"""training/source.py: a toy CPU run on five real CamVid frames (conftest.py)."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from driftseg.data.folder import CAMVID_CLASSES, CAMVID_PALETTE
from driftseg.models.checkpoint import load_checkpoint
from toy_sizes import SIZE, SOURCE_ITERS as ITERS


@pytest.fixture(scope="module")
def run(toy_source) -> dict:
    return toy_source


def resized(root: Path, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for n in names:
        with Image.open(root / "images" / f"{n}.jpg") as im:
            x = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)
        with Image.open(root / "labels" / f"{n}.png") as im:
            y = torch.from_numpy(np.array(im))[None]
        images.append(v2.functional.resize(x, list(SIZE), antialias=True))
        labels.append(v2.functional.resize(y, list(SIZE), v2.InterpolationMode.NEAREST)[0])
    return torch.stack(images), torch.stack(labels)


def test_log_has_every_iteration_and_loss_falls(run) -> None:
    log = run["log"]
    assert [r["iter"] for r in log] == list(range(1, ITERS + 1))
    losses = np.array([r["loss"] for r in log])
    assert np.isfinite(losses).all()
    assert losses[0] == pytest.approx(np.log(11), rel=0.25)  # about chance over 11 classes at the start
    # augmentation makes single iterations noisy: compare the start with the mean of the last third
    assert losses[-10:].mean() < 0.75 * losses[:3].mean()
    assert log[-1]["lr"] == 0.0  # the poly schedule ends at 0


def test_checkpoint_loads_with_required_fields(run) -> None:
    ckpt = load_checkpoint(run["out"])
    assert ckpt.arch == "lraspp_mobilenet_v3_large"
    assert ckpt.class_names == CAMVID_CLASSES and ckpt.palette == CAMVID_PALETTE
    assert ckpt.input_size == list(SIZE)
    assert ckpt.git_commit  # a commit or "unknown"

    cfg = ckpt.config
    assert cfg["job"] == "source" and cfg["iters"] == ITERS and cfg["batch_size"] == 2
    assert cfg["input_size"] == list(SIZE) and cfg["crop"] == [48, 64]
    assert cfg["train_split"] == ["train2"] and cfg["init"] is None and cfg["parents"] == [] and cfg["val_split"] == "val3"
    assert cfg["out"] == str(run["out"]) and cfg["world_size"] == 1 and cfg["device_name"] == "cpu"
    assert ckpt.data == {"root": str(run["root"].resolve()), "train_split": ["train2"], "frames": 2}

    m = ckpt.metrics
    assert m["split"] == "val3"
    assert 0 <= m["miou"] <= 100 and 0 <= m["dice"] <= 100
    assert m["train_seconds"] > 0
    assert m["final_loss"] == pytest.approx(run["log"][-1]["loss"], abs=1e-4)


def test_source_amplitude_is_the_mean_band_of_the_training_frames(run) -> None:
    ckpt = load_checkpoint(run["out"])
    amp = ckpt.source_amplitude
    b = int(min(SIZE) * ckpt.source_amplitude_beta)
    assert amp.shape == (3, 2 * b, 2 * b) and torch.isfinite(amp).all()
    images, _ = resized(run["root"], run["splits"]["train2"])
    spectrum = np.abs(np.fft.fftshift(np.fft.fft2(images.double().numpy() / 255, axes=(-2, -1)), axes=(-2, -1)))
    ch, cw = SIZE[0] // 2, SIZE[1] // 2
    expected = spectrum[..., ch - b:ch + b, cw - b:cw + b].mean(0)
    np.testing.assert_allclose(amp.double().numpy(), expected, rtol=1e-4, atol=1e-4)


def test_checkpoint_model_reproduces_recorded_validation(run) -> None:
    ckpt = load_checkpoint(run["out"])
    model = ckpt.build_model()
    images, labels = resized(run["root"], run["splits"]["val3"])
    with torch.no_grad():
        pred = model(images.float() / 255).argmax(1).numpy()
    assert pred.shape == labels.shape
    target = labels.numpy()
    keep = target != 11
    mat = np.zeros((11, 11), np.int64)
    np.add.at(mat, (target[keep], pred[keep]), 1)
    tp = np.diag(mat)
    union = mat.sum(0) + mat.sum(1) - tp
    present = (mat.sum(0) + mat.sum(1)) > 0
    miou = 100 * (tp[present] / union[present]).mean()
    # the checkpoint stores fp16 weights, so a few pixels may flip: allow a small difference
    assert miou == pytest.approx(ckpt.metrics["miou"], abs=1.0)

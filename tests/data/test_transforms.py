"""data/transforms.py: the one uint8 HxWx3 -> float [0, 1] conversion, and a split loaded at a size."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from driftseg.data.folder import FrameFolder
from driftseg.data.transforms import load_frames, pixels, to_tensor, to_unit


def rgb(h=5, w=7, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_pixels_is_a_channel_first_view_of_the_array() -> None:
    image = rgb()
    out = pixels(image)
    assert out.shape == (3, 5, 7) and out.dtype == torch.uint8
    assert out.data_ptr() == torch.from_numpy(image).data_ptr()  # no copy
    for c in range(3):
        np.testing.assert_array_equal(out[c].numpy(), image[..., c])


@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 4), (3, 5, 7)])
def test_pixels_refuses_what_is_not_hxwx3(shape) -> None:
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        pixels(np.zeros(shape, np.uint8))


@pytest.mark.parametrize(("batch", "shape"), [(True, (1, 3, 5, 7)), (False, (3, 5, 7))])
def test_to_tensor_scales_to_the_unit_interval(batch, shape) -> None:
    image = rgb()
    image[0, 0] = [0, 128, 255]
    out = to_tensor(image, batch=batch)
    assert out.shape == shape and out.dtype == torch.float32
    expected = torch.from_numpy(image.astype(np.float32) / 255).permute(2, 0, 1)
    torch.testing.assert_close(out.reshape(3, 5, 7), expected, rtol=0, atol=1e-7)
    assert out.reshape(3, 5, 7)[:, 0, 0].tolist() == [0.0, pytest.approx(128 / 255), 1.0]
    assert image[0, 0].tolist() == [0, 128, 255]  # the array is left as it was


def test_to_unit_leaves_float_frames_alone() -> None:
    frames = torch.rand(2, 3, 4, 4)
    assert to_unit(frames) is frames
    u8 = torch.tensor([[0, 51, 255]], dtype=torch.uint8)
    out = to_unit(u8)
    assert out.dtype == torch.float32 and out.tolist() == [[0.0, pytest.approx(0.2), 1.0]]
    assert u8.dtype == torch.uint8 and u8.tolist() == [[0, 51, 255]]


@pytest.fixture
def folder(tmp_path) -> FrameFolder:
    rng = np.random.default_rng(0)
    root = tmp_path / "frames"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for name in ("a", "b", "t"):
        Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(root / "images" / f"{name}.png")
    for name in ("a", "b"):  # t has no label: an unlabelled split
        label = np.zeros((20, 30), np.uint8)
        label[:, 15:] = 3
        Image.fromarray(label).save(root / "labels" / f"{name}.png")
    (root / "splits.json").write_text(json.dumps({"train": ["a", "b"], "target": ["t"]}))
    return FrameFolder.open(root)


def test_load_frames_resizes_images_and_labels(folder) -> None:
    images, labels = load_frames(folder, "train", (10, 16), "cpu")
    assert images.shape == (2, 3, 10, 16) and images.dtype == torch.uint8
    assert labels.shape == (2, 10, 16) and labels.dtype == torch.uint8
    assert set(labels.unique().tolist()) == {0, 3}  # nearest: no class in between
    full = pixels(folder.read_image("a")).float()[None]
    expected = torch.nn.functional.interpolate(full, size=(10, 16), mode="bilinear", antialias=True)
    assert (images[0].float() - expected[0]).abs().max() <= 1  # rounded to uint8


def test_load_frames_without_labels_reads_none(folder) -> None:
    images = load_frames(folder, "target", (10, 16), "cpu", labels=False)
    assert isinstance(images, torch.Tensor) and images.shape == (1, 3, 10, 16)
    with pytest.raises(FileNotFoundError, match="no label"):
        load_frames(folder, "target", (10, 16), "cpu")

"""service/imaging.py: JPEG headers read without decoding, JPEGs decoded in batches as PIL decodes
them one by one, and a broken JPEG failing alone."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from driftseg.service import imaging
from driftseg.service.errors import PayloadTooLarge, Unprocessable

CPU = torch.device("cpu")


def encoded(rgb: np.ndarray, fmt: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format=fmt)
    return out.getvalue()


def test_header_of_a_jpeg_names_its_size_and_other_formats_are_left_to_pil(camvid_jpegs):
    jpeg = imaging.read_jpeg_header(camvid_jpegs[0], max_pixels=480 * 360)
    assert jpeg.shape == (1, 3, 360, 480) and jpeg.data == camvid_jpegs[0]
    grey = np.full((5, 7), 90, dtype=np.uint8)
    assert imaging.read_jpeg_header(encoded(grey, "JPEG"), 100).shape == (1, 3, 5, 7)
    assert imaging.read_jpeg_header(encoded(grey, "PNG"), 100) is None
    with pytest.raises(PayloadTooLarge, match="DRIFTSEG_MAX_IMAGE_PIXELS"):
        imaging.read_jpeg_header(camvid_jpegs[0], max_pixels=480 * 360 - 1)
    with pytest.raises(Unprocessable, match="cannot decode"):
        imaging.read_jpeg_header(b"not an image", 100)


def test_batched_decode_equals_pil(camvid_jpegs):
    items = [imaging.read_jpeg_header(data, 10**6) for data in camvid_jpegs]
    frames = imaging.decode_batch(items, 10**6, CPU)
    for data, frame in zip(camvid_jpegs, frames):
        expected = imaging.to_frame(imaging.decode(data, 10**6))
        assert frame.shape == expected.shape and frame.dtype == torch.float32
        assert (frame - expected).abs().max() <= 1 / 255  # both libjpeg-turbo; no rounding apart


def test_a_broken_jpeg_fails_alone_and_frames_pass_through(camvid_jpegs):
    good = imaging.read_jpeg_header(camvid_jpegs[0], 10**6)
    cut = camvid_jpegs[1][: len(camvid_jpegs[1]) // 2]
    broken = imaging.read_jpeg_header(cut, 10**6)  # the header is whole, the pixels are not
    assert broken is not None
    ready = torch.rand(1, 3, 360, 480)
    out = imaging.decode_batch([good, broken, ready], 10**6, CPU)
    torch.testing.assert_close(out[0], imaging.to_frame(imaging.decode(camvid_jpegs[0], 10**6)), atol=1 / 255, rtol=0)
    assert isinstance(out[1], Unprocessable) and "decode" in str(out[1])
    assert out[2] is ready



def test_pixels_become_frames_in_decode_batch_and_group_with_jpegs(camvid_jpegs):
    rgb = imaging.decode(camvid_jpegs[0], 10**6)
    before = rgb.copy()
    pixels = imaging.pixels_view(rgb)
    assert pixels.dtype == torch.uint8 and pixels.data_ptr() == torch.from_numpy(rgb).data_ptr()  # a view, no work
    jpeg = imaging.read_jpeg_header(camvid_jpegs[1], 10**6)
    assert tuple(pixels.shape) == jpeg.shape  # the batcher puts them in one batch
    out = imaging.decode_batch([pixels, jpeg], 10**6, CPU)
    torch.testing.assert_close(out[0], torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255)
    assert out[1].dtype == torch.float32 and out[1].shape == out[0].shape
    assert np.array_equal(rgb, before)  # the request's pixels (an overlay blends them) are left as they were


@pytest.mark.gpu
def test_gpu_decode_never_writes_memory_queued_kernels_still_read(camvid_jpegs):
    """pytorch/vision#9606: nvJPEG's output blocks come from the caching allocator while kernels
    queued on our stream may still read them. Fill tensors, queue a long kernel and reductions over
    them, free them, decode: every reduction must see the values it was queued with."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    device = torch.device("cuda")
    items = [imaging.read_jpeg_header(data, 10**6) for data in camvid_jpegs] * 4
    busy = torch.randn(4096, 4096, device=device)
    for value in range(20):
        tensors = [torch.full((3 * 360 * 480,), float(value), device=device) for _ in items]
        torch.cuda.synchronize()
        for _ in range(8):
            busy = busy @ busy / busy.norm()  # keeps the stream busy while the reductions wait behind it
        sums = [t.sum() for t in tensors]
        del tensors  # their blocks go back to the allocator with the reductions still queued
        frames = imaging.decode_batch(items + [torch.rand(1, 3, 360, 480)], 10**6, device)
        assert all(f.device.type == "cuda" for f in frames)  # a frame PIL decoded joins them there
        torch.cuda.synchronize()
        assert all(s.item() == value * 3 * 360 * 480 for s in sums), f"a queued reduction read decoded pixels ({value})"


def turned_jpeg(rgb: np.ndarray, orientation: int) -> bytes:
    """A JPEG of `rgb` as stored, with an EXIF orientation tag telling viewers how to turn it."""
    exif = Image.Exif()
    exif[imaging.EXIF_ORIENTATION] = orientation
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="JPEG", quality=95, exif=exif)
    return out.getvalue()


def test_exif_orientation_is_applied_and_turned_jpegs_skip_the_batched_decoder():
    stored = np.zeros((6, 10, 3), dtype=np.uint8)
    stored[:2, :, 0] = 255  # a red band along the stored top
    data = turned_jpeg(stored, 6)  # 6: shown turned 90 degrees clockwise
    as_stored = np.array(Image.open(io.BytesIO(data)).convert("RGB"))
    upright = imaging.decode(data, 100)
    assert upright.shape == (10, 6, 3) and np.array_equal(upright, np.rot90(as_stored, k=-1))
    assert upright[:, -2:, 0].min() > 200 and upright[:, :2, 0].max() < 50  # the band is now on the right
    assert imaging.read_jpeg_header(data, 100) is None  # PIL decodes it, upright, on every decode setting
    assert imaging.read_jpeg_header(turned_jpeg(stored, 1), 100).shape == (1, 3, 6, 10)

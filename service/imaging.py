"""Image bytes in and out: decode a JPEG/PNG/WebP frame (one at a time with PIL, or JPEGs in batches
with torchvision: nvJPEG on a GPU), encode a label map as PNG, a colour overlay as JPEG, or count
the pixels of each class. Functions over bytes, numpy and tensors."""
import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.io import ImageReadMode, decode_jpeg

from driftseg.data.transforms import pixels, to_tensor, to_unit
from driftseg.service.errors import PayloadTooLarge, Unprocessable

MEDIA_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}
FORMATS = list(MEDIA_TYPES.values())
EXIF_ORIENTATION = 0x0112  # the EXIF tag: 1 upright, 2-8 mirrored and/or turned


@dataclass(frozen=True)
class EncodedJPEG:
    """A JPEG whose header has been read and its size checked; `decode_batch` decodes its pixels."""

    data: bytes
    height: int
    width: int

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """The shape of the frame it decodes to, which the batcher groups frames by."""
        return 1, 3, self.height, self.width


def _open(data: bytes, max_pixels: int, read):
    """`read(image)` on the opened image, once its header's pixel count is checked; PIL's errors
    turned into the service's."""
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise PayloadTooLarge(f"the image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels} "
                                      "(DRIFTSEG_MAX_IMAGE_PIXELS): send a smaller frame")
            return read(im)
    except PayloadTooLarge:
        raise
    except Image.DecompressionBombError as e:
        raise PayloadTooLarge(f"the image is far over the pixel limit of {max_pixels} ({e})") from None
    except Image.UnidentifiedImageError:  # its message names an internal BytesIO, not the fault
        raise Unprocessable("cannot decode the body as a JPEG, PNG or WebP image: it is none of them, or is cut "
                            f"short (it starts with {data[:8]!r})") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise Unprocessable(f"cannot decode the body as a JPEG, PNG or WebP image: {e}") from None


def decode(data: bytes, max_pixels: int) -> np.ndarray:
    """RGB uint8 [H, W, 3], turned as its EXIF orientation says. Only JPEG, PNG and WebP decoders are
    tried; the pixel count is checked from the header before any pixel is decoded."""
    # upright as viewers show it (a phone photo's EXIF orientation applied), a writable copy for torch.from_numpy
    rgb = _open(data, max_pixels, lambda im: np.array(ImageOps.exif_transpose(im).convert("RGB")))
    if rgb.ndim != 3 or 0 in rgb.shape:
        raise Unprocessable(f"decoded an empty image of shape {list(rgb.shape)}")
    return rgb


def read_jpeg_header(data: bytes, max_pixels: int) -> EncodedJPEG | None:
    """The frame as an `EncodedJPEG` when it is an upright colour or grey JPEG, its size read from the
    header and checked; None for anything else (PNG, WebP, CMYK JPEG, a JPEG whose EXIF orientation
    turns it), which `decode` takes. torchvision's batched decoder applies EXIF orientation on the CPU
    only (not nvJPEG), so turned frames always go through PIL."""
    def header(im):
        w, h = im.size
        upright = im.getexif().get(EXIF_ORIENTATION, 1) == 1
        return EncodedJPEG(data, h, w) if im.format == "JPEG" and im.mode in ("RGB", "L") and w * h and upright else None

    return _open(data, max_pixels, header)


def decode_batch(items: list, max_pixels: int, device: torch.device) -> list:
    """Frames [1, 3, H, W] in [0, 1] on `device` for `items` (frames already, uint8 pixels PIL
    decoded as `pixels_view` gives them, or `EncodedJPEG`s), the JPEGs decoded by one torchvision call
    (nvJPEG on a GPU). Which frame broke a batch the call does not say, so then each is decoded on its
    own by PIL; one that fails there is answered by the exception in its place, and only it fails.
    Every frame moves to `device`, so that a batch of both kinds is one tensor."""
    out = [to_unit(item.to(device)) if isinstance(item, torch.Tensor) else item for item in items]
    jpegs = [i for i, item in enumerate(items) if isinstance(item, EncodedJPEG)]
    if not jpegs:
        return out
    try:
        images = _decode_jpegs([torch.frombuffer(bytearray(items[i].data), dtype=torch.uint8) for i in jpegs], device)
        decoded = [to_unit(image[None]) for image in images]
    except RuntimeError:
        decoded = []
        for i in jpegs:
            try:
                decoded.append(to_frame(decode(items[i].data, max_pixels)).to(device))
            except Unprocessable as e:
                decoded.append(e)
    for i, frame in zip(jpegs, decoded):
        out[i] = frame
    return out


def _decode_jpegs(datas: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    if device.type != "cuda":
        return decode_jpeg(datas, mode=ImageReadMode.RGB)
    # torchvision's nvJPEG decoder writes its outputs from a CUDA stream of its own without waiting for
    # the caller's (pytorch/vision#9606): memory that kernels queued on our stream still read can be
    # handed to it by the caching allocator and overwritten. With our stream drained first there is
    # nothing to overwrite, and draining it after makes the decoded frames complete before we use them.
    stream = torch.cuda.current_stream(device)
    stream.synchronize()
    images = decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)
    torch.cuda.synchronize(device)
    return images


def pixels_view(rgb: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 pixels as a [1, 3, H, W] uint8 tensor: a view, so no work on the calling thread."""
    return pixels(rgb)[None]


def to_frame(rgb: np.ndarray) -> torch.Tensor:
    """[1, 3, H, W] float in [0, 1]: what Pipeline.step takes."""
    return to_tensor(rgb)


def encode_labels(labels: np.ndarray) -> bytes:
    """A single-channel PNG: 8-bit where the classes fit, else 16-bit."""
    if labels.max(initial=0) < 256:
        im = Image.fromarray(labels.astype(np.uint8))  # mode L
    else:
        im = Image.fromarray(labels.astype(np.uint16))
    out = io.BytesIO()
    im.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def overlay(rgb: np.ndarray, labels: np.ndarray, palette: np.ndarray, opacity: float = 0.5) -> np.ndarray:
    """The frame blended with its classes' palette colours, RGB uint8 [H, W, 3]."""
    colours = palette[labels].astype(np.float32)
    blend = (1 - opacity) * rgb.astype(np.float32) + opacity * colours
    return blend.round().clip(0, 255).astype(np.uint8)


def encode_overlay(rgb: np.ndarray, labels: np.ndarray, palette: np.ndarray, opacity: float = 0.5,
                   quality: int = 85) -> bytes:
    """The frame blended with its classes' palette colours, as a JPEG."""
    return encode_jpeg(overlay(rgb, labels, palette, opacity), quality)


def encode_jpeg(rgb: np.ndarray, quality: int = 85) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def histogram(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Pixels of each class, [num_classes]."""
    return np.bincount(labels.ravel(), minlength=num_classes)[:num_classes]

"""Image bytes in and out: decode a JPEG/PNG/WebP frame, encode a label map as PNG, a colour overlay
as JPEG, or count the pixels of each class. Pure functions over bytes, numpy and tensors."""
import io

import numpy as np
import torch
from PIL import Image

from service.errors import PayloadTooLarge, Unprocessable

MEDIA_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}
FORMATS = list(MEDIA_TYPES.values())


def decode(data: bytes, max_pixels: int) -> np.ndarray:
    """RGB uint8 [H, W, 3]. Only JPEG, PNG and WebP decoders are tried; the pixel count is checked
    from the header before any pixel is decoded."""
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise PayloadTooLarge(f"the image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels} "
                                      "(DRIFTSEG_MAX_IMAGE_PIXELS): send a smaller frame")
            rgb = np.array(im.convert("RGB"))  # a writable copy, for torch.from_numpy
    except PayloadTooLarge:
        raise
    except Image.DecompressionBombError as e:
        raise PayloadTooLarge(f"the image is far over the pixel limit of {max_pixels} ({e})") from None
    except Image.UnidentifiedImageError:  # its message names an internal BytesIO, not the fault
        raise Unprocessable("cannot decode the body as a JPEG, PNG or WebP image: it is none of them, or is cut "
                            f"short (it starts with {data[:8]!r})") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise Unprocessable(f"cannot decode the body as a JPEG, PNG or WebP image: {e}") from None
    if rgb.ndim != 3 or 0 in rgb.shape:
        raise Unprocessable(f"decoded an empty image of shape {list(rgb.shape)}")
    return rgb


def to_frame(rgb: np.ndarray) -> torch.Tensor:
    """[1, 3, H, W] float in [0, 1]: what Pipeline.step takes."""
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float().div_(255)


def encode_labels(labels: np.ndarray) -> bytes:
    """A single-channel PNG: 8-bit where the classes fit, else 16-bit."""
    if labels.max(initial=0) < 256:
        im = Image.fromarray(labels.astype(np.uint8))  # mode L
    else:
        im = Image.fromarray(labels.astype(np.uint16))
    out = io.BytesIO()
    im.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def encode_overlay(rgb: np.ndarray, labels: np.ndarray, palette: np.ndarray, opacity: float = 0.5,
                   quality: int = 85) -> bytes:
    """The frame blended with its classes' palette colours, as a JPEG."""
    colours = palette[labels].astype(np.float32)
    blend = (1 - opacity) * rgb.astype(np.float32) + opacity * colours
    out = io.BytesIO()
    Image.fromarray(blend.round().clip(0, 255).astype(np.uint8)).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def histogram(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Pixels of each class, [num_classes]."""
    return np.bincount(labels.ravel(), minlength=num_classes)[:num_classes]

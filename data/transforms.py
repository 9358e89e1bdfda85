"""Frames as the networks take them: uint8 HxWx3 arrays (as PIL decodes them) to tensors [3, H, W]
or [1, 3, H, W], float in [0, 1]; and a whole split of a frame folder (or any frames), resized, on a device."""
from collections.abc import Iterable

import numpy as np
import torch
from torchvision.transforms import v2

from driftseg.data.folder import FrameFolder


def pixels(image: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 -> uint8 [3, H, W]: a view of the array, no copy."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape [H, W, 3], got {list(image.shape)}")
    return torch.from_numpy(image).permute(2, 0, 1)


def to_unit(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames (any shape) as float in [0, 1]; frames already float are returned as they are."""
    return frames.float().div_(255) if frames.dtype == torch.uint8 else frames


def to_tensor(image: np.ndarray, batch: bool = True) -> torch.Tensor:
    """uint8 HxWx3 -> float [1, 3, H, W] in [0, 1] (what Pipeline.step takes), or [3, H, W] with
    `batch=False`."""
    chw = pixels(image)
    return to_unit(chw[None] if batch else chw)


def stack_resized(images: Iterable[np.ndarray], size: tuple[int, int], device) -> torch.Tensor:
    """uint8 HxWx3 arrays of any sizes as one uint8 tensor [N, 3, H, W] at `size`, on `device`."""
    resized = [v2.functional.resize(pixels(image), list(size), antialias=True) for image in images]
    return torch.stack(resized).to(device)


def load_frames(folder: FrameFolder, split: str, size: tuple[int, int], device, labels: bool = True):
    """A split's frames as uint8 tensors [N, 3, H, W] (and labels [N, H, W]) at `size`, on `device`."""
    names = folder.check_split(split) if labels else folder.frames(split)
    images = stack_resized((folder.read_image(name) for name in names), size, device)
    if not labels:
        return images
    targets = [v2.functional.resize(torch.from_numpy(folder.read_label(name))[None], list(size),
                                    v2.InterpolationMode.NEAREST)[0] for name in names]
    return images, torch.stack(targets).to(device)

"""Frames as the networks take them: uint8 HxWx3 arrays (as PIL decodes them) to tensors [3, H, W]
or [1, 3, H, W], float in [0, 1]; and a whole split of a frame folder, resized, on a device."""
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


def load_frames(folder: FrameFolder, split: str, size: tuple[int, int], device, labels: bool = True):
    """A split's frames as uint8 tensors [N, 3, H, W] (and labels [N, H, W]) at `size`, on `device`."""
    images, targets = [], []
    for name in folder.check_split(split) if labels else folder.frames(split):
        images.append(v2.functional.resize(pixels(folder.read_image(name)), list(size), antialias=True))
        if labels:
            label = torch.from_numpy(folder.read_label(name))[None]
            targets.append(v2.functional.resize(label, list(size), v2.InterpolationMode.NEAREST)[0])
    images = torch.stack(images).to(device)
    return (images, torch.stack(targets).to(device)) if labels else images

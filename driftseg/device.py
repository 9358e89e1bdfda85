"""The device a command runs on, from what the user asked for: `auto`, `cpu` or `cuda`."""
import platform

import torch

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str) -> torch.device:
    """`auto`: cuda where torch sees a GPU, else cpu; `cuda` where there is none is a ValueError."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda was asked for but torch sees no CUDA device: use cpu or auto")
    return torch.device(device)


def device_name(device: torch.device) -> str:
    """What the device is, for result files: the GPU's name, or the CPU's."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()

"""`driftseg calibrate`: store in a checkpoint what in-domain frames look like to the automatic
mode's shift and switch scores (adapters/auto.py), measured on a split of the source domain, or on a
plain folder of frames (`--frames DIR`): a camera's model calibrated on the camera's own frames takes
them as its domain, so that auto leaves its statistics alone there rather than re-estimating them."""
import argparse
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from driftseg.adapters.auto import ShiftCalibration, calibrate
from driftseg.adapters.ema_bn import AdaptedNet
from driftseg.adapters.pipeline import to_input_size
from driftseg.data.folder import FrameFolder
from driftseg.data.sources import FrameSource
from driftseg.data.transforms import to_tensor
from driftseg.models.checkpoint import DEFAULT_CHECKPOINT, Checkpoint, load_checkpoint, save_checkpoint
from driftseg.training.target_folder import TargetFolder


def shift_calibration(ckpt: Checkpoint, frames: Iterable[torch.Tensor], momentum: float, split: str,
                      device: str | torch.device = "cpu") -> ShiftCalibration:
    """The calibration of `ckpt` on in-domain `frames` of `split` ([1, 3, H, W] each, in [0, 1], at
    any size: they are resized to the checkpoint's input size)."""
    adapted = AdaptedNet(ckpt.build_model(device)).eval()
    return calibrate(adapted, (to_input_size(frame, ckpt.input_size) for frame in frames), momentum, split)


def inherited_momentum(parent: Checkpoint) -> float:
    """The EMA momentum floor `parent` was calibrated for (0.1 without a calibration): a checkpoint made
    from it is calibrated for the same."""
    return parent.extra.get("shift", {}).get("momentum", 0.1)


def folder_frames(folder: FrameFolder, split: str) -> Iterator[torch.Tensor]:
    """A split's frames one at a time, as read: [1, 3, H, W] in [0, 1]."""
    return (to_tensor(folder.read_image(name)) for name in folder.frames(split))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="driftseg calibrate", description=__doc__)
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="rewritten in place, atomically")
    p.add_argument("--data", help="frame folder (default: $DRIFTSEG_DATA or ../shared/data/camvid)")
    p.add_argument("--split", default="source_val", help="in-domain frames (no labels are read)")
    p.add_argument("--frames", type=Path, help="a folder of in-domain images instead of --split (a camera's frames)")
    p.add_argument("--momentum", type=float, help="the EMA momentum floor auto will run with (default: the one "
                   "the checkpoint was calibrated for, else 0.1)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = p.parse_args(argv)
    try:
        ckpt = load_checkpoint(args.checkpoint)
        if args.frames:
            name, frames = str(args.frames), (to_tensor(image) for _, image in FrameSource(TargetFolder.open(args.frames).path))
        else:
            name, frames = args.split, folder_frames(FrameFolder.open(args.data), args.split)
        momentum = args.momentum if args.momentum is not None else inherited_momentum(ckpt)
        cal = shift_calibration(ckpt, frames, momentum, name, args.device)
    except (ValueError, KeyError, FileNotFoundError) as e:
        p.exit(2, f"driftseg calibrate: error: {e}\n")
    ckpt.extra["shift"] = cal.to_dict()
    save_checkpoint(ckpt, args.checkpoint)
    print(f"calibrated the shift score on {cal.frames} frames of {cal.split}: {len(cal.tau)} BN layers, "
          f"tau median {cal.tau.median():.3g}, kappa median {cal.kappa.median():.3g}; wrote {args.checkpoint}")

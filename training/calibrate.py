"""`driftseg calibrate`: store in a checkpoint what in-domain frames look like to the automatic
mode's shift and switch scores (adapters/auto.py), measured on a split of the source domain."""
import argparse
from pathlib import Path

import torch

from driftseg.adapters.auto import ShiftCalibration, calibrate
from driftseg.adapters.ema_bn import AdaptedNet
from driftseg.adapters.pipeline import to_input_size
from driftseg.data.folder import FrameFolder
from driftseg.data.transforms import to_tensor
from driftseg.models.checkpoint import DEFAULT_CHECKPOINT, Checkpoint, load_checkpoint, save_checkpoint


def shift_calibration(ckpt: Checkpoint, folder: FrameFolder, split: str, momentum: float,
                      device: str | torch.device = "cpu") -> ShiftCalibration:
    adapted = AdaptedNet(ckpt.build_model(device)).eval()
    frames = (to_input_size(to_tensor(folder.read_image(name)), ckpt.input_size) for name in folder.frames(split))
    return calibrate(adapted, frames, momentum, split)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="driftseg calibrate", description=__doc__)
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="rewritten in place, atomically")
    p.add_argument("--data", help="frame folder (default: $DRIFTSEG_DATA or ../shared/data/camvid)")
    p.add_argument("--split", default="source_val", help="in-domain frames (no labels are read)")
    p.add_argument("--momentum", type=float, default=0.1, help="the EMA momentum floor auto will run with")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = p.parse_args(argv)
    try:
        ckpt = load_checkpoint(args.checkpoint)
        cal = shift_calibration(ckpt, FrameFolder.open(args.data), args.split, args.momentum, args.device)
    except (ValueError, KeyError, FileNotFoundError) as e:
        p.exit(2, f"driftseg calibrate: error: {e}\n")
    ckpt.extra["shift"] = cal.to_dict()
    save_checkpoint(ckpt, args.checkpoint)
    print(f"calibrated the shift score on {cal.frames} frames of {args.split}: {len(cal.tau)} BN layers, "
          f"tau median {cal.tau.median():.3g}, kappa median {cal.kappa.median():.3g}; wrote {args.checkpoint}")

"""`driftseg train wise-ft`: an adapted checkpoint's weights interpolated with its parent's (WiSE-FT,
Wortsman et al. 2022): theta = (1 - alpha) * parent + alpha * adapted, BN statistics included.

Fine-tuning toward the target domain moves the weights along a path on which the source domain
loses; part of the way along it, the target gain is mostly kept and the source loss mostly recovered.
alpha 0.5 is the paper's choice without target labels to tune it on. No training, so no
iterations: the new checkpoint is validated on --val-split, gets its own shift calibration for the
automatic mode, and names both checkpoints as its parents. The few lines of interpolation are here
because our checkpoints keep fp16 weights and fp32 BN statistics, which no library's soup code reads.
"""
import argparse
import dataclasses
from pathlib import Path

import torch

from driftseg.data.folder import FrameFolder
from driftseg.data.transforms import load_frames, to_unit
from driftseg.models.checkpoint import (DEFAULT_CHECKPOINT, Checkpoint, compact_weights, git_commit, load_checkpoint,
                                        save_checkpoint)
from driftseg.training import common
from driftseg.training.calibrate import inherited_momentum, shift_calibration


def interpolate(parent: Checkpoint, adapted: Checkpoint, alpha: float) -> dict[str, torch.Tensor]:
    """float32 weights (1 - alpha) * parent + alpha * adapted; integer buffers (BN batch counts) the adapted's."""
    for field in ("arch", "arch_kwargs", "class_names", "input_size"):
        if getattr(parent, field) != getattr(adapted, field):
            raise ValueError(f"the adapted checkpoint has {field} {getattr(adapted, field)}, its parent "
                             f"{getattr(parent, field)}: interpolation needs the same network")
    if parent.weights.keys() != adapted.weights.keys():
        raise ValueError(f"the two checkpoints have different weights: {sorted(parent.weights.keys() ^ adapted.weights.keys())[:3]}")
    return {k: torch.lerp(parent.weights[k].float(), v.float(), alpha) if v.is_floating_point() else v.clone()
            for k, v in adapted.weights.items()}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="driftseg train wise-ft", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parent", type=Path, default=DEFAULT_CHECKPOINT, help="the checkpoint before adaptation (alpha 0)")
    p.add_argument("--adapted", type=Path, required=True, help="the checkpoint after adaptation (alpha 1)")
    p.add_argument("--alpha", type=float, default=0.5, help="how far from the parent toward the adapted checkpoint")
    p.add_argument("--out", type=Path, required=True, help="checkpoint file to write")
    p.add_argument("--data", help="frame folder (default: $DRIFTSEG_DATA or ../shared/data/camvid)")
    p.add_argument("--val-split", default="source_val", help="labelled frames for validation and the shift calibration")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = p.parse_args(argv)
    if not 0 <= args.alpha <= 1:
        p.error(f"--alpha must be in [0, 1], got {args.alpha}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    parent, adapted = load_checkpoint(args.parent), load_checkpoint(args.adapted)
    weights = interpolate(parent, adapted, args.alpha)
    folder = FrameFolder.open(args.data)
    images, labels = load_frames(folder, args.val_split, tuple(adapted.input_size), args.device)
    parents = [common.parent_record(args.parent, parent), common.parent_record(args.adapted, adapted)]
    ckpt = dataclasses.replace(adapted, weights=compact_weights(weights), git_commit=git_commit(), extra={},
                               config={**common.args_record(args), "job": "wise-ft", "parents": parents})
    model = ckpt.build_model(args.device)
    ckpt.metrics = {**common.evaluate(model, images, labels, ckpt.num_classes, folder.ignore_index),
                    "split": args.val_split}
    ckpt.extra["shift"] = shift_calibration(ckpt, (to_unit(x[None]) for x in images), inherited_momentum(adapted),
                                            args.val_split, args.device).to_dict()
    save_checkpoint(ckpt, args.out)
    print(f"wise-ft: alpha {args.alpha}: validation on {args.val_split}: mIoU {ckpt.metrics['miou']:.2f} (parent "
          f"{parent.metrics.get('miou', float('nan')):.2f}, adapted {adapted.metrics.get('miou', float('nan')):.2f}); "
          f"wrote {args.out}", flush=True)

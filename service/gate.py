"""The promotion gate of an adaptation job: whether a candidate model may serve a stream in place of the
model it was adapted from, decided without any label of the stream's frames.

    source    mIoU on the labelled source validation frames (DRIFTSEG_SOURCE_DATA): the candidate may lose
              at most `max_source_loss` points against its parent (what it knew must survive)
    held back on the stream's recorded frames held back from training (never seen by the job), both models
              frozen: the candidate's mean pixel entropy must not be above its parent's (it is at least as
              sure of the camera's frames it never trained on), and its class proportions may differ from
              the parent's by at most `max_class_shift` in total variation (a candidate that paints the
              scene with a few classes, the usual collapse of self-training, is sure of itself too)

Every figure goes into the report, passed or not. Runs in the job's child process (`python -m
driftseg.service.gate`), so that its CPU time is niced like the training's."""
import argparse
import json
import sys
from pathlib import Path

import torch

from driftseg.data.folder import FrameFolder
from driftseg.data.transforms import load_frames, to_unit
from driftseg.models.checkpoint import load_checkpoint, write_atomically
from driftseg.training.common import evaluate
from driftseg.training.target_folder import TargetFolder

MAX_SOURCE_LOSS = 1.0  # mIoU points on the source validation frames (the bound)
MAX_CLASS_SHIFT = 0.2  # total variation between the two models' class proportions on the held-back frames


@torch.no_grad()
def frozen_figures(model, frames: torch.Tensor, num_classes: int, batch: int = 4) -> dict:
    """Mean per-pixel entropy (nats) of the frozen model's softmax over uint8 frames [N, 3, H, W], and the
    proportion of pixels it gives each class."""
    entropy, counts, pixels = 0.0, torch.zeros(num_classes, dtype=torch.float64), 0
    for i in range(0, len(frames), batch):
        probs = model(to_unit(frames[i:i + batch])).softmax(1)
        entropy += float(-(probs * probs.clamp_min(1e-12).log()).sum(1).sum())
        counts += torch.bincount(probs.argmax(1).flatten(), minlength=num_classes).double()
        pixels += probs.shape[0] * probs.shape[2] * probs.shape[3]
    return {"entropy": entropy / pixels, "classes": (counts / pixels).tolist()}


def judge(parent: Path, candidate: Path, held_back: Path, source_data: Path, val_split: str = "source_val",
          max_source_loss: float = MAX_SOURCE_LOSS, max_class_shift: float = MAX_CLASS_SHIFT) -> dict:
    """The gate's report: each check with its figures, and `passed`."""
    ckpts = {"parent": load_checkpoint(parent), "candidate": load_checkpoint(candidate)}
    size = tuple(ckpts["parent"].input_size)
    folder = FrameFolder.open(source_data)
    val_images, val_labels = load_frames(folder, val_split, size, "cpu")
    target = TargetFolder.open(held_back).frames(size, "cpu")
    figures = {}
    for name, ckpt in ckpts.items():
        model = ckpt.build_model()
        figures[name] = {"source_miou": evaluate(model, val_images, val_labels, ckpt.num_classes,
                                                 folder.ignore_index)["miou"],
                         **frozen_figures(model, target, ckpt.num_classes)}
    source_loss = figures["parent"]["source_miou"] - figures["candidate"]["source_miou"]
    class_shift = 0.5 * sum(abs(a - b) for a, b in zip(figures["parent"]["classes"], figures["candidate"]["classes"]))
    checks = {
        "source": {"passed": source_loss <= max_source_loss, "parent_miou": figures["parent"]["source_miou"],
                   "candidate_miou": figures["candidate"]["source_miou"], "loss": round(source_loss, 2),
                   "max_loss": max_source_loss, "split": val_split, "frames": len(val_images)},
        "held_back_entropy": {"passed": figures["candidate"]["entropy"] <= figures["parent"]["entropy"],
                              "parent": round(figures["parent"]["entropy"], 4),
                              "candidate": round(figures["candidate"]["entropy"], 4), "frames": len(target)},
        "held_back_classes": {"passed": class_shift <= max_class_shift, "total_variation": round(class_shift, 4),
                              "max": max_class_shift, "frames": len(target)},
    }
    return {"passed": all(c["passed"] for c in checks.values()), "checks": checks}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m driftseg.service.gate", description=__doc__.split("\n\n")[0])
    p.add_argument("--parent", type=Path, required=True)
    p.add_argument("--candidate", type=Path, required=True)
    p.add_argument("--held-back", type=Path, required=True, help="a folder of the stream's frames the job never saw")
    p.add_argument("--source-data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="the report (JSON)")
    args = p.parse_args(argv)
    report = judge(args.parent, args.candidate, args.held_back, args.source_data)
    write_atomically(args.out, lambda f: f.write(json.dumps(report, indent=1).encode()))
    print(json.dumps(report), file=sys.stderr)


if __name__ == "__main__":
    main()

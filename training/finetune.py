"""What the offline adaptation jobs share. Each starts from a parent checkpoint, trains on labelled
source frames and unlabelled target frames (their labels are never read), and writes a checkpoint
the service loads: the parent's format fields and source amplitude band (FDA at serving time still
moves frames toward the source domain), the new weights with their BN statistics, a fresh shift
calibration for the automatic mode, and the checkpoints it was made from. The loop is loop.py's."""
import argparse
import dataclasses
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from driftseg.adapters.fda import band_size, low_freq_amplitude, transfer
from driftseg.models.checkpoint import DEFAULT_CHECKPOINT, Checkpoint, compact_weights, git_commit, load_checkpoint
from driftseg.training import common, loop
from driftseg.training.calibrate import inherited_momentum
from driftseg.training.target_folder import TargetFolder

DEFAULT_TARGET_SPLIT = "target_dusk"


def add_arguments(p: argparse.ArgumentParser, lr: float, iters: int) -> None:
    p.add_argument("--parent", type=Path, default=DEFAULT_CHECKPOINT, help="checkpoint to start from (default: the default checkpoint)")
    p.add_argument("--source-split", default="source_train", help="labelled source frames (of --data)")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--target-split", help=f"unlabelled target frames of --data: their labels are never read "
                                               f"(default: {DEFAULT_TARGET_SPLIT})")
    target.add_argument("--target-frames", type=Path, metavar="DIR",
                        help="unlabelled target frames: a plain folder of images (a camera's recording), in name "
                             "order, resized to the parent's input size")
    p.add_argument("--fda-beta", type=float, default=0.0,
                   help="add each source frame styled like a target frame beside it (FDA's amplitude swap; 0.01, "
                        "0.05, 0.09 in the paper; 0: off)")
    loop.add_arguments(p, iters=iters, batch_size=4, lr=lr, warmup=50, log_every=20, crop=None,
                       crop_help="training crop (default: the parent's)",
                       batch_help="source frames, and as many target frames, per process")


@contextmanager
def needs_source(job: str):
    """A missing labelled data folder or split, as the refusal of a job that cannot run without them."""
    try:
        yield
    except (FileNotFoundError, KeyError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise ValueError(f"{job} needs the labelled source data (--data, else $DRIFTSEG_DATA: a folder of images/, "
                         f"labels/ and splits.json with --source-split and --val-split): {message}") from None


class Job(loop.Job):
    """An adaptation job: the parent checkpoint, and the source (labelled), target (unlabelled) and
    validation frames at the parent's input size, on the device. The target frames are a split of
    the data folder, or a plain folder of images (`target`, whose files the resume checks)."""

    def __init__(self, name: str, args: argparse.Namespace):
        with needs_source(name):
            super().__init__(name, args)
        self.target: TargetFolder | None = None
        if args.target_frames:
            self.target = TargetFolder.open(args.target_frames)
            args.target_frames = self.target.path  # recorded resolved, as the data folder
        else:
            args.target_split = args.target_split or DEFAULT_TARGET_SPLIT
        self.parent: Checkpoint = load_checkpoint(args.parent)
        if self.parent.class_names != self.folder.class_names:
            raise ValueError(f"{args.parent} has classes {self.parent.class_names}, the data folder {self.folder.class_names}")
        size = tuple(self.parent.input_size)
        with needs_source(name):
            self.set_size(size, args.crop or self.parent.config.get("crop") or size)
            self.source_images, self.source_labels = self.frames(args.source_split)
        if self.target:
            self.target_images = self.target.frames(self.size, self.ctx.device)
        else:
            self.target_images = self.frames(args.target_split, labels=False)

    def fixed_args(self) -> dict:
        """loop.Job's, and the target folder's files: a resume refuses a folder whose files changed."""
        fixed = super().fixed_args()
        return {**fixed, "target_files": self.target.files} if self.target else fixed

    def config(self, parents: list[dict], **record) -> dict:
        target = {"target_folder": self.target.record()} if self.target else {}
        return super().config(parents, **target, **record)


def prepare(args: argparse.Namespace, name: str) -> Job:
    """Processes, seeds, the parent checkpoint and the frames of the three splits, on the device."""
    return Job(name, args)


def fda_style(source: torch.Tensor, target: torch.Tensor, beta: float) -> torch.Tensor:
    """Source frames [B, 3, H, W] in [0, 1] with the low-frequency amplitude of the target frame
    at the same index (FDA's source-to-target transfer, Yang & Soatto 2020); phase kept."""
    b = band_size(*source.shape[-2:], beta)
    return transfer(source, low_freq_amplitude(target, b), b, mode="swap") if b else source


def with_styled(xs: torch.Tensor, ys: torch.Tensor, xt: torch.Tensor, beta: float):
    """The labelled frames of a batch: the source frames, then (for beta > 0) the same frames
    styled like the target frames (fda_style) with the same labels. Only the plain source frames
    give the BN statistics (norms.source_first(model, len(xs))): styled frames are normalised as
    target frames are, and the checkpoint's statistics stay the source domain's."""
    if not beta:
        return xs, ys
    return torch.cat([xs, fda_style(xs, xt, beta)]), torch.cat([ys, ys])


def poly_adamw(params, args: argparse.Namespace, lr: float | None = None, betas=(0.9, 0.999)):
    """AdamW with the poly schedule (warm-up, then (1 - t)^0.9) over the job's iterations."""
    optimizer = torch.optim.AdamW(params, lr=lr or args.lr, betas=betas, weight_decay=args.weight_decay)
    return optimizer, common.poly_schedule(optimizer, args.iters, args.warmup)


def finish(job: Job, model: nn.Module, train_seconds: float, parents: list[tuple[Path, Checkpoint]] | None = None,
           **record) -> Checkpoint | None:
    """Validate `model` (a plain network of the parent's architecture) and, on the main process,
    write its checkpoint; `record` goes into the checkpoint's config (e.g. pseudo-label figures)."""
    args = job.args
    metrics = {**job.evaluate(model), "split": args.val_split, "train_seconds": round(train_seconds, 1)}
    if not job.ctx.main:
        return None
    parents = parents or [(args.parent, job.parent)]
    config = job.config([common.parent_record(path, ckpt) for path, ckpt in parents], **record)
    target = {"target_folder": str(job.target.path)} if job.target else {"target_split": args.target_split}
    data = {"root": str(job.folder.root), "source_split": args.source_split, "source_frames": len(job.source_images),
            **target, "target_frames": len(job.target_images)}
    ckpt = dataclasses.replace(job.parent, weights=compact_weights(model.state_dict()), config=config, data=data,
                               metrics=metrics, git_commit=git_commit(), extra={})
    job.finish(ckpt, momentum=inherited_momentum(job.parent))
    print(f"{job.name}: validation on {args.val_split}: mIoU {metrics['miou']:.2f} (parent "
          f"{job.parent.metrics.get('miou', float('nan')):.2f}); trained {train_seconds:.0f}s; wrote {args.out}",
          flush=True)
    return ckpt

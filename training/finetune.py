"""What the offline adaptation jobs share. Each starts from a parent checkpoint, trains on labelled
source frames and unlabelled target frames (their labels are never read), and writes a checkpoint
the service loads: the parent's format fields and source amplitude band (FDA at serving time still
moves frames toward the source domain), the new weights with their BN statistics, a fresh shift
calibration for the automatic mode, and the checkpoints it was made from."""
import argparse
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from driftseg.adapters.fda import band_size, low_freq_amplitude, transfer
from driftseg.data.folder import FrameFolder
from driftseg.data.transforms import load_frames
from driftseg.models.checkpoint import DEFAULT_CHECKPOINT, Checkpoint, compact_weights, git_commit, load_checkpoint, save_checkpoint
from driftseg.training import common
from driftseg.training.calibrate import shift_calibration


def add_arguments(p: argparse.ArgumentParser, lr: float, iters: int) -> None:
    p.add_argument("--data", help="frame folder (default: $DRIFTSEG_DATA or ../shared/data/camvid)")
    p.add_argument("--parent", type=Path, default=DEFAULT_CHECKPOINT, help="checkpoint to start from (default: the default checkpoint)")
    p.add_argument("--out", required=True, type=Path, help="checkpoint file to write (a .jsonl log beside it)")
    p.add_argument("--source-split", default="source_train", help="labelled source frames")
    p.add_argument("--target-split", default="target_dusk", help="unlabelled target frames: their labels are never read")
    p.add_argument("--val-split", default="source_val", help="labelled source frames for validation and calibration")
    p.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"), help="training crop (default: the parent's)")
    p.add_argument("--iters", type=int, default=iters)
    p.add_argument("--batch-size", type=int, default=4, help="source frames, and as many target frames, per process")
    p.add_argument("--lr", type=float, default=lr, help="the segmentation network's peak learning rate (AdamW)")
    p.add_argument("--weight-decay", type=float, default=1e-2)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--fda-beta", type=float, default=0.0,
                   help="add each source frame styled like a target frame beside it (FDA's amplitude swap; 0.01, "
                        "0.05, 0.09 in the paper; 0: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--val-every", type=int, default=0, help="validate every N iterations (0: only at the end)")


@dataclass
class Job:
    name: str
    args: argparse.Namespace
    ctx: common.Dist
    folder: FrameFolder
    parent: Checkpoint
    source_images: torch.Tensor  # uint8 [N, 3, H, W] at the parent's input size
    source_labels: torch.Tensor
    target_images: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    augment: Callable

    @property
    def ignore_index(self) -> int:
        return self.folder.ignore_index

    def batches(self, images: torch.Tensor, labels: torch.Tensor | None) -> common.Batches:
        return common.Batches(images, labels, self.args.batch_size, self.augment, self.ctx, self.args.seed)

    def evaluate(self, model: nn.Module) -> dict:
        return common.evaluate(model, self.val_images, self.val_labels, self.parent.num_classes, self.ignore_index)


def prepare(args: argparse.Namespace, name: str) -> Job:
    """Processes, seeds, the parent checkpoint and the frames of the three splits, on the device."""
    ctx = common.setup_distributed(args.device)
    torch.manual_seed(args.seed + ctx.rank)  # each process its own augmentation; DDP syncs the weights
    folder = FrameFolder.open(args.data)
    parent = load_checkpoint(args.parent)
    if parent.class_names != folder.class_names:
        raise ValueError(f"{args.parent} has classes {parent.class_names}, the data folder {folder.class_names}")
    size = tuple(parent.input_size)
    source_images, source_labels = load_frames(folder, args.source_split, size, ctx.device)
    val_images, val_labels = load_frames(folder, args.val_split, size, ctx.device)
    target_images = load_frames(folder, args.target_split, size, ctx.device, labels=False)
    crop = tuple(args.crop or parent.config.get("crop") or size)
    augment = common.augmentation(crop, folder.ignore_index, short_side=min(size))
    return Job(name, args, ctx, folder, parent, source_images, source_labels, target_images, val_images,
               val_labels, augment)


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


def run(job: Job, step: Callable[[int], dict[str, float]], model: nn.Module) -> float:
    """Call `step(it)` for every iteration, logging what it returns; the training seconds."""
    args = job.args
    progress = common.Progress(args.iters, args.log_every, args.out.with_suffix(".jsonl"), enabled=job.ctx.main)
    start = time.perf_counter()
    for it in range(args.iters):
        values = step(it)
        if args.val_every and (it + 1) % args.val_every == 0 and it + 1 < args.iters:
            values["val_miou"] = job.evaluate(model)["miou"]
        progress.update(it, **values)
    progress.close()
    return time.perf_counter() - start


def finish(job: Job, model: nn.Module, train_seconds: float, parents: list[tuple[Path, Checkpoint]] | None = None,
           **record) -> Checkpoint | None:
    """Validate `model` (a plain network of the parent's architecture) and, on the main process,
    write its checkpoint; `record` goes into the checkpoint's config (e.g. pseudo-label figures)."""
    args = job.args
    metrics = {**job.evaluate(model), "split": args.val_split, "train_seconds": round(train_seconds, 1)}
    if not job.ctx.main:
        return None
    parents = parents or [(args.parent, job.parent)]
    config = common.job_config(args, job.name, job.ctx, [common.parent_record(path, ckpt) for path, ckpt in parents],
                               **record)
    data = {"root": str(job.folder.root), "source_split": args.source_split, "source_frames": len(job.source_images),
            "target_split": args.target_split, "target_frames": len(job.target_images)}
    ckpt = dataclasses.replace(job.parent, weights=compact_weights(model.state_dict()), config=config, data=data,
                               metrics=metrics, git_commit=git_commit(), extra={})
    momentum = job.parent.extra.get("shift", {}).get("momentum", 0.1)
    ckpt.extra["shift"] = shift_calibration(ckpt, job.folder, args.val_split, momentum, job.ctx.device).to_dict()
    save_checkpoint(ckpt, args.out)
    print(f"{job.name}: validation on {args.val_split}: mIoU {metrics['miou']:.2f} (parent "
          f"{job.parent.metrics.get('miou', float('nan')):.2f}); trained {train_seconds:.0f}s; wrote {args.out}",
          flush=True)
    return ckpt

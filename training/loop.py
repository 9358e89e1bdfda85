"""The one training loop of the offline jobs (`train source`, `adversarial`, `seat`, `self-training`).

A job opens a `Job` (processes, seed, data folder), fixes its frame size (which reads the validation
frames, once: they serve validation and the shift calibration alike), builds its networks and
optimizers, and hands `Job.train` its step function (one iteration; it returns the values to log)
and its stateful parts by name. The loop logs every iteration (a line with ETA, a JSONL record),
validates every --val-every, writes the training state every --save-every and continues from
--resume (resume.py); `Job.finish` writes the checkpoint, once, with its shift calibration, and
removes the training state.
"""
import argparse
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from driftseg.data.folder import FrameFolder
from driftseg.data.transforms import load_frames, to_unit
from driftseg.models.checkpoint import Checkpoint, save_checkpoint
from driftseg.training import common
from driftseg.training.calibrate import shift_calibration
from driftseg.training.resume import TrainingState

# the arguments a resumed job may change: where it reads and writes, and how often it logs,
# validates and saves; every other one must be the same as in the run that wrote the state
FREE_ARGS = ("data", "out", "device", "log_every", "val_every", "save_every", "resume")


def add_arguments(p: argparse.ArgumentParser, *, iters: int, batch_size: int, lr: float, warmup: int,
                  log_every: int, crop: list[int] | None, crop_help: str, batch_help: str) -> None:
    """The flags every job has; the defaults that differ between jobs are the caller's."""
    p.add_argument("--data", help="frame folder (default: $DRIFTSEG_DATA or ../shared/data/camvid)")
    p.add_argument("--out", required=True, type=Path,
                   help="checkpoint file to write (a .jsonl log beside it, and a .state.pt while it runs)")
    p.add_argument("--val-split", default="source_val", help="labelled frames for validation and the shift calibration")
    p.add_argument("--crop", type=int, nargs=2, default=crop, metavar=("H", "W"), help=crop_help)
    p.add_argument("--iters", type=int, default=iters)
    p.add_argument("--batch-size", type=int, default=batch_size, help=batch_help)
    p.add_argument("--lr", type=float, default=lr, help="the segmentation network's peak learning rate (AdamW)")
    p.add_argument("--weight-decay", type=float, default=1e-2)
    p.add_argument("--warmup", type=int, default=warmup)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--log-every", type=int, default=log_every)
    p.add_argument("--val-every", type=int, default=0, help="validate every N iterations (0: only at the end)")
    p.add_argument("--save-every", type=int, default=100,
                   help="write the training state to OUT with suffix .state.pt every N iterations (0: never)")
    p.add_argument("--resume", type=Path, metavar="STATE",
                   help="continue a job that was cut off from its .state.pt file, with the same arguments")


@dataclass
class Trained:
    seconds: float  # training time, over every run of a resumed job
    last: dict[str, float] = field(default_factory=dict)  # what the last step returned (none if none ran)


class Job:
    """One run of an offline job: its processes, its data folder and validation frames, the loop."""

    def __init__(self, name: str, args: argparse.Namespace):
        self.name, self.args = name, args
        self.ctx = common.setup_distributed(args.device)
        torch.manual_seed(args.seed + self.ctx.rank)  # each process its own augmentation; DDP syncs the weights
        self.folder = FrameFolder.open(args.data)
        self.size: tuple[int, int] | None = None

    @property
    def ignore_index(self) -> int:
        return self.folder.ignore_index

    @property
    def num_classes(self) -> int:
        return len(self.folder.class_names)

    @property
    def state_path(self) -> Path:
        return self.args.out.with_suffix(".state.pt")

    def set_size(self, size, crop) -> None:
        """Train and validate at `size` (H, W), augment with `crop`, recorded as resolved; read the
        validation frames."""
        self.size = (int(size[0]), int(size[1]))
        self.args.crop = [int(c) for c in crop]
        self.val_images, self.val_labels = self.frames(self.args.val_split)
        self.augment = common.augmentation(tuple(self.args.crop), self.ignore_index, short_side=min(self.size))

    def frames(self, split: str, labels: bool = True):
        """A split at the job's size on its device: uint8 [N, 3, H, W] (and labels [N, H, W])."""
        if self.size is None:
            raise RuntimeError("set_size() first: the frames are read at the job's size")
        return load_frames(self.folder, split, self.size, self.ctx.device, labels)

    def batches(self, images: torch.Tensor, labels: torch.Tensor | None) -> common.Batches:
        return common.Batches(images, labels, self.args.batch_size, self.augment, self.ctx, self.args.seed)

    def evaluate(self, model: nn.Module) -> dict:
        return common.evaluate(model, self.val_images, self.val_labels, self.num_classes, self.ignore_index)

    def fixed_args(self) -> dict[str, Any]:
        """What a resumed run must share with the run that wrote its state: every argument but
        FREE_ARGS, and the data folder resolved."""
        kept = {k: v for k, v in common.args_record(self.args).items() if k not in FREE_ARGS}
        return {**kept, "data": str(self.folder.root)}

    def train(self, step: Callable[[int], dict[str, float]], parts: Mapping[str, Any], model: nn.Module) -> Trained:
        """Call `step(it)` for every iteration not yet done, logging what it returns; validate
        `model` every --val-every; save `parts` (anything with state_dict / load_state_dict) every
        --save-every, and restore them first from --resume."""
        args = self.args
        state = TrainingState(self.name, parts, self.fixed_args(), self.state_path, args.save_every,
                              write=self.ctx.main)
        done, earlier = state.load(args.resume) if args.resume else (0, 0.0)
        progress = common.Progress(args.iters, args.log_every, args.out.with_suffix(".jsonl"), self.ctx.main, done,
                                   earlier)
        start = time.perf_counter()
        values: dict[str, float] = {}
        for it in range(done, args.iters):
            values = step(it)
            if args.val_every and (it + 1) % args.val_every == 0 and it + 1 < args.iters:
                values["val_miou"] = self.evaluate(model)["miou"]
            progress.update(it, **values)
            state.maybe_save(it + 1, earlier + time.perf_counter() - start)
        progress.close()
        return Trained(earlier + time.perf_counter() - start, values)

    def validation_frames(self) -> Iterator[torch.Tensor]:
        """The validation frames one by one, [1, 3, H, W] in [0, 1]: what the calibration takes."""
        return (to_unit(image[None]) for image in self.val_images)

    def config(self, parents: list[dict], **record) -> dict:
        return common.job_config(self.args, self.name, self.ctx, parents, **record)

    def finish(self, ckpt: Checkpoint, momentum: float = 0.1) -> Checkpoint:
        """On the main process: measure the shift calibration of `ckpt` on the validation frames,
        write the checkpoint (once), and remove the training state (nothing is left to resume)."""
        ckpt.extra["shift"] = shift_calibration(ckpt, self.validation_frames(), momentum, self.args.val_split,
                                                self.ctx.device).to_dict()
        save_checkpoint(ckpt, self.args.out)
        self.state_path.unlink(missing_ok=True)
        return ckpt

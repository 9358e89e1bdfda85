"""`driftseg train source`: supervised training on labelled splits, from scratch or from a
checkpoint (`--init`; e.g. the dusk oracle: source_train and target_dusk with their labels)."""
import argparse
import time
from pathlib import Path

import torch
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

from driftseg.data.folder import FrameFolder
from driftseg.data.transforms import load_frames
from driftseg.models.registry import create_model, list_architectures
from driftseg.models.checkpoint import load_checkpoint, save_checkpoint
from driftseg.training import common
from driftseg.training.calibrate import shift_calibration
from driftseg.training.resume import TrainingState

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="driftseg train source", description=__doc__)
    p.add_argument("--data", help="frame folder (default: $DRIFTSEG_DATA or ../shared/data/camvid)")
    p.add_argument("--arch", default="lraspp_mobilenet_v3_large", choices=list_architectures())
    p.add_argument("--out", required=True, type=Path, help="checkpoint file to write")
    p.add_argument("--train-split", nargs="+", default=["source_train"], help="one or more labelled splits")
    p.add_argument("--init", type=Path, help="start from this checkpoint (its architecture and input size) "
                   "instead of from scratch")
    p.add_argument("--val-split", default="source_val")
    p.add_argument("--input-size", type=int, nargs=2, default=[360, 480], metavar=("H", "W"))
    p.add_argument("--crop", type=int, nargs=2, default=[320, 448], metavar=("H", "W"))
    p.add_argument("--iters", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=16, help="per process")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=1e-2)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--val-every", type=int, default=0, help="validate every N iterations (0: only at the end)")
    p.add_argument("--save-every", type=int, default=100,
                   help="write the training state to OUT with suffix .state.pt every N iterations (0: never)")
    p.add_argument("--resume", type=Path, metavar="STATE",
                   help="continue a job that was cut off from its .state.pt file, with the same arguments")
    return p.parse_args(argv)


# what a resumed job must share with the job that wrote its training state
FIXED_ARGS = ("arch", "train_split", "init", "val_split", "input_size", "crop", "iters", "batch_size", "lr",
              "weight_decay", "warmup", "seed")


def main(argv=None) -> None:
    args = parse_args(argv)
    ctx = common.setup_distributed(args.device)
    torch.manual_seed(args.seed)
    folder = FrameFolder.open(args.data)
    if args.init:
        parent = load_checkpoint(args.init)
        args.arch, args.input_size = parent.arch, parent.input_size
        model = parent.build_model(ctx.device)
    else:
        model = create_model(args.arch, len(folder.class_names), IMAGENET_MEAN, IMAGENET_STD).to(ctx.device)
    size = tuple(args.input_size)
    splits = [load_frames(folder, split, size, ctx.device) for split in args.train_split]
    images, labels = torch.cat([x for x, _ in splits]), torch.cat([y for _, y in splits])
    val_images, val_labels = load_frames(folder, args.val_split, size, ctx.device)

    model = model.to(memory_format=torch.channels_last)
    train_model = DistributedDataParallel(model) if ctx.world > 1 else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    schedule = common.poly_schedule(optimizer, args.iters, args.warmup)
    augment = common.augmentation(tuple(args.crop), folder.ignore_index, short_side=min(size))
    batches = common.Batches(images, labels, args.batch_size, augment, ctx, args.seed)
    out: Path = args.out
    fixed = {**{k: v for k, v in common.args_record(args).items() if k in FIXED_ARGS}, "data": str(folder.root)}
    state = TrainingState("source", {"model": model, "optimizer": optimizer, "schedule": schedule, "batches": batches},
                          fixed, out.with_suffix(".state.pt") if ctx.main else None, args.save_every)
    done, earlier_seconds = state.load(args.resume) if args.resume else (0, 0.0)
    progress = common.Progress(args.iters, args.log_every, out.with_suffix(".jsonl"), ctx.main, done, earlier_seconds)

    start = time.perf_counter()
    model.train()
    final_loss = float("nan")  # a job resumed after its last iteration only validates and writes
    for it in range(done, args.iters):
        x, y = next(batches)
        with torch.autocast(ctx.device.type, torch.bfloat16, enabled=ctx.device.type == "cuda"):
            loss = F.cross_entropy(train_model(x.contiguous(memory_format=torch.channels_last)), y,
                                   ignore_index=folder.ignore_index)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        values = {"loss": loss.item(), "lr": schedule.get_last_lr()[0]}
        final_loss = values["loss"]
        if args.val_every and (it + 1) % args.val_every == 0 and it + 1 < args.iters:
            values["val_miou"] = common.evaluate(model, val_images, val_labels, len(folder.class_names), folder.ignore_index)["miou"]
        progress.update(it, **values)
        state.maybe_save(it + 1, earlier_seconds + time.perf_counter() - start)
    progress.close()
    train_seconds = earlier_seconds + time.perf_counter() - start

    metrics = common.evaluate(model, val_images, val_labels, len(folder.class_names), folder.ignore_index)
    metrics.update(split=args.val_split, train_seconds=round(train_seconds, 1), final_loss=round(final_loss, 4))
    if ctx.main:
        config = common.job_config(args, "source", ctx, [common.parent_record(args.init, parent)] if args.init else [])
        data = {"root": str(folder.root), "train_split": args.train_split, "frames": len(images)}
        ckpt = common.write_checkpoint(out, model, args.arch, {}, folder, size, IMAGENET_MEAN, IMAGENET_STD,
                                       common.mean_amplitude(images), config, data, metrics)
        ckpt.extra["shift"] = shift_calibration(ckpt, folder, args.val_split, 0.1, ctx.device).to_dict()
        save_checkpoint(ckpt, out)
        if state.path:
            state.path.unlink(missing_ok=True)  # the job is done: nothing left to resume
        print(f"validation on {args.val_split}: mIoU {metrics['miou']:.2f}, Dice {metrics['dice']:.2f}; "
              f"trained {train_seconds:.0f}s; wrote {out}", flush=True)

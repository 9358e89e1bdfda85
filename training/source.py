"""`driftseg train source`: supervised training on labelled splits, from scratch or from a
checkpoint (`--init`; e.g. the dusk oracle: source_train and target_dusk with their labels)."""
import argparse
from pathlib import Path

import torch
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

from driftseg.models.checkpoint import Checkpoint, compact_weights, git_commit, load_checkpoint
from driftseg.models.registry import create_model, list_architectures
from driftseg.training import common, loop

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="driftseg train source", description=__doc__)
    p.add_argument("--arch", default="lraspp_mobilenet_v3_large", choices=list_architectures())
    p.add_argument("--train-split", nargs="+", default=["source_train"], help="one or more labelled splits")
    p.add_argument("--init", type=Path, help="start from this checkpoint (its architecture and input size) "
                   "instead of from scratch")
    p.add_argument("--input-size", type=int, nargs=2, default=[360, 480], metavar=("H", "W"))
    loop.add_arguments(p, iters=4000, batch_size=16, lr=2e-3, warmup=200, log_every=50, crop=[320, 448],
                       crop_help="training crop", batch_help="per process")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    job = loop.Job("source", args)
    parent = load_checkpoint(args.init) if args.init else None
    if parent:
        args.arch, args.input_size = parent.arch, parent.input_size
        model = parent.build_model(job.ctx.device)
    else:
        model = create_model(args.arch, job.num_classes, IMAGENET_MEAN, IMAGENET_STD).to(job.ctx.device)
    job.set_size(args.input_size, args.crop)
    splits = [job.frames(split) for split in args.train_split]
    images, labels = torch.cat([x for x, _ in splits]), torch.cat([y for _, y in splits])

    model = model.to(memory_format=torch.channels_last).train()
    train_model = DistributedDataParallel(model) if job.ctx.world > 1 else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    schedule = common.poly_schedule(optimizer, args.iters, args.warmup)
    batches = job.batches(images, labels)

    def step(it: int) -> dict[str, float]:
        x, y = next(batches)
        with common.mixed_precision(job.ctx.device):
            loss = F.cross_entropy(train_model(x.contiguous(memory_format=torch.channels_last)), y,
                                   ignore_index=job.ignore_index)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        return {"loss": loss.item(), "lr": schedule.get_last_lr()[0]}

    parts = {"model": model, "optimizer": optimizer, "schedule": schedule, "batches": batches}
    trained = job.train(step, parts, model)
    # a job resumed after its last iteration only validates and writes: no final loss
    metrics = {**job.evaluate(model), "split": args.val_split, "train_seconds": round(trained.seconds, 1),
               "final_loss": round(trained.last.get("loss", float("nan")), 4)}
    if not job.ctx.main:
        return
    ckpt = Checkpoint(
        arch=args.arch, arch_kwargs={}, class_names=list(job.folder.class_names),
        palette=[list(c) for c in job.folder.palette], mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD),
        input_size=list(job.size), weights=compact_weights(model.state_dict()),
        source_amplitude=common.mean_amplitude(images), source_amplitude_beta=common.AMPLITUDE_BETA,
        config=job.config([common.parent_record(args.init, parent)] if parent else []),
        data={"root": str(job.folder.root), "train_split": args.train_split, "frames": len(images)},
        metrics=metrics, git_commit=git_commit(),
    )
    job.finish(ckpt)
    print(f"validation on {args.val_split}: mIoU {metrics['miou']:.2f}, Dice {metrics['dice']:.2f}; "
          f"trained {trained.seconds:.0f}s; wrote {args.out}", flush=True)

"""`driftseg train self-training`: pseudo-label the unlabelled target frames, then train on source
labels and target pseudo-labels (the self-supervised step of FDA, Yang & Soatto 2020). With several teachers the
pseudo-labels come from the mean of their softmax: FDA's multi-band transfer (MBT), distilled into
the one network the service runs.

Each target pixel takes the class of the teachers' mean softmax. Class-wise thresholds keep the most
confident --top-fraction of each class's pixels, capped at --max-threshold (CBST / IAST), so rare
classes keep pseudo-labels; the rest are ignored. --prototypes denoises further in the spirit of
ProDA (Zhang et al. 2021) and G2L: class prototypes are the mean normalised backbone feature of each
class's kept pixels, and a pixel whose feature is nearer another class's prototype is ignored too.
"""
import argparse
from pathlib import Path

import torch
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

from driftseg.data.transforms import to_unit
from driftseg.models.checkpoint import Checkpoint, load_checkpoint
from driftseg.training import common, finetune, norms
from driftseg.training.networks import FeatureTap


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="driftseg train self-training", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    finetune.add_arguments(p, lr=2e-4, iters=1000)
    p.add_argument("--teachers", type=Path, nargs="+",
                   help="checkpoints whose mean softmax labels the target frames (default: --parent); several: MBT")
    p.add_argument("--top-fraction", type=float, default=0.5, help="of each class's pixels, the most confident kept")
    p.add_argument("--max-threshold", type=float, default=0.9, help="a pixel at least this confident is always kept")
    p.add_argument("--prototypes", action="store_true", help="also drop pixels nearer another class's feature prototype")
    p.add_argument("--lambda-target", type=float, default=1.0, help="weight of the target pseudo-label loss")
    args = p.parse_args(argv)
    if not 0 < args.top_fraction <= 1:
        p.error(f"--top-fraction must be in (0, 1], got {args.top_fraction}")
    return args


@torch.no_grad()
def teacher_outputs(teachers: list[Checkpoint], images: torch.Tensor, device, batch: int = 8):
    """The teachers' mean softmax [N, C, H, W] over uint8 frames [N, 3, H, W], and the first
    teacher's deepest backbone feature [N, D, h, w] for the prototypes."""
    models = [t.build_model(device) for t in teachers]
    tap = FeatureTap(models[0])
    probs, features = [], []
    for i in range(0, len(images), batch):
        x = to_unit(images[i:i + batch])
        probs.append(sum(m(x).float().softmax(1) for m in models) / len(models))
        features.append(tap.take().float())
    tap.handle.remove()
    return torch.cat(probs), torch.cat(features)


def class_thresholds(confidence: torch.Tensor, labels: torch.Tensor, num_classes: int, top_fraction: float,
                     cap: float) -> torch.Tensor:
    """[C]: per class, the confidence above which its `top_fraction` most confident pixels lie, at most `cap`."""
    thresholds = torch.full((num_classes,), cap)
    for c in range(num_classes):
        values = confidence[labels == c].sort().values
        if len(values):
            thresholds[c] = min(cap, float(values[int((1 - top_fraction) * (len(values) - 1))]))
    return thresholds


def pseudo_labels(probs: torch.Tensor, top_fraction: float, cap: float, ignore_index: int):
    """int64 [N, H, W]: the argmax where its confidence passes its class's threshold, else
    `ignore_index`; and the thresholds [C]."""
    confidence, labels = probs.max(1)
    thresholds = class_thresholds(confidence.cpu(), labels.cpu(), probs.shape[1], top_fraction, cap).to(probs.device)
    return torch.where(confidence >= thresholds[labels], labels, ignore_index), thresholds


def prototype_filter(features: torch.Tensor, labels: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """`labels` [N, H, W] with pixels ignored whose feature [N, D, h, w] (cosine) is nearer another
    class's prototype than its own; a prototype is the mean normalised feature of a class's pixels."""
    n, d, h, w = features.shape
    f = F.normalize(features, dim=1).permute(0, 2, 3, 1).reshape(-1, d)
    small = F.interpolate(labels[:, None].float(), size=(h, w), mode="nearest").long().reshape(-1)
    kept = small != ignore_index
    onehot = F.one_hot(small[kept], num_classes).float()
    prototypes = F.normalize(onehot.T @ f[kept], dim=1)
    similarity = f @ prototypes.T
    similarity[:, onehot.sum(0) == 0] = float("-inf")  # classes without pixels have no prototype
    nearest = similarity.argmax(1).view(n, 1, h, w).float()
    nearest = F.interpolate(nearest, size=labels.shape[-2:], mode="nearest")[:, 0].long()
    return torch.where(nearest == labels, labels, ignore_index)


def main(argv=None) -> None:
    args = parse_args(argv)
    job = finetune.prepare(args, "self-training")
    paths = args.teachers = args.teachers or [args.parent]  # resolved: the config records the teachers used
    teachers = [load_checkpoint(path) for path in paths]
    for path, t in zip(paths, teachers):
        if (t.class_names, t.input_size) != (job.parent.class_names, job.parent.input_size):
            raise ValueError(f"teacher {path} has other classes or input size than the parent {args.parent}")

    probs, features = teacher_outputs(teachers, job.target_images, job.ctx.device)
    labels, thresholds = pseudo_labels(probs, args.top_fraction, args.max_threshold, job.ignore_index)
    confident = (labels != job.ignore_index).float().mean().item()
    if args.prototypes:
        labels = prototype_filter(features, labels, job.parent.num_classes, job.ignore_index)
    kept = (labels != job.ignore_index).float().mean().item()
    del probs, features
    if job.ctx.main:
        print(f"pseudo-labels from {len(teachers)} teacher(s): {100 * kept:.1f}% of target pixels kept "
              f"({100 * confident:.1f}% past the class thresholds)", flush=True)

    student = norms.wrap(job.parent.build_model(job.ctx.device), norms.SourceStatsBatchNorm2d).train()
    g = DistributedDataParallel(student) if job.ctx.world > 1 else student
    optimizer, schedule = finetune.poly_adamw(student.parameters(), args)
    source = job.batches(job.source_images, job.source_labels)
    target = job.batches(job.target_images, labels.to(torch.uint8))

    def step(it: int) -> dict[str, float]:
        xs, ys = next(source)
        xt, yt = next(target)
        plain = len(xs)
        xs, ys = finetune.with_styled(xs, ys, xt, args.fda_beta)
        with common.mixed_precision(job.ctx.device), \
                norms.source_first(student, plain):
            logits = g(torch.cat([xs, xt])).float()
        seg = F.cross_entropy(logits[:len(xs)], ys, ignore_index=job.ignore_index)
        # a sum over the kept pixels: a crop may have none, where a mean would be NaN
        pseudo = F.cross_entropy(logits[len(xs):], yt, ignore_index=job.ignore_index, reduction="sum")
        pseudo = pseudo / (yt != job.ignore_index).sum().clamp_min(1)
        optimizer.zero_grad(set_to_none=True)
        (seg + args.lambda_target * pseudo).backward()
        optimizer.step()
        schedule.step()
        return {"seg": seg.item(), "pseudo": pseudo.item(), "lr": schedule.get_last_lr()[0]}

    parts = {"model": student, "optimizer": optimizer, "schedule": schedule, "source": source, "target": target}
    seconds = job.train(step, parts, student).seconds
    record = {"pseudo_labels": {"kept_fraction": round(kept, 4), "confident_fraction": round(confident, 4),
                                "thresholds": [round(t, 4) for t in thresholds.tolist()]}}
    parents = [(args.parent, job.parent)] + [(p, t) for p, t in zip(paths, teachers) if p != args.parent]
    finetune.finish(job, norms.plain(student), seconds, parents=parents, **record)

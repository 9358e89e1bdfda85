"""`driftseg train self-training`: pseudo-label the unlabelled target frames, then train on source
labels and target pseudo-labels (the self-supervised step of FDA, Yang & Soatto 2020). With several teachers the
pseudo-labels come from the mean of their softmax: FDA's multi-band transfer (MBT), distilled into
the one network the service runs.

The pseudo-labels are pseudo_labels.py's: class-balanced thresholds (CBST / IAST), so rare classes
keep pseudo-labels, and with --prototypes ProDA's prototype rectification. By default the teachers
label every target frame once, before training. With --ema-teacher the teachers' pass only starts the
thresholds and prototypes: each target batch is then labelled by a teacher that is an exponential
moving average of the student (mean teacher, Tarvainen & Valpola 2017; as DACS), and the thresholds
and prototypes follow each batch. With --classmix the student learns from the target frames
as DACS does: each with half of a source crop's classes pasted on (classmix.py; the log's `kept`,
the labelled share of the student's target pixels, then counts the pasted ones).

A --recipe names a set of these flags' values; flags given explicitly override it. `dacs-tau05` is
the best measured (experiments/dusk-uda.sh; the default for a plain folder of target frames, so that
`driftseg train self-training --target-frames DIR --out X.pt` alone runs it); `plain` is the flags'
own defaults (the default with --target-split, on which the recipes in experiments/ build).
"""
import argparse
from pathlib import Path

import torch
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from driftseg.data.transforms import to_unit
from driftseg.models.checkpoint import Checkpoint, load_checkpoint
from driftseg.training import common, finetune, norms
from driftseg.training.classmix import class_mix
from driftseg.training.networks import FeatureTap
from driftseg.training.pseudo_labels import PseudoLabeller


# recipe name -> the flags' values it sets (argparse dests), which the checkpoint's config records
RECIPES = {
    # ClassMix self-training with the EMA teacher and prototype weights at tau 0.5, 600 iterations: on
    # held-out dusk +3.9 mIoU, -1.0 on day (experiments/results/uda-heldout-second-half.md,
    # dacs-tau05-first-half), the most of any job that needs only its parent (MBT, which gains more,
    # needs three adversarial jobs' checkpoints as teachers)
    "dacs-tau05": {"lr": 2.5e-4, "iters": 600, "ema_teacher": 0.99, "prototypes": True, "classmix": True,
                   "prototype_tau": 0.5},
    "plain": {},  # the flags' defaults: the teachers label the target frames once; no prototypes, no ClassMix
}


def default_recipe(target_frames) -> str:
    """A camera's recording (--target-frames) gets the best measured recipe; a split of the data folder
    keeps the flags' own defaults, against which experiments/ states its recipes."""
    return "dacs-tau05" if target_frames else "plain"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="driftseg train self-training", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    finetune.add_arguments(p, lr=2e-4, iters=1000)
    p.add_argument("--teachers", type=Path, nargs="+",
                   help="checkpoints whose mean softmax labels the target frames (default: --parent); several: MBT")
    p.add_argument("--top-fraction", type=float, default=0.5, help="of each class's pixels, the most confident kept")
    p.add_argument("--max-threshold", type=float, default=0.9, help="a pixel at least this confident is always kept")
    p.add_argument("--prototypes", action=argparse.BooleanOptionalAction, default=False, help="rectify the teacher's softmax with class prototypes (ProDA)")
    p.add_argument("--prototype-tau", type=float, default=0.1, help="temperature of the prototype weights, in cosine")
    p.add_argument("--ema-teacher", type=float, default=0.0, metavar="MOMENTUM",
                   help="label each target batch with an EMA of the student (e.g. 0.99); 0: the teachers label once")
    p.add_argument("--label-momentum", type=float, default=0.9,
                   help="with --ema-teacher: how much of the running thresholds and prototypes each batch keeps")
    p.add_argument("--classmix", action=argparse.BooleanOptionalAction, default=False,
                   help="paste half of each source crop's classes, with their labels, onto a target crop (DACS)")
    p.add_argument("--lambda-target", type=float, default=1.0, help="weight of the target pseudo-label loss")
    p.add_argument("--recipe", choices=RECIPES, help="defaults for the flags above: dacs-tau05 (lr 2.5e-4, 600 "
                   "iterations, EMA teacher 0.99, prototypes at tau 0.5, ClassMix) or plain; explicit flags win "
                   "(default: dacs-tau05 with --target-frames, plain with --target-split)")
    known, _ = p.parse_known_args(argv)
    recipe = known.recipe or default_recipe(known.target_frames)
    p.set_defaults(**RECIPES[recipe])
    args = p.parse_args(argv)
    args.recipe = recipe  # resolved: the config records the recipe used
    if not 0 < args.top_fraction <= 1:
        p.error(f"--top-fraction must be in (0, 1], got {args.top_fraction}")
    if not 0 <= args.ema_teacher < 1:
        p.error(f"--ema-teacher must be in [0, 1), got {args.ema_teacher}")
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


def main(argv=None) -> None:
    args = parse_args(argv)
    job = finetune.prepare(args, "self-training")
    paths = args.teachers = args.teachers or [args.parent]  # resolved: the config records the teachers used
    teachers = [load_checkpoint(path) for path in paths]
    for path, t in zip(paths, teachers):
        if (t.class_names, t.input_size) != (job.parent.class_names, job.parent.input_size):
            raise ValueError(f"teacher {path} has other classes or input size than the parent {args.parent}")

    labeller = PseudoLabeller(job.parent.num_classes, job.ignore_index, args.top_fraction, args.max_threshold,
                              args.prototype_tau if args.prototypes else None, args.label_momentum)
    probs, features = teacher_outputs(teachers, job.target_images, job.ctx.device)
    labeller.fit(probs, features)
    labels = labeller(probs, features)
    kept = (labels != job.ignore_index).float().mean().item()
    del probs, features
    if job.ctx.main:
        print(f"pseudo-labels from {len(teachers)} teacher(s): {100 * kept:.1f}% of target pixels kept", flush=True)

    student = norms.wrap(job.parent.build_model(job.ctx.device), norms.SourceStatsBatchNorm2d).train()
    student = student.to(memory_format=torch.channels_last)  # as train source: faster on the CPU
    g = DistributedDataParallel(student) if job.ctx.world > 1 else student
    optimizer, schedule = finetune.poly_adamw(student.parameters(), args)
    source = job.batches(job.source_images, job.source_labels)
    parts = {"model": student, "optimizer": optimizer, "schedule": schedule, "source": source}
    if args.ema_teacher:
        teacher = AveragedModel(student, multi_avg_fn=get_ema_multi_avg_fn(args.ema_teacher), use_buffers=True).eval()
        tap = FeatureTap(teacher.module)
        target = job.batches(job.target_images, None)
        parts.update(target=target, teacher=teacher, labeller=labeller)
    else:
        target = job.batches(job.target_images, labels.to(torch.uint8))
        parts.update(target=target)

    def target_batch() -> tuple[torch.Tensor, torch.Tensor]:
        """Target frames and their pseudo-labels: the teachers' from before training, or the EMA teacher's now."""
        xt, yt = next(target)
        if not args.ema_teacher:
            return xt, yt
        with torch.no_grad(), common.mixed_precision(job.ctx.device):
            probs = teacher(xt).float().softmax(1)
        return xt, labeller(probs, tap.take().float(), update=True)

    def step(it: int) -> dict[str, float]:
        xs, ys = next(source)
        xt, yt = target_batch()
        plain = len(xs)
        styled = finetune.with_styled(xs, ys, xt, args.fda_beta)  # styled after the target frames before any paste
        if args.classmix:
            xt, yt = class_mix(xs, ys, xt, yt, job.ignore_index)
        xs, ys = styled
        with common.mixed_precision(job.ctx.device), \
                norms.source_first(student, plain):
            logits = g(torch.cat([xs, xt]).contiguous(memory_format=torch.channels_last)).float()
        seg = F.cross_entropy(logits[:len(xs)], ys, ignore_index=job.ignore_index)
        # a sum over the kept pixels: a crop may have none, where a mean would be NaN
        labelled = (yt != job.ignore_index).sum()
        pseudo = F.cross_entropy(logits[len(xs):], yt, ignore_index=job.ignore_index, reduction="sum")
        pseudo = pseudo / labelled.clamp_min(1)
        optimizer.zero_grad(set_to_none=True)
        (seg + args.lambda_target * pseudo).backward()
        optimizer.step()
        schedule.step()
        if args.ema_teacher:
            teacher.update_parameters(student)
        return {"seg": seg.item(), "pseudo": pseudo.item(), "kept": labelled.item() / yt.numel(),
                "lr": schedule.get_last_lr()[0]}

    seconds = job.train(step, parts, student).seconds
    record = {"pseudo_labels": {"kept_fraction": round(kept, 4),
                                "thresholds": [round(t, 4) for t in labeller.thresholds.tolist()]}}
    parents = [(args.parent, job.parent)] + [(p, t) for p, t in zip(paths, teachers) if p != args.parent]
    finetune.finish(job, norms.plain(student), seconds, parents=parents, **record)

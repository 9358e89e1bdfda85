"""`driftseg train adversarial`: output-space adversarial adaptation (Tsai et al. 2018), multi-level,
optionally with FDA source-to-target styling and FDA's target entropy loss (Yang & Soatto 2020).

Every iteration: one forward of the segmentation network over source frames (labelled; with
--fda-beta > 0 also a copy of each styled like a target frame) and target frames (unlabelled); the
network learns the source labels and to make its target outputs look like source outputs to the
discriminators; then the discriminators learn to tell the two apart. The network starts from
--parent; its BN layers take their statistics from the plain source frames alone
(training/norms.py), so the checkpoint keeps source statistics for online adaptation to blend with.
"""
import argparse
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

from driftseg.training import common, finetune, norms
from driftseg.training.networks import MultiLevelNet, OutputDiscriminator

SOURCE, TARGET = 0.0, 1.0  # the discriminators' domain labels


def parse_args(argv=None, prog: str = "driftseg train adversarial", description: str = __doc__,
               levels: str = "separate", extra: Callable[[argparse.ArgumentParser], None] | None = None):
    p = argparse.ArgumentParser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    finetune.add_arguments(p, lr=2e-4, iters=1000)
    p.add_argument("--levels", choices=["separate", "fused", "single"], default=levels,
                   help="separate: one discriminator per output, main and auxiliary (AdaptSegNet multi-level); "
                        "fused: the auxiliary output added to the main one with --fuse-weight before a single "
                        "discriminator (SEAT's multi-level variant); single: the main output only")
    p.add_argument("--fuse-weight", type=float, default=0.1, help="the auxiliary output's weight with --levels fused")
    p.add_argument("--lambda-adv", type=float, default=1e-3, help="adversarial weight of the main output")
    p.add_argument("--lambda-adv-aux", type=float, default=2e-4, help="adversarial weight of the auxiliary output")
    p.add_argument("--lambda-seg-aux", type=float, default=0.1, help="weight of the auxiliary output's source loss")
    p.add_argument("--lambda-ent", type=float, default=0.0,
                   help="weight of the target entropy loss (FDA's Charbonnier-penalised entropy, eta 2; 0.005 there)")
    p.add_argument("--d-lr", type=float, default=1e-4, help="discriminators' peak learning rate (Adam, betas 0.9, 0.99)")
    if extra:
        extra(p)
    return p.parse_args(argv)


def charbonnier_entropy(logits: torch.Tensor, eta: float = 2.0) -> torch.Tensor:
    """FDA's target loss: per-pixel entropy normalised to [0, 1], penalised as (e^2 + 1e-6)^eta."""
    p = logits.float().softmax(1)
    entropy = -(p * torch.log(p + 1e-30)).sum(1) / torch.log(torch.tensor(float(logits.shape[1])))
    return (entropy.square() + 1e-6).pow(eta).mean()


def domain_loss(discriminator: nn.Module, logits: torch.Tensor, domains: torch.Tensor) -> torch.Tensor:
    """The discriminator's loss on softmax maps of `logits` [B, C, H, W] of the given domains [B]."""
    pred = discriminator(logits.float().softmax(1))
    return F.binary_cross_entropy_with_logits(pred, domains.to(pred)[:, None, None, None].expand_as(pred))


def train(job: finetune.Job, net: MultiLevelNet) -> float:
    """Adversarial training of `net` in place (in the modes the caller set); the training seconds.
    Each forward carries the source frames first, then the target frames (training/norms.py). The
    training state holds both networks (the discriminators and the auxiliary head too), both
    optimizers and schedules, and the positions in both frame orders."""
    args, ctx = job.args, job.ctx
    lambdas = {"separate": [args.lambda_adv, args.lambda_adv_aux], "fused": [args.lambda_adv],
               "single": [args.lambda_adv]}[args.levels]  # one discriminator per weight
    net.to(memory_format=torch.channels_last)  # as train source: faster on the CPU
    discriminators = nn.ModuleList(OutputDiscriminator(job.parent.num_classes).to(ctx.device) for _ in lambdas)
    wrap = (lambda m: DistributedDataParallel(m)) if ctx.world > 1 else (lambda m: m)
    g, ds = wrap(net), [wrap(d) for d in discriminators]
    g_opt, g_schedule = finetune.poly_adamw(net.parameters(), args)
    d_opt, d_schedule = finetune.poly_adamw([p for d in discriminators for p in d.parameters()], args,
                                            lr=args.d_lr, betas=(0.9, 0.99))
    source = job.batches(job.source_images, job.source_labels)
    target = job.batches(job.target_images, None)

    def judged(main: torch.Tensor, aux: torch.Tensor) -> list[torch.Tensor]:
        """The outputs the discriminators see, one per discriminator."""
        return {"separate": [main, aux], "fused": [main + args.fuse_weight * aux], "single": [main]}[args.levels]

    def step(it: int) -> dict[str, float]:
        xs, ys = next(source)
        xt, _ = next(target)
        plain = len(xs)
        xs, ys = finetune.with_styled(xs, ys, xt, args.fda_beta)
        n = len(xs)
        as_source = torch.full((len(xt),), SOURCE)
        both = torch.cat([torch.full((n,), SOURCE), torch.full((len(xt),), TARGET)])
        for d in discriminators:
            d.requires_grad_(False)
        with common.mixed_precision(ctx.device), norms.source_first(net, plain):
            main, aux = g(torch.cat([xs, xt]).contiguous(memory_format=torch.channels_last))
        seg = F.cross_entropy(main[:n].float(), ys, ignore_index=job.ignore_index)
        seg_aux = F.cross_entropy(aux[:n].float(), ys, ignore_index=job.ignore_index)
        # the network wants its target outputs taken for source ones
        adv = sum(w * domain_loss(d, out[n:], as_source) for w, d, out in zip(lambdas, discriminators, judged(main, aux)))
        loss = seg + args.lambda_seg_aux * seg_aux + adv
        if args.lambda_ent:
            loss = loss + args.lambda_ent * charbonnier_entropy(main[n:])
        g_opt.zero_grad(set_to_none=True)
        loss.backward()
        g_opt.step()
        g_schedule.step()

        for d in discriminators:
            d.requires_grad_(True)
        # one call per discriminator (DDP wants one forward before each backward)
        d_loss = sum(domain_loss(d, out, both) for d, out in zip(ds, judged(main.detach(), aux.detach())))
        d_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        d_opt.step()
        d_schedule.step()
        return {"seg": seg.item(), "adv": adv.item(), "d": d_loss.item(), "lr": g_schedule.get_last_lr()[0]}

    parts = {"model": net, "discriminators": discriminators, "optimizer": g_opt, "schedule": g_schedule,
             "d_optimizer": d_opt, "d_schedule": d_schedule, "source": source, "target": target}
    try:
        return job.train(step, parts, net.model).seconds
    finally:
        net.tap.handle.remove()


def main(argv=None) -> None:
    args = parse_args(argv)
    job = finetune.prepare(args, "adversarial")
    model = norms.wrap(job.parent.build_model(job.ctx.device), norms.SourceStatsBatchNorm2d)
    net = MultiLevelNet(model, job.parent.num_classes).train()
    seconds = train(job, net)
    finetune.finish(job, norms.plain(model), seconds)

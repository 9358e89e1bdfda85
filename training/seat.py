"""`driftseg train seat`: adversarial adaptation with Separate Affine Transformations
(SEAT, Yan & Lee 2021).

Every BN layer of the network gets two branches, each with its own normalisation statistics and
affine transform: source frames go through the source branches, target frames through the
target branches, in the same forward pass. The adversarial part is `driftseg train adversarial`'s,
by default in SEAT's multi-level variant (the auxiliary output added to the main one with a weight
before a single discriminator). The checkpoint is a plain network for the service: each BN layer
takes its target branch, or its source branch where --source-branch names it (the layer switch).
"""
from driftseg.training import adversarial, finetune, norms
from driftseg.training.networks import MultiLevelNet


def main(argv=None) -> None:
    args = adversarial.parse_args(
        argv, prog="driftseg train seat", description=__doc__, levels="fused",
        extra=lambda p: p.add_argument(
            "--source-branch", nargs="*", default=[], metavar="PREFIX",
            help="BN layers whose names start with PREFIX (e.g. net.backbone.1) serve with their source branch; "
                 "all others with the target branch"))
    job = finetune.prepare(args, "seat")
    model = job.parent.build_model(job.ctx.device)
    norms.check_prefixes(model, args.source_branch)
    norms.wrap(model, norms.DualBatchNorm2d)
    net = MultiLevelNet(model, job.parent.num_classes).train()  # BN in train mode: statistics per domain
    seconds = adversarial.train(job, net)
    finetune.finish(job, norms.plain(model, args.source_branch), seconds)

"""The least that adapting every BN layer costs on each engine: the frozen network (BN folded) with only
the passes over the activations that statistics adaptation cannot do without, and none of its arithmetic
on the statistics (no state, no blend, no alpha):

    frozen       the checkpoint's network, BN folded into the convolutions (`source`)
    mean         + the per-channel mean of every adapted layer's input, returned beside the logits: what a
                   method that normalises with last frame's statistics (a lag, folded into the convolution)
                   must still read
    moments      + the second moment too (models/batchnorm.py: instance_moments, as every adapted layer)
    normalised   + every layer normalised by those moments (normalize_per_sample, as every adapted layer):
                   what normalising a frame by its own statistics costs, whatever the method

Each adapted layer's input is its convolution's output (every BN layer of the default checkpoint follows
a convolution), so each level wraps those convolutions. Timed by `bench model`'s loop (the levels take turns
batch by batch, the median of --steps) on one engine per run; for onnx, also the layout reorders that
onnxruntime's optimised graph holds (its NCHWc layout, which its convolutions run in, is left for every
tensor read by an operator that does not run in it). No compiled engine: inductor ran this construction
slower than the adapted network (adapters/ema_bn.AdaptedNet) itself, so it bounds nothing there.

    .venv/bin/python experiments/cost_floor.py --engine torch --out experiments/results/cost-floor-torch.json
"""
import argparse
import collections
import tempfile
from pathlib import Path

import torch
from torch import nn

from driftseg.bench.model import measure
from driftseg.bench.report import table, write_results
from driftseg.device import device_name
from driftseg.models.batchnorm import fold_batchnorm, foldable_pairs, instance_moments, normalize_per_sample
from driftseg.models.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
from driftseg.models.registry import wrap_modules

LEVELS = ("frozen", "mean", "moments", "normalised")


class _Observed(nn.Module):
    """A convolution followed by what `level` asks of the adapted layer that reads its output; the
    statistics are kept in `stats` for the forward of `Floor` to return."""

    def __init__(self, conv: nn.Conv2d, level: str):
        super().__init__()
        self.conv, self.level = conv, level
        self.stats: torch.Tensor | None = None

    def forward(self, x):
        y = self.conv(x)
        if self.level == "mean":
            self.stats = y.float().mean((2, 3))
            return y
        mean, sq = instance_moments(y)
        self.stats = mean + sq  # both read: neither is left out of a graph as unused
        if self.level == "moments":
            return y
        ones = torch.ones(y.shape[1], device=y.device)
        return normalize_per_sample(y, mean, (sq - mean.square()).clamp_min(0), ones, torch.zeros_like(ones), 1e-5)


class Floor(nn.Module):
    """The folded network at one of LEVELS: images -> (logits, every observed layer's statistics)."""

    def __init__(self, model: nn.Module, level: str):
        super().__init__()
        self.net = fold_batchnorm(model)
        convs = [conv for conv, _ in foldable_pairs(model)] if level != "frozen" else []
        self.observed = wrap_modules(self.net, convs, lambda conv: _Observed(conv, level))

    def forward(self, images):
        out = self.net(images)
        logits = out["out"] if isinstance(out, dict) else out
        stats = torch.cat([o.stats for o in self.observed], 1) if self.observed else logits.new_zeros(images.shape[0], 0)
        return logits, stats


def onnx_runner(module: nn.Module, example: torch.Tensor, workdir: Path):
    """`module` exported to ONNX (batch dimension dynamic) and run by onnxruntime with the options the onnx
    engine uses; also the count of layout reorders in onnxruntime's optimised graph."""
    import onnx
    import onnxruntime as ort

    from driftseg.adapters.onnx_engine import session_options

    path, optimised = workdir / "floor.onnx", workdir / "floor.optimised.onnx"
    dim = torch.export.Dim("batch", min=1, max=64)
    torch.onnx.export(module, (example,), path, dynamo=True, dynamic_shapes={"images": {0: dim}}, verbose=False)
    options = session_options()
    options.optimized_model_filepath = str(optimised)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = collections.Counter(node.op_type for node in onnx.load(str(optimised)).graph.node)
    name = session.get_inputs()[0].name
    return (lambda images: session.run(None, {name: images.numpy()})), ops["ReorderInput"] + ops["ReorderOutput"]


class _Timed:
    """A level in a pipeline's place for `bench model`'s timing loop: no stream state, its output unused."""

    device = torch.device("cpu")

    def __init__(self, run):
        self.run = run

    def new_state(self) -> None:
        return None

    def step(self, images: torch.Tensor, states: list) -> tuple[None, list]:
        self.run(images)
        return None, states


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", choices=["torch", "onnx"], default="torch")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--steps", type=int, default=20, help="timed steps per batch size and level")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    ckpt = load_checkpoint(args.checkpoint)
    model = ckpt.build_model().eval()
    device = torch.device("cpu")
    generator = torch.Generator().manual_seed(0)
    reorders = {}
    with tempfile.TemporaryDirectory() as workdir, torch.inference_mode():
        runners = {}
        for level in LEVELS:
            module = Floor(model, level).eval()
            if args.engine == "onnx":
                level_dir = Path(workdir) / level
                level_dir.mkdir()
                runners[level], reorders[level] = onnx_runner(module, torch.rand(2, 3, *ckpt.input_size), level_dir)
            else:
                runners[level] = module
        result = measure({level: _Timed(run) for level, run in runners.items()},
                         torch.rand(1, 3, *ckpt.input_size, generator=generator), args.batches, args.steps)
    ms = {b: {level: t["ms_per_batch"] / b for level, t in row.items()} for b, row in result.items()}
    head = ["level"] + [f"batch {b}: {col}" for b in ms for col in ("ms/frame", "x `frozen`")]
    head += ["layout reorders"] if reorders else []
    rows = [[f"`{level}`"] + [cell for b in ms for cell in (f"{ms[b][level]:.1f}", f"{ms[b][level] / ms[b]['frozen']:.2f}")]
            + ([str(reorders[level])] if reorders else []) for level in LEVELS]
    text = f"**{args.engine}**\n\n" + table(head, rows)
    print(text)
    if args.out:
        doc = {"checkpoint": str(args.checkpoint), "engine": args.engine, "device_name": device_name(device),
               "threads": torch.get_num_threads(), "torch": torch.__version__, "input_size": ckpt.input_size,
               "ms_per_frame": {str(b): row for b, row in ms.items()}, "layout_reorders": reorders or None}
        write_results(args.out, doc, text)


if __name__ == "__main__":
    main()

"""Command-line entry points of the benchmark."""
import argparse
import json
import os
import sys

from driftseg.bench import accuracy
from driftseg.bench.plot import plot_rounds, plot_stream
from driftseg.bench.report import add_common_arguments, aliases_run, write_results
from driftseg.data.folder import FrameFolder
from driftseg.data.streams import PROTOCOL_STREAMS
from driftseg.models.checkpoint import file_sha256, load_checkpoint

PEERS = ("source", "ptbn", "tent")


def accuracy_main(argv=None) -> None:
    p = argparse.ArgumentParser(
        prog="driftseg bench accuracy",
        description="Online accuracy benchmark (../shared/BENCHMARK.md). Writes JSON "
        '{"checkpoint", "checkpoint_sha256", "data", "severity", "max_frames", '
        '"streams": {STREAM: {METHOD: {"miou", "dice", "class_iou", "frames", "ms_per_frame"}}}, '
        '"summary": {METHOD: {"mean_miou", "day_change", "ms_per_frame", "cost_vs_source"}}}, a Markdown table '
        'beside it, for multi-segment streams (continual) a PNG plot over frames, and for streams of several '
        'rounds (continual10) a PNG plot per round and per segment.',
    )
    p.add_argument("--streams", nargs="+", default=list(PROTOCOL_STREAMS),
                   help="protocol names, SPLIT, or SPLIT:CORRUPTION (default: all protocol streams)")
    p.add_argument("--methods", nargs="+", default=list(PEERS), help='method specs, e.g. "ema(m=0.1,alpha=0.5)+lc"')
    p.add_argument("--severity", type=int, default=3, choices=range(1, 6))
    p.add_argument("--max-frames", type=int,
                   help="only the first N frames of every stream; of every segment of a multi-segment stream")
    p.add_argument("--update", action="store_true",
                   help="run only --methods and put their rows into the existing --out file, keeping its other "
                   "methods (after a change to some methods: the rest need not run again); the file must come "
                   "from the same checkpoint, data, streams, severity and frames")
    p.add_argument("--realtime", action="store_true",
                   help="also the real-time protocol (Alfarra et al. 2024): frames arrive at the frozen model's speed "
                   "(`source` must be among --methods), a method adapts only on the frames it has time for by its "
                   'cost (timed round robin in this run), and predicts the others from its state; its rows under "realtime" '
                   '({"streams", "summary": {METHOD: {"mean_miou", "day_change", "cost_vs_source", "adapted_every"}}})')
    add_common_arguments(p)
    args = p.parse_args(argv)
    if args.update and not (args.out and args.out.exists()):
        p.error("--update needs an existing --out file to update")

    try:
        ckpt = load_checkpoint(args.checkpoint)
        folder = FrameFolder.open(args.data)
        header = {"checkpoint": os.path.relpath(args.checkpoint), "checkpoint_sha256": file_sha256(args.checkpoint),
                  "data": str(folder.root), "severity": args.severity, "max_frames": args.max_frames,
                  **aliases_run(args.methods)}
        if args.update:
            kept = json.loads(args.out.read_text())
            accuracy.check_updatable(kept, header)
            if "checkpoint_sha256" not in kept:
                print(f"warning: {args.out} was written before results recorded the checkpoint's hash: only its "
                      "path, data and frame counts are checked", file=sys.stderr)
        scores, traces = accuracy.run(ckpt, folder, args.streams, args.methods, args.severity, args.max_frames,
                                      args.device, args.realtime)
        result = header | scores
        if args.update:
            result = accuracy.merge(kept, result)
    except (ValueError, KeyError, FileNotFoundError) as e:
        p.exit(2, f"driftseg bench accuracy: error: {e}\n")
    table = accuracy.markdown_table(result)
    print(table)
    if args.out:
        write_results(args.out, result, table)
        for name, trace in traces.items():
            png = args.out.with_name(f"{args.out.stem}-{name}.png")
            if args.update:  # the kept methods' per-frame traces are not stored: a redrawn plot would lack them
                png.unlink(missing_ok=True)
                print(f"removed {png}: its per-frame traces are not kept, rerun without --update to redraw it")
            else:
                plot_stream(name, trace, png)
                print(f"wrote {png}")
            if trace["rounds"] > 1:
                png = args.out.with_name(f"{args.out.stem}-{name}-rounds.png")
                plot_rounds(name, result["streams"], png)
                print(f"wrote {png}")

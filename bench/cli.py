"""Command-line entry points of the benchmark."""
import argparse
import os

from driftseg.bench import accuracy
from driftseg.bench.plot import plot_rounds, plot_stream
from driftseg.bench.report import add_common_arguments, write_results
from driftseg.data.folder import FrameFolder
from driftseg.data.streams import PROTOCOL_STREAMS
from driftseg.models.checkpoint import load_checkpoint

PEERS = ("source", "ptbn", "tent")


def accuracy_main(argv=None) -> None:
    p = argparse.ArgumentParser(
        prog="driftseg bench accuracy",
        description="Online accuracy benchmark (../shared/BENCHMARK.md). Writes JSON "
        '{"checkpoint", "data", "streams": {STREAM: {METHOD: {"miou", "dice", "frames", "ms_per_frame"}}}, '
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
    add_common_arguments(p)
    args = p.parse_args(argv)

    try:
        ckpt = load_checkpoint(args.checkpoint)
        folder = FrameFolder.open(args.data)
        result, traces = accuracy.run(ckpt, os.path.relpath(args.checkpoint), folder, args.streams, args.methods,
                                      args.severity, args.max_frames, args.device)
    except (ValueError, KeyError, FileNotFoundError) as e:
        p.exit(2, f"driftseg bench accuracy: error: {e}\n")
    table = accuracy.markdown_table(result)
    print(table)
    if args.out:
        write_results(args.out, result, table)
        for name, trace in traces.items():
            png = args.out.with_name(f"{args.out.stem}-{name}.png")
            plot_stream(name, trace, png)
            print(f"wrote {png}")
            if trace["rounds"] > 1:
                png = args.out.with_name(f"{args.out.stem}-{name}-rounds.png")
                plot_rounds(name, trace, png)
                print(f"wrote {png}")

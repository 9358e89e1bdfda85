"""`driftseg bench speed`: the per-frame cost of methods at batch 1, as ratios to the frozen model.

The methods take turns frame by frame on the same frames (each with its own stream state), and
the median time per frame is reported: on a shared machine, timing one method after another
measures the machine's load as much as the method. `--repeats` runs the whole round robin again
(fresh streams) and reports each repeat's ratios too, for how much they move between runs.
"""
import argparse
import statistics
import time
from collections.abc import Callable, Iterable, Sequence

import torch

from driftseg.device import device_name, resolve_device
from driftseg.adapters.backends import Compiled
from driftseg.adapters.pipeline import Pipeline
from driftseg.adapters.spec import parse_method
from driftseg.bench.report import add_common_arguments, aliases_run, table, write_results
from driftseg.data.folder import FrameFolder
from driftseg.data.streams import open_stream
from driftseg.data.transforms import to_tensor
from driftseg.models.checkpoint import Checkpoint, load_checkpoint


def round_robin(pipelines: dict[str, Pipeline], batches: Iterable[torch.Tensor], warmup: int,
                on_labels: Callable[[str, int, torch.Tensor], None] = lambda name, i, labels: None,
                ) -> dict[str, list[float]]:
    """Seconds per step of each pipeline, the pipelines taking turns batch by batch, in their order,
    on the same batches ([B, 3, H, W], frame b of stream b; B fixed); the first `warmup` batches are
    not timed. `on_labels(name, i, labels)` is handed every step's label maps, warm-up's too."""
    states: dict[str, list] = {}
    times: dict[str, list[float]] = {k: [] for k in pipelines}
    for i, batch in enumerate(batches):
        for k, pipeline in pipelines.items():
            batch = batch.to(pipeline.device)
            if k not in states:
                states[k] = [pipeline.new_state() for _ in range(batch.shape[0])]
            sync = torch.cuda.synchronize if pipeline.device.type == "cuda" else (lambda: None)
            sync()
            start = time.perf_counter()
            labels, states[k] = pipeline.step(batch, states[k])
            sync()
            if i >= warmup:
                times[k].append(time.perf_counter() - start)
            on_labels(k, i, labels)
    return times


def measure(ckpt: Checkpoint, frames: Sequence[torch.Tensor], methods: Sequence[str], device: torch.device,
            warmup: int = 3, compile: bool = False, repeats: int = 1) -> dict[str, dict]:
    """{method: {"median_ms", "mean_ms", "frames", "repeat_median_ms"}} over `frames` ([1, 3, H, W] each),
    round robin, `repeats` times: median, mean and frame count pooled over the repeats, and each
    repeat's median. With `compile`, every method but tent (which cannot be) runs compiled."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    pipelines = {m: Pipeline(ckpt, spec, device, backend=Compiled() if compile and not spec.backprop else None)
                 for m, spec in ((m, parse_method(m)) for m in methods)}
    runs = [round_robin(pipelines, frames, warmup) for _ in range(repeats)]
    if not runs[0][methods[0]]:
        raise ValueError(f"need more than {warmup} frames to time (the first {warmup} warm up)")
    timings = {}
    for m in methods:
        pooled = [t for run in runs for t in run[m]]
        timings[m] = {"median_ms": round(1000 * statistics.median(pooled), 3),
                      "mean_ms": round(1000 * statistics.fmean(pooled), 3), "frames": len(pooled),
                      "repeat_median_ms": [round(1000 * statistics.median(run[m]), 3) for run in runs]}
    return timings


def with_ratios(timings: dict[str, dict], baseline: str = "source") -> dict[str, dict]:
    """Each method's median over the baseline's, pooled (`x_source`) and per repeat (`repeat_x_source`)."""
    base = timings[baseline]
    return {m: {**t, "x_source": round(t["median_ms"] / base["median_ms"], 3),
                "repeat_x_source": [round(a / b, 3) for a, b in zip(t["repeat_median_ms"], base["repeat_median_ms"])]}
            for m, t in timings.items()}


def markdown_table(timings: dict[str, dict]) -> str:
    head = ["method", "median ms/frame", "mean ms/frame", "x source (median)", "x source, repeats (min-max)"]
    return table(head, ([f"`{m}`", f"{t['median_ms']:.1f}", f"{t['mean_ms']:.1f}", f"{t['x_source']:.2f}",
                         f"{min(t['repeat_x_source']):.2f}-{max(t['repeat_x_source']):.2f}"]
                        for m, t in timings.items()))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="driftseg bench speed", description=__doc__)
    p.add_argument("--stream", default="day", help="the frames to time (a stream spec)")
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--methods", nargs="+", default=["source", "ptbn", "tent", "auto"],
                   help="method specs; `source` is always timed, as the baseline")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile each method's adapted function at the network's input size (CUDA graphs on a "
                        "GPU; resizing stays eager; tent stays eager)")
    p.add_argument("--warmup", type=int, default=3, help="frames run before timing starts (compilation happens there)")
    p.add_argument("--repeats", type=int, default=1, help="times the whole round robin runs, on fresh streams")
    add_common_arguments(p)
    args = p.parse_args(argv)
    methods = ["source"] + [m for m in args.methods if m != "source"]
    try:
        ckpt = load_checkpoint(args.checkpoint)
        device = resolve_device(args.device)
        stream = open_stream(args.stream, FrameFolder.open(args.data))
        frames = [to_tensor(image) for image, _ in stream.frames(args.frames)]
        timings = with_ratios(measure(ckpt, frames, methods, device, args.warmup, args.compile, args.repeats))
    except (ValueError, KeyError, FileNotFoundError) as e:
        p.exit(2, f"driftseg bench speed: error: {e}\n")
    result = {"checkpoint": str(args.checkpoint), "stream": args.stream, "device": str(device),
              "device_name": device_name(device),
              "compiled": args.compile, "torch": torch.__version__, "threads": torch.get_num_threads(), "frame_size": list(frames[0].shape[-2:]), "methods": timings,
              **aliases_run(methods)}
    table = markdown_table(timings)
    print(table)
    if args.out:
        write_results(args.out, result, table)

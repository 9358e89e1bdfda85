"""`driftseg bench precision`: what running the network in bf16 or fp16 (autocast) changes, against
float32 in the same run: the share of pixels labelled as float32 labels them, the mIoU of each and
the time per frame. Every precision runs its own copy of each stream, frame by frame in turn on
the same frames, from the source state.
"""
import argparse
import statistics
from collections.abc import Sequence

import torch

from driftseg.device import device_name, resolve_device
from driftseg.adapters.pipeline import PRECISIONS, Pipeline
from driftseg.adapters.spec import parse_method
from driftseg.bench.report import add_common_arguments, table, write_results
from driftseg.bench.speed import round_robin
from driftseg.data.folder import FrameFolder
from driftseg.data.metrics import ConfusionMatrix, mean_iou
from driftseg.data.streams import open_stream
from driftseg.data.transforms import to_tensor
from driftseg.models.checkpoint import Checkpoint, load_checkpoint


def measure(ckpt: Checkpoint, stream_frames: dict[str, list], methods: Sequence[str], precisions: Sequence[str],
            device: torch.device, ignore_index: int) -> dict[str, dict[str, dict[str, dict]]]:
    """{method: {stream: {precision: {"miou", "same_labels", "ms_per_frame"}}}} for `stream_frames`
    ({stream: [(image uint8 HxWx3, label HxW), ...]}); fp32 first, the reference of `same_labels`."""
    precisions = ["fp32"] + [p for p in precisions if p != "fp32"]
    result = {}
    for method in methods:
        pipelines = {p: Pipeline(ckpt, parse_method(method), device, precision=p) for p in precisions}
        result[method] = {}
        for stream, frames in stream_frames.items():
            score, cms, same = _scorer(frames, precisions, ckpt.num_classes, ignore_index)
            seconds = round_robin(pipelines, [to_tensor(image) for image, _ in frames], 0, score)
            result[method][stream] = {p: {"miou": round(mean_iou(cms[p].mat), 2),
                                          "same_labels": round(100 * statistics.fmean(same[p]), 3),
                                          "ms_per_frame": round(1000 * statistics.median(seconds[p]), 3)}
                                      for p in precisions}
    return result


def _scorer(frames: list, precisions: list[str], num_classes: int, ignore_index: int):
    """The `on_labels` that `round_robin` hands each step's labels to (fp32 runs first on each frame),
    and what it fills: a confusion matrix and the per-frame share of pixels labelled as fp32 labels
    them, per precision."""
    cms = {p: ConfusionMatrix(num_classes, ignore_index) for p in precisions}
    same: dict[str, list[float]] = {p: [] for p in precisions}
    fp32_labels = {}

    def on_labels(p: str, i: int, labels: torch.Tensor) -> None:
        fp32_labels[i] = labels if p == "fp32" else fp32_labels[i]
        cms[p].update(torch.from_numpy(frames[i][1]), labels[0].cpu())
        same[p].append((labels == fp32_labels[i]).float().mean().item())

    return on_labels, cms, same


def markdown_table(result: dict) -> str:
    head = ["method", "stream", "precision", "pixels labelled as fp32 (%)", "mIoU", "mIoU change", "median ms/frame",
            "x fp32"]
    rows = []
    for method, streams in result.items():
        for stream, by_precision in streams.items():
            ref = by_precision["fp32"]
            rows += [[f"`{method}`", stream, p, f"{r['same_labels']:.2f}", f"{r['miou']:.1f}",
                      f"{r['miou'] - ref['miou']:+.2f}", f"{r['ms_per_frame']:.1f}",
                      f"{r['ms_per_frame'] / ref['ms_per_frame']:.2f}"] for p, r in by_precision.items()]
    return table(head, rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="driftseg bench precision", description=__doc__)
    p.add_argument("--streams", nargs="+", default=["day", "dusk"], help="stream specs")
    p.add_argument("--methods", nargs="+", default=["source", "auto"])
    p.add_argument("--precisions", nargs="+", default=["bf16", "fp16"], choices=sorted(PRECISIONS),
                   help="compared with fp32, which always runs")
    p.add_argument("--max-frames", type=int, help="only the first N frames of every stream")
    add_common_arguments(p)
    args = p.parse_args(argv)
    try:
        ckpt = load_checkpoint(args.checkpoint)
        device = resolve_device(args.device)
        folder = FrameFolder.open(args.data)
        stream_frames = {s: list(open_stream(s, folder).frames(args.max_frames)) for s in args.streams}
        result = measure(ckpt, stream_frames, args.methods, args.precisions, device, folder.ignore_index)
    except (ValueError, KeyError, FileNotFoundError) as e:
        p.exit(2, f"driftseg bench precision: error: {e}\n")
    table = markdown_table(result)
    print(table)
    if args.out:
        doc = {"checkpoint": str(args.checkpoint), "device": str(device), "device_name": device_name(device),
               "torch": torch.__version__, "results": result}
        write_results(args.out, doc, table)

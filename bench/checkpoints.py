"""`driftseg bench checkpoints`: the offline jobs' checkpoints side by side under one online method
(`source` by default: the checkpoint alone), with each one's change against a baseline checkpoint;
given an oracle (trained with the target labels, an upper bound), the share of the baseline's gap to
it that the checkpoint closes on one stream; given a control (the same budget of training
without the target frames), what each job adds over that training alone; and each one's IoU per
class on that stream."""
import argparse
import os
from pathlib import Path

from driftseg.bench import accuracy
from driftseg.bench.report import add_common_arguments, table, write_results
from driftseg.data.folder import FrameFolder
from driftseg.models.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint


def gap_closed(miou: float, baseline: float, oracle: float) -> float | None:
    """(miou - baseline) / (oracle - baseline): 0 no better than the baseline, 1 as good as the oracle."""
    return None if oracle <= baseline else (miou - baseline) / (oracle - baseline)


def markdown_table(result: dict) -> str:
    streams, gap = result["streams"], result["gap_stream"]
    head = ["checkpoint", "job", *streams, *(f"{s} change" for s in streams)]
    if result["oracle"]:
        head.append(f"{gap} gap closed")
    if result["control"]:
        head += [f"{s} vs control" for s in streams]
    rows = []
    for row in result["rows"]:
        cells = [f"`{row['checkpoint']}`", row["job"] + (" (upper bound)" if row["role"] == "oracle" else ""),
                 *(f"{row['miou'][s]:.1f}" for s in streams), *(f"{row['change'][s]:+.1f}" for s in streams)]
        if result["oracle"]:
            cells.append("" if row["gap_closed"] is None else f"{100 * row['gap_closed']:.0f}%")
        if result["control"]:
            cells += [f"{row['vs_control'][s]:+.1f}" if row["vs_control"] else "" for s in streams]
        rows.append(cells)
    return table(head, rows)


def class_table(result: dict) -> str:
    """Each checkpoint's IoU per class on the gap stream: which classes a job moved."""
    rows = [[f"`{row['checkpoint']}`", *("" if v is None else f"{v:.0f}" for v in row["class_iou"])]
            for row in result["rows"]]
    return table(["checkpoint", *result["class_names"]], rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="driftseg bench checkpoints", description=__doc__)
    p.add_argument("checkpoints", nargs="+", type=Path)
    p.add_argument("--baseline", type=Path, default=DEFAULT_CHECKPOINT, help="the checkpoint the others are compared to")
    p.add_argument("--oracle", type=Path, help="a checkpoint trained with the target labels (never served)")
    p.add_argument("--control", type=Path,
                   help="a checkpoint trained as long from the same parent without the target frames")
    p.add_argument("--streams", nargs="+", default=["day", "dusk"])
    p.add_argument("--gap-stream", default="dusk", help="the stream whose gap to the oracle is measured")
    p.add_argument("--method", default="source", help="the online method every checkpoint runs with")
    p.add_argument("--max-frames", type=int,
                   help="only the first N frames of every stream; of every segment of a multi-segment stream")
    add_common_arguments(p, checkpoint=False)
    args = p.parse_args(argv)
    if args.gap_stream not in args.streams:
        p.error(f"--gap-stream {args.gap_stream} is not among --streams {args.streams}")

    roles = [("baseline", args.baseline)] + ([("control", args.control)] if args.control else [])
    roles += [("adapted", c) for c in args.checkpoints]
    roles += [("oracle", args.oracle)] if args.oracle else []
    try:
        folder = FrameFolder.open(args.data)
        rows = []
        for role, path in roles:
            ckpt = load_checkpoint(path)
            scores, _ = accuracy.run(ckpt, folder, args.streams, [args.method], max_frames=args.max_frames,
                                     device=args.device)
            rows.append({"checkpoint": os.path.relpath(path), "role": role, "job": ckpt.config.get("job", "?"),
                         "parents": [q["path"] for q in ckpt.config.get("parents", [])],
                         "miou": {s: scores["streams"][s][args.method]["miou"] for s in args.streams},
                         "class_iou": scores["streams"][args.gap_stream][args.method]["class_iou"]})
    except (ValueError, KeyError, FileNotFoundError) as e:
        p.exit(2, f"driftseg bench checkpoints: error: {e}\n")
    base = rows[0]["miou"]
    oracle = rows[-1]["miou"][args.gap_stream] if args.oracle else None
    control = rows[1]["miou"] if args.control else None
    for row in rows:
        row["change"] = {s: row["miou"][s] - base[s] for s in args.streams}
        row["vs_control"] = {s: row["miou"][s] - control[s] for s in args.streams} \
            if control and row["role"] == "adapted" else None
        row["gap_closed"] = gap_closed(row["miou"][args.gap_stream], base[args.gap_stream], oracle) if args.oracle else None
    result = {"method": args.method, "data": str(folder.root), "streams": args.streams, "gap_stream": args.gap_stream,
              "class_names": folder.class_names,
              "oracle": os.path.relpath(args.oracle) if args.oracle else None,
              "control": os.path.relpath(args.control) if args.control else None, "rows": rows}
    table = f"{markdown_table(result)}\n\nIoU per class on `{args.gap_stream}`:\n\n{class_table(result)}"
    print(table)
    if args.out:
        write_results(args.out, result, table)

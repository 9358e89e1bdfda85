"""`driftseg bench accuracy`: the online protocol of BENCHMARK.md, methods x streams.

Frames arrive one at a time in stream order; every method starts each stream from the
checkpoint's source state; the score is mIoU (and mean Dice) from one confusion matrix per
stream. `continual` also gets one row per segment, named `continual/<i>-<segment>`.
"""
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from adapters.pipeline import Pipeline
from adapters.spec import parse_method
from bench.data import FrameFolder
from bench.metrics import ConfusionMatrix
from bench.streams import Stream, open_stream
from models.checkpoint import Checkpoint


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 -> float [1, 3, H, W] in [0, 1]."""
    return torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).float().div_(255)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch sees no CUDA device")
    return torch.device(device)


def run_stream(pipeline: Pipeline, stream: Stream, ignore_index: int, max_frames: int | None) -> dict[str, dict]:
    """Scores of one method on one stream: the whole stream and, for multi-segment streams, each segment."""
    state = pipeline.new_state()
    num_classes = pipeline.num_classes
    whole = ConfusionMatrix(num_classes, ignore_index)
    per_segment = {s.start: ConfusionMatrix(num_classes, ignore_index) for s in stream.segments}
    starts = sorted(per_segment)
    seconds, n = 0.0, 0
    sync = torch.cuda.synchronize if pipeline.device.type == "cuda" else (lambda: None)
    for i, (image, label) in enumerate(stream.frames(max_frames)):
        frame = to_tensor(image).to(pipeline.device)
        sync()
        t0 = time.perf_counter()
        labels, (state,) = pipeline.step(frame, [state])
        sync()
        seconds += time.perf_counter() - t0
        target = torch.from_numpy(label)
        pred = labels[0].cpu()
        whole.update(target, pred)
        segment_cm = per_segment[max(s for s in starts if s <= i)]
        segment_cm.update(target, pred)
        n += 1
    scores = {stream.name: _score(whole, n, seconds)}
    if len(stream.segments) > 1:
        for k, segment in enumerate(stream.segments):
            end = stream.segments[k + 1].start if k + 1 < len(stream.segments) else n
            frames = max(0, min(end, n) - segment.start)
            if frames:
                scores[f"{stream.name}/{k + 1}-{segment.name}"] = _score(per_segment[segment.start], frames, None)
    return scores


def _score(cm: ConfusionMatrix, frames: int, seconds: float | None) -> dict:
    return {
        "miou": round(cm.miou(), 2),
        "dice": round(cm.dice(), 2),
        "frames": frames,
        "ms_per_frame": round(1000 * seconds / max(frames, 1), 3) if seconds is not None else None,
    }


def summarise(streams: dict[str, dict[str, dict]], methods: Sequence[str]) -> dict:
    """Mean mIoU over the streams (continual and its segments excluded) and the change on `day`
    against `source` (the safety figure), per method."""
    plain = [s for s in streams if not s.startswith("continual")]
    summary = {}
    for m in methods:
        values = [streams[s][m]["miou"] for s in plain if m in streams[s]]
        summary[m] = {"mean_miou": round(float(np.mean(values)), 2) if values else None}
        day = streams.get("day", {})
        if "source" in day and m in day:
            summary[m]["day_change"] = round(day[m]["miou"] - day["source"]["miou"], 2)
    return summary


def markdown_table(result: dict) -> str:
    streams = list(result["streams"])
    methods = list(result["summary"])
    head = "| method | " + " | ".join(streams) + " | mean |"
    lines = [head, "|" + " --- |" * (len(streams) + 2)]
    for m in methods:
        cells = [_cell(result["streams"][s].get(m)) for s in streams]
        mean = result["summary"][m]["mean_miou"]
        lines.append(f"| `{m}` | " + " | ".join(cells) + f" | {'' if mean is None else f'{mean:.1f}'} |")
    return "\n".join(lines)


def _cell(score: dict | None) -> str:
    return "" if score is None else f"{score['miou']:.1f}"


def run(
    ckpt: Checkpoint, checkpoint_name: str, folder: FrameFolder, streams: Sequence[str], methods: Sequence[str],
    severity: int = 3, max_frames: int | None = None, device: str = "auto",
) -> dict:
    """The benchmark's result object (see `driftseg bench accuracy --help` for its shape)."""
    dev = resolve_device(device)
    specs = {m: parse_method(m) for m in methods}  # every spec is checked before any work starts
    opened = [open_stream(s, folder, severity) for s in streams]
    for stream in opened:
        stream.prepare(max_frames)
    result = {"checkpoint": checkpoint_name, "data": str(folder.root), "streams": {}}
    bar = tqdm(total=len(opened) * len(methods), desc="bench", unit="run")
    for stream in opened:
        for method, spec in specs.items():
            bar.set_postfix_str(f"{stream.name} / {method}")
            pipeline = Pipeline(ckpt, spec, dev)
            for name, score in run_stream(pipeline, stream, folder.ignore_index, max_frames).items():
                result["streams"].setdefault(name, {})[method] = score
            bar.update()
    bar.close()
    result["summary"] = summarise(result["streams"], list(methods))
    return result


def write(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown_table(result) + "\n")

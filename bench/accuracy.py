"""`driftseg bench accuracy`: the online protocol of BENCHMARK.md, methods x streams.

Frames arrive one at a time in stream order; every method starts each stream from the
checkpoint's source state; the score is mIoU (and mean Dice) from one confusion matrix per
stream. `continual` also gets one row per segment, named `continual/<i>-<segment>`; a stream of
several rounds (`continual10`) one per round, `continual10/round<r>`, and one per segment of each,
`continual10/round<r>/<i>-<segment>`.
"""
import platform
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from driftseg.device import resolve_device
from driftseg.adapters.pipeline import Pipeline
from driftseg.adapters.spec import parse_method
from driftseg.bench.report import table
from driftseg.data.folder import FrameFolder
from driftseg.data.metrics import ConfusionMatrix, class_ious, mean_dice, mean_iou
from driftseg.data.streams import Stream, open_stream
from driftseg.data.transforms import to_tensor
from driftseg.models.checkpoint import Checkpoint


def device_name(device: torch.device) -> str:
    """What the device is, for result files: the GPU's name, or the CPU's."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()


def run_stream(pipeline: Pipeline, stream: Stream, ignore_index: int,
               on_frame: Callable[[int, np.ndarray, torch.Tensor], None] | None = None) -> tuple[dict, dict]:
    """Scores of one method on one stream (the whole stream and, for multi-segment streams, each
    segment), and its trace over frames: per-frame confusion matrices and the auto mode's state.
    `on_frame(index, image, labels)`, if given, sees each frame and its label map (the README's picture)."""
    state = pipeline.new_state()
    frame_cms, shift, alpha = [], [], []
    seconds = 0.0
    sync = torch.cuda.synchronize if pipeline.device.type == "cuda" else (lambda: None)
    for image, label in stream.frames():
        frame = to_tensor(image).to(pipeline.device)
        sync()
        t0 = time.perf_counter()
        labels, (state,) = pipeline.step(frame, [state])
        sync()
        seconds += time.perf_counter() - t0
        cm = ConfusionMatrix(pipeline.num_classes, ignore_index)
        cm.update(torch.from_numpy(label), labels[0].cpu())
        frame_cms.append(cm.mat)
        if on_frame is not None:
            on_frame(len(frame_cms) - 1, image, labels[0])
        score, alpha_mean = pipeline.shift(state)
        if score is not None:
            shift.append(score)
            alpha.append(alpha_mean)
    cms = torch.stack(frame_cms)
    n = len(cms)
    scores = {stream.name: _score(cms.sum(0), n, seconds)}
    if len(stream.segments) > 1:
        bounds = [s.start for s in stream.segments] + [n]
        per_round = len(stream.segments) // stream.rounds
        for r in range(stream.rounds if stream.rounds > 1 else 0):
            lo, hi = bounds[r * per_round], bounds[(r + 1) * per_round]
            scores[f"{stream.name}/round{r + 1}"] = _score(cms[lo:hi].sum(0), hi - lo, None)
        for k, segment in enumerate(stream.segments):
            lo, hi = bounds[k], bounds[k + 1]
            prefix = stream.name if stream.rounds == 1 else f"{stream.name}/round{k // per_round + 1}"
            scores[f"{prefix}/{k % per_round + 1}-{segment.name}"] = _score(cms[lo:hi].sum(0), hi - lo, None)
    switches = state.parts["auto"].switches if "auto" in state.parts else []
    return scores, {"confusion": cms, "shift": shift, "alpha": alpha, "switches": switches}


def _score(mat: torch.Tensor, frames: int, seconds: float | None) -> dict:
    return {
        "miou": round(mean_iou(mat), 2),
        "dice": round(mean_dice(mat), 2),
        "class_iou": [None if v is None else round(v, 2) for v in class_ious(mat)],
        "frames": frames,
        "ms_per_frame": round(1000 * seconds / max(frames, 1), 3) if seconds is not None else None,
    }


def summarise(streams: dict[str, dict[str, dict]], methods: Sequence[str]) -> dict:
    """Per method: the mean mIoU over the streams (continual and its segments excluded), the change
    on `day` against `source` (the safety figure), the time per frame over all timed frames, and
    that time as a multiple of `source`'s in the same run."""
    plain = [s for s in streams if not s.startswith("continual")]
    summary = {}
    for m in methods:
        values = [streams[s][m]["miou"] for s in plain if m in streams[s]]
        summary[m] = {"mean_miou": round(float(np.mean(values)), 2) if values else None}
        timed = [streams[s][m] for s in streams if m in streams[s] and streams[s][m]["ms_per_frame"] is not None]
        if timed:
            ms = sum(t["ms_per_frame"] * t["frames"] for t in timed) / sum(t["frames"] for t in timed)
            summary[m]["ms_per_frame"] = round(ms, 3)
        day = streams.get("day", {})
        if "source" in day and m in day:
            summary[m]["day_change"] = round(day[m]["miou"] - day["source"]["miou"], 2)
    if "source" in summary and summary["source"].get("ms_per_frame"):
        for m in summary:
            if "ms_per_frame" in summary[m]:
                summary[m]["cost_vs_source"] = round(summary[m]["ms_per_frame"] / summary["source"]["ms_per_frame"], 2)
    return summary


SAME_RUN_KEYS = ("checkpoint_sha256", "checkpoint", "data", "severity", "max_frames")


def check_updatable(kept: dict, header: dict) -> None:
    """A ValueError unless a run with `header` (SAME_RUN_KEYS) may update `kept`: checked before the run,
    so that a mismatch costs nothing. Files written before a key was recorded are not checked on it."""
    for key in SAME_RUN_KEYS:
        if key in kept and kept[key] != header[key]:
            raise ValueError(f"cannot update: the file's {key} is {kept[key]!r}, this run's {header[key]!r}")


def merge(kept: dict, rerun: dict) -> dict:
    """`kept` (an earlier result) with the methods of `rerun` put in: a rerun method replaces its rows where
    it had them, a new one comes last. Both must come from the same checkpoint, data, severity and frames:
    a ValueError says which differs. A cost against `source` holds only within one run: it is kept for
    the methods timed in the same run as the `source` row (the rerun ones if `source` was rerun, else the
    kept ones) and dropped for the others."""
    check_updatable(kept, rerun)
    if set(kept["streams"]) != set(rerun["streams"]):
        raise ValueError(f"cannot update: the file has the streams {sorted(kept['streams'])}, this run "
                         f"{sorted(rerun['streams'])}")
    streams = {}
    for name, rows in kept["streams"].items():
        frames = {score["frames"] for score in [*rows.values(), *rerun["streams"][name].values()]}
        if len(frames) > 1:
            raise ValueError(f"cannot update: {name} has {sorted(frames)} frames in the file and this run")
        streams[name] = rows | rerun["streams"][name]
    methods = [*kept["summary"], *(m for m in rerun["summary"] if m not in kept["summary"])]
    summary = summarise(streams, methods)
    rerun_methods = set(rerun["summary"])
    timed_with_source = rerun_methods if "source" in rerun_methods else set(kept["summary"]) - rerun_methods
    for m in set(methods) - timed_with_source:
        summary[m].pop("cost_vs_source", None)
    return kept | rerun | {"streams": streams, "summary": summary}


def markdown_table(result: dict) -> str:
    """One column per stream, per segment of `continual`, per round of `continual10` (its segments of
    each round are in the JSON and the plots only)."""
    streams = [s for s in result["streams"] if s.count("/") < 2]
    rows = []
    for m, summary in result["summary"].items():
        extra = [summary.get(k) for k in ("mean_miou", "ms_per_frame", "cost_vs_source")]
        rows.append([f"`{m}`", *(_cell(result["streams"][s].get(m)) for s in streams),
                     *("" if v is None else f"{v:.{d}f}" for v, d in zip(extra, (1, 1, 2)))])
    return table(["method", *streams, "mean", "ms/frame", "x source"], rows)


def _cell(score: dict | None) -> str:
    return "" if score is None else f"{score['miou']:.1f}"


def run(
    ckpt: Checkpoint, folder: FrameFolder, streams: Sequence[str], methods: Sequence[str], severity: int = 3,
    max_frames: int | None = None, device: str = "auto",
) -> tuple[dict, dict]:
    """The scores of the benchmark's result ({"streams", "summary"}: see `driftseg bench accuracy --help`;
    the caller adds what names the run, SAME_RUN_KEYS), and the traces of the multi-segment streams:
    {stream: {"segments": [(name, start)], "rounds": r, "methods": {method: trace}}}. `max_frames`: only
    the first that many frames of every segment."""
    dev = resolve_device(device)
    specs = {m: parse_method(m) for m in methods}  # every spec is checked before any work starts
    opened = [open_stream(s, folder, severity, per_segment=max_frames) for s in streams]
    for stream in opened:
        stream.prepare()
    result = {"streams": {}}
    traces = {s.name: {"segments": [(g.name, g.start) for g in s.segments], "rounds": s.rounds, "methods": {}}
              for s in opened if len(s.segments) > 1}
    bar = tqdm(total=len(opened) * len(methods), desc="bench", unit="run")
    for stream in opened:
        for method, spec in specs.items():
            bar.set_postfix_str(f"{stream.name} / {method}")
            pipeline = Pipeline(ckpt, spec, dev)
            scores, trace = run_stream(pipeline, stream, folder.ignore_index)
            for name, score in scores.items():
                result["streams"].setdefault(name, {})[method] = score
            if stream.name in traces:
                traces[stream.name]["methods"][method] = trace
            bar.update()
    bar.close()
    result["summary"] = summarise(result["streams"], list(methods))
    return result, traces


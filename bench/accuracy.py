"""`driftseg bench accuracy`: the online protocol of BENCHMARK.md, methods x streams.

Frames arrive one at a time in stream order; every method starts each stream from the
checkpoint's source state; the score is mIoU (and mean Dice) from one confusion matrix per
stream. `continual` also gets one row per segment, named `continual/<i>-<segment>`; a stream of
several rounds (`continual10`) one per round, `continual10/round<r>`, and one per segment of each,
`continual10/round<r>/<i>-<segment>`.

The real-time protocol (`--realtime`; Alfarra et al., ICML 2024, "Evaluation of Test-Time Adaptation Under
Computational Time Constraints"; their code's `delayed_eval_online` with eta = 1): the stream reveals frames
at the frozen model's speed. A method whose step costs C times the frozen model's adapts on a frame, and
the next ceil(C) - 1 frames arrive while it is busy: each is predicted by the method's most recent state,
nothing of it kept (`Pipeline.step(..., adapt=False)`, as their code predicts with the adapted model's
network without its update). C is timed in the same run by `bench speed`'s round robin (`realtime_costs`),
once per method, not per frame: timing one method after another, or frame by frame, measures the machine's
load as much as the method, and the schedule would follow that noise.
"""
import itertools
import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from driftseg.device import resolve_device
from driftseg.adapters.pipeline import Pipeline
from driftseg.adapters.spec import parse_method
from driftseg.bench.report import table
from driftseg.bench.speed import measure, with_ratios
from driftseg.data.folder import FrameFolder
from driftseg.data.metrics import ConfusionMatrix, class_ious, mean_dice, mean_iou
from driftseg.data.streams import Stream, open_stream
from driftseg.data.transforms import to_tensor
from driftseg.models.checkpoint import Checkpoint


def run_stream(pipeline: Pipeline, stream: Stream, ignore_index: int,
               on_frame: Callable[[int, np.ndarray, torch.Tensor], None] | None = None,
               adapt_every: int = 1) -> tuple[dict, dict]:
    """Scores of one method on one stream (the whole stream and, for multi-segment streams, each
    segment), and its trace over frames: per-frame confusion matrices and the auto mode's state.
    `on_frame(index, image, labels)`, if given, sees each frame and its label map (the README's picture).
    `adapt_every` k: the real-time protocol's schedule, the method adapts on frames 0, k, 2k, ... and
    predicts the others from its state without keeping anything."""
    state = pipeline.new_state()
    frame_cms, shift, alpha = [], [], []
    seconds = 0.0
    sync = torch.cuda.synchronize if pipeline.device.type == "cuda" else (lambda: None)
    for image, label in stream.frames():
        frame = to_tensor(image).to(pipeline.device)
        sync()
        t0 = time.perf_counter()
        labels, (state,) = pipeline.step(frame, [state], adapt=len(frame_cms) % adapt_every == 0)
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
    if ("realtime" in kept) != ("realtime" in rerun):
        raise ValueError("cannot update: " + ("the file has" if "realtime" in kept else "this run has")
                         + " real-time rows and the other not: run with --realtime as the file was, or without")
    streams = _merge_streams(kept["streams"], rerun["streams"])
    methods = [*kept["summary"], *(m for m in rerun["summary"] if m not in kept["summary"])]
    summary = summarise(streams, methods)
    rerun_methods = set(rerun["summary"])
    timed_with_source = rerun_methods if "source" in rerun_methods else set(kept["summary"]) - rerun_methods
    for m in set(methods) - timed_with_source:
        summary[m].pop("cost_vs_source", None)
    merged = kept | rerun | {"streams": streams, "summary": summary}
    if "realtime" in kept:  # each method's schedule came from its cost in the run that ran it
        rows = _merge_streams(kept["realtime"]["streams"], rerun["realtime"]["streams"])
        merged["realtime"] = {"streams": rows, "summary": summarise_realtime(rows, methods)}
    return merged


def _merge_streams(kept: dict[str, dict], rerun: dict[str, dict]) -> dict[str, dict]:
    """Per stream, the kept rows with the rerun ones put in; ValueError unless both have the same streams
    of the same lengths."""
    if set(kept) != set(rerun):
        raise ValueError(f"cannot update: the file has the streams {sorted(kept)}, this run {sorted(rerun)}")
    streams = {}
    for name, rows in kept.items():
        frames = {score["frames"] for score in [*rows.values(), *rerun[name].values()]}
        if len(frames) > 1:
            raise ValueError(f"cannot update: {name} has {sorted(frames)} frames in the file and this run")
        streams[name] = rows | rerun[name]
    return streams


def markdown_table(result: dict) -> str:
    """One column per stream, per segment of `continual`, per round of `continual10` (its segments of
    each round are in the JSON and the plots only); the real-time protocol's table below, where it ran."""
    text = _protocol_table(result, {"mean_miou": ("mean", ".1f"), "ms_per_frame": ("ms/frame", ".1f"),
                                    "cost_vs_source": ("x source", ".2f")})
    if "realtime" in result:
        text += ("\n\nReal-time protocol (Alfarra et al. 2024): frames arrive at the frozen model's speed, a method "
                 "adapts on 1 frame in `adapts every` (from its cost `x source`, timed round robin in this run) and "
                 "predicts the others from its state:\n\n"
                 + _protocol_table(result["realtime"], {"mean_miou": ("mean", ".1f"),
                                                        "cost_vs_source": ("x source", ".2f"),
                                                        "adapted_every": ("adapts every", "d")}))
    return text


def _protocol_table(result: dict, columns: dict[str, tuple[str, str]]) -> str:
    """A row per method of `result["summary"]`: its mIoU per stream, then the summary's `columns`
    ({key: (heading, format)})."""
    streams = [s for s in result["streams"] if s.count("/") < 2]
    rows = []
    for m, summary in result["summary"].items():
        rows.append([f"`{m}`", *(_cell(result["streams"][s].get(m)) for s in streams),
                     *("" if summary.get(k) is None else format(summary[k], f) for k, (_, f) in columns.items())])
    return table(["method", *streams, *(heading for heading, _ in columns.values())], rows)


def _cell(score: dict | None) -> str:
    return "" if score is None else f"{score['miou']:.1f}"


def run(
    ckpt: Checkpoint, folder: FrameFolder, streams: Sequence[str], methods: Sequence[str], severity: int = 3,
    max_frames: int | None = None, device: str = "auto", realtime: bool = False,
) -> tuple[dict, dict]:
    """The scores of the benchmark's result ({"streams", "summary"}, and with `realtime` the real-time
    protocol's {"streams", "summary"} under "realtime": see `driftseg bench accuracy --help`; the caller adds
    what names the run, SAME_RUN_KEYS), and the traces of the multi-segment streams:
    {stream: {"segments": [(name, start)], "rounds": r, "methods": {method: trace}}}. `max_frames`: only
    the first that many frames of every segment."""
    if realtime and "source" not in methods:
        raise ValueError("the real-time protocol needs `source` among the methods: its speed is the stream's")
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
    if realtime:
        result["realtime"] = run_realtime(ckpt, folder, opened, specs, result, dev)
    return result, traces


def adapt_every(cost: float) -> int:
    """The real-time schedule of a method that costs `cost` times the frozen model: it adapts on one frame
    in ceil(cost) (on every frame when it is no slower)."""
    return max(1, math.ceil(round(cost, 2)))


COST_FRAMES, COST_WARMUP = 20, 3  # the round robin that times the methods for the real-time schedule


def realtime_costs(ckpt: Checkpoint, stream: Stream, methods: Sequence[str], device: torch.device) -> dict[str, float]:
    """Each method's time per frame over the frozen model's: `bench speed`'s round robin (the methods
    taking turns frame by frame, so that the machine's load weighs on each alike) on the first frames of
    `stream` (again from its first where it is shorter), the median of COST_FRAMES timed frames."""
    frames = [to_tensor(image) for image, _ in stream.frames(COST_FRAMES + COST_WARMUP)]
    frames = list(itertools.islice(itertools.cycle(frames), COST_FRAMES + COST_WARMUP))
    timings = with_ratios(measure(ckpt, frames, ["source", *(m for m in methods if m != "source")], device,
                                  warmup=COST_WARMUP))
    return {m: timings[m]["x_source"] for m in methods}


def run_realtime(ckpt: Checkpoint, folder: FrameFolder, streams: Sequence[Stream], specs: dict,
                 standard: dict, device: torch.device) -> dict:
    """The real-time protocol's {"streams", "summary"} (module docstring), the costs timed on the first
    stream (`realtime_costs`); a method that adapts on every frame has its standard scores there."""
    costs = realtime_costs(ckpt, streams[0], list(specs), device)
    every = {m: adapt_every(costs[m]) for m in specs}
    schedule = {m: {"ms_per_frame": None, "adapted_every": every[m], "cost_vs_source": costs[m]} for m in specs}
    rows = {name: {m: standard["streams"][name][m] | schedule[m] for m in specs if every[m] == 1}
            for name in standard["streams"]}
    slow = [m for m in specs if every[m] > 1]
    bar = tqdm(total=len(streams) * len(slow), desc="real time", unit="run")
    for stream in streams:
        for method in slow:
            bar.set_postfix_str(f"{stream.name} / {method} (adapts 1 frame in {every[method]})")
            scores, _ = run_stream(Pipeline(ckpt, specs[method], device), stream, folder.ignore_index,
                                   adapt_every=every[method])
            for name, score in scores.items():
                rows[name][method] = score | schedule[method]
            bar.update()
    bar.close()
    # in the standard pass's method order
    rows = {name: {m: r[m] for m in specs if m in r} for name, r in rows.items()}
    return {"streams": rows, "summary": summarise_realtime(rows, list(specs))}


def summarise_realtime(streams: dict[str, dict[str, dict]], methods: Sequence[str]) -> dict:
    """Per method: the mean mIoU over the streams as `summarise` takes it, its cost and its real-time schedule."""
    summary = summarise(streams, methods)
    for m in methods:
        row = next(rows[m] for rows in streams.values() if m in rows)
        summary[m] = {k: v for k, v in summary[m].items() if k in ("mean_miou", "day_change")} | \
            {k: row[k] for k in ("cost_vs_source", "adapted_every")}
    return summary


"""Pictures: a multi-segment stream (rolling mIoU per method over frames, the automatic mode's
shift score and mean alpha, its detected switches, and the true domain boundaries), the README's
picture (a frame's overlay beside the automatic mode's shift score and alpha), a stream of
several rounds (mIoU per round, and per segment over the rounds: where a method drifts or collapses),
and the latency of an open-loop load test over its run."""
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from driftseg.data.metrics import mean_iou  # noqa: E402


def rolling_miou(confusion: torch.Tensor, window: int) -> list[float]:
    """mIoU of frames [i - window + 1, i] for each frame i, from per-frame confusion matrices [n, C, C]."""
    cumulative = torch.cat([torch.zeros_like(confusion[:1]), confusion.cumsum(0)])
    return [mean_iou(cumulative[i + 1] - cumulative[max(0, i + 1 - window)]) for i in range(len(confusion))]


def plot_stream(name: str, trace: dict, out: Path, window: int = 20) -> None:
    """`trace` as `bench.accuracy.run` returns it for one stream."""
    shifted = {m: t for m, t in trace["methods"].items() if t["shift"]}
    if shifted:
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 6.5), sharex=True, height_ratios=(2, 1))
    else:
        fig, top = plt.subplots(figsize=(12, 4.5))
        bottom = None
    colours = plt.get_cmap("tab10" if len(trace["methods"]) <= 10 else "tab20")
    for i, (method, t) in enumerate(trace["methods"].items()):
        top.plot(rolling_miou(t["confusion"], window), label=method, lw=1.3, color=colours(i))
    for method, t in shifted.items():
        plot_shift(bottom, method, t)
    _mark_segments(top, trace["segments"], label=True)
    if bottom is not None:
        _mark_segments(bottom, trace["segments"])
    top.set_ylabel(f"mIoU over the last {window} frames (%)")
    top.legend(fontsize=8, ncol=3, loc="lower left")
    top.set_title(f"stream `{name}`: grey lines are domain boundaries"
                  + (", red dotted lines the switches auto detected" if shifted else ""))
    (bottom or top).set_xlabel("frame")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_shift(ax, method: str, t: dict) -> None:
    """The automatic mode's per-frame shift score and mean alpha, and the switches it detected (red)."""
    ax.plot(t["shift"], label=f"shift score ({method})", lw=1.2)
    ax.plot(t["alpha"], label=f"mean alpha ({method})", lw=1.2, ls="--")
    for frame in t["switches"]:  # above the grey domain boundaries: a switch detected on one shows
        ax.axvline(frame - 1, color="red", lw=0.8, ls=":", zorder=3)
    ax.set_ylabel("auto (symlog scale)")
    ax.set_yscale("symlog", linthresh=1)
    ax.legend(fontsize=8, loc="upper left")


def _mark_segments(ax, segments: list[tuple[str, int]], label: bool = False) -> None:
    """A grey line at each domain boundary, with the segment's name on top if `label`."""
    for segment, start in segments:
        ax.axvline(start, color="grey", lw=0.8)
        if label:
            ax.text(start + 1, 1.0, segment, transform=ax.get_xaxis_transform(), va="top", fontsize=9)


def plot_face(name: str, trace: dict, method: str, frame: int, overlay, caption: str, out: Path) -> None:
    """The README's picture: one frame's colour overlay beside `method`'s shift score and alpha over the
    stream (`trace` as for plot_stream), the frame shown marked on the plot."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.2), width_ratios=(1, 1.45))
    left.imshow(overlay)
    left.set_axis_off()
    left.set_title(caption, fontsize=10)
    plot_shift(right, method, trace["methods"][method])
    _mark_segments(right, trace["segments"], label=True)
    right.axvline(frame, color="black", lw=1.2, ls="--")
    right.set_ylim(bottom=0)
    right.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    right.set_xlabel("frame (dashed black: the frame on the left)")
    right.set_title(f"stream `{name}`: grey lines are domain boundaries, red dotted lines the switches "
                    f"{method} detected", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def plot_rounds(name: str, streams: dict[str, dict[str, dict]], out: Path) -> None:
    """A stream of several rounds of the same segments, from the `streams` of `bench.accuracy`'s result
    (its rows `NAME/round<r>` and `NAME/round<r>/<i>-<segment>`): on top each method's mIoU per round,
    below one panel per segment of the round with its mIoU over the rounds."""
    rounds = [s for s in streams if s.startswith(f"{name}/round") and s.count("/") == 1]
    segments = [s.split("/")[2] for s in streams if s.startswith(f"{rounds[0]}/")]
    methods = list(streams[name])
    rows = math.ceil(len(segments) / 3)
    fig = plt.figure(figsize=(12, 3.4 + 2.4 * rows))
    grid = fig.add_gridspec(1 + rows, 3, height_ratios=(1.5, *[1] * rows))
    top = fig.add_subplot(grid[0, :])
    panels = [fig.add_subplot(grid[1 + k // 3, k % 3], sharey=top) for k in range(len(segments))]
    colours = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    x = range(1, len(rounds) + 1)
    for i, method in enumerate(methods):
        top.plot(x, [streams[r][method]["miou"] for r in rounds], marker="o", lw=1.3, label=method, color=colours(i))
        for ax, segment in zip(panels, segments):
            ax.plot(x, [streams[f"{r}/{segment}"][method]["miou"] for r in rounds], marker=".", lw=1.1,
                    color=colours(i))
    top.set_title(f"stream `{name}`: {len(rounds)} rounds of the same segments, no reset between them")
    top.set_ylabel("mIoU of the round (%)")
    top.legend(fontsize=8, ncol=4, loc="lower left")
    for k, (ax, segment) in enumerate(zip(panels, segments)):
        ax.set_title(f"segment {segment}", fontsize=9)
        ax.set_xticks(list(x))
        if k % 3 == 0:
            ax.set_ylabel("mIoU (%)")
        if k >= len(segments) - 3:
            ax.set_xlabel("round")
    top.set_xticks(list(x))
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_latency(levels: list[dict], out: Path) -> None:
    """Each open-loop level of `bench.load` (its `latency_over_run`): latency against when the frame
    was due. A level the server keeps up with stays flat; one it cannot climbs as its queue grows."""
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for level in levels:
        if not level.get("latency_over_run"):
            continue
        due, latency = zip(*level["latency_over_run"])
        label = (f"{level['cameras']} camera(s) x {level['rate_per_camera']:g} frames/s: "
                 f"{'steady' if level['steady'] else 'not steady'}, {level['errors']} errors")
        ax.plot(due, latency, ".", ms=2.5, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("when the frame was due (s into the run)")
    ax.set_ylabel("latency from then (ms, log scale)")
    ax.set_title("open-loop load: each camera sends at a fixed rate, answered or not")
    ax.legend(fontsize=8, markerscale=4)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)

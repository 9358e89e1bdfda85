"""Pictures: a multi-segment stream (rolling mIoU per method over frames, the automatic mode's
shift score and mean alpha, its detected switches, and the true domain boundaries), and the
latency of an open-loop load test over its run."""
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
        bottom.plot(t["shift"], label=f"shift score ({method})", lw=1.2)
        bottom.plot(t["alpha"], label=f"mean alpha ({method})", lw=1.2, ls="--")
        for frame in t["switches"]:
            bottom.axvline(frame - 1, color="red", lw=0.8, ls=":")
    for ax in filter(None, (top, bottom)):
        for segment, start in trace["segments"]:
            ax.axvline(start, color="grey", lw=0.8)
    for segment, start in trace["segments"]:
        top.text(start + 1, 1.0, segment, transform=top.get_xaxis_transform(), va="top", fontsize=9)
    top.set_ylabel(f"mIoU over the last {window} frames (%)")
    top.legend(fontsize=8, ncol=3, loc="lower left")
    top.set_title(f"stream `{name}`: grey lines are domain boundaries"
                  + (", red dotted lines the switches auto detected" if shifted else ""))
    (bottom or top).set_xlabel("frame")
    if bottom is not None:
        bottom.set_ylabel("auto (symlog scale)")
        bottom.set_yscale("symlog", linthresh=1)
        bottom.legend(fontsize=8, loc="upper left")
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

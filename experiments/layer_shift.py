"""How far each protocol stream moves each BN layer: the shift s_l (the stream's state against the source, in
units of the layer's in-domain calibration tau_l, adapters/auto.py) that `auto` reads after every frame, its
median and 90th percentile over the frames of each whole stream, with `auto`'s mIoU there. It places `auto`'s
alpha curve (auto.AlphaCurve): the floor holds where a natural drift (dusk) moves a layer, and falls beyond.

    .venv/bin/python experiments/layer_shift.py --out experiments/results/layer-shift.json

Writes the JSON, a Markdown table (per stream: the largest median shift, how many of the layers sit past the
first knee, past `far` and past twice it) and a PNG heat map (streams x layers, median shift, log scale).
"""
import argparse
from pathlib import Path

import matplotlib
import numpy as np
import torch
from tqdm import tqdm

from driftseg.adapters.pipeline import Pipeline
from driftseg.adapters.spec import RECOMMENDED, parse_method
from driftseg.bench.report import table, write_results
from driftseg.data.folder import FrameFolder
from driftseg.data.metrics import ConfusionMatrix, mean_iou
from driftseg.data.streams import PROTOCOL_STREAMS, open_stream
from driftseg.data.transforms import to_tensor
from driftseg.models.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402


def layer_shifts(pipeline: Pipeline, stream, ignore_index: int) -> tuple[torch.Tensor, float]:
    """[frames, layers] the shift of every adapted layer after each frame (the stream's state as
    GET /adaptation/state shows it), and the method's mIoU over the stream."""
    state, shifts = pipeline.new_state(), []
    cm = ConfusionMatrix(pipeline.num_classes, ignore_index)
    for image, label in stream.frames():
        labels, (state,) = pipeline.step(to_tensor(image), [state])
        cm.update(torch.from_numpy(label), labels[0].cpu())
        shifts.append(torch.tensor([layer["shift"] for layer in pipeline.describe(state)["layers"]]))
    return torch.stack(shifts), mean_iou(cm.mat)


def heat_map(streams: dict[str, list[float]], curve, out: Path) -> None:
    names = list(streams)
    grid = np.array([streams[n] for n in names]).clip(0.1)
    fig, ax = plt.subplots(figsize=(12, 0.45 * len(names) + 1.6))
    image = ax.imshow(grid, aspect="auto", cmap="magma", norm=LogNorm(vmin=0.3, vmax=float(grid.max())))
    fallen = ((curve.far, "o"), (2 * curve.far, "x")) if curve.far else ()  # the layers where the floor has fallen
    for level, marker in fallen:
        rows, cols = np.nonzero(grid > level)
        style = {"facecolors": "none", "edgecolors": "white"} if marker == "o" else {"color": "white"}
        ax.scatter(cols, rows, s=14, marker=marker, linewidths=0.8, label=f"past {level:g} tau", **style)
    if fallen:
        ax.legend(loc="upper right", fontsize=8, framealpha=0.6)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("BN layer (input to output)")
    bar = fig.colorbar(image, ax=ax, pad=0.01)
    bar.set_label("median shift over the stream (tau)")
    falls = f", falls from {curve.far:g} tau, reaches {curve.low:g} at {2 * curve.far:g}" if curve.far else ""
    ax.set_title(f"How far each stream moves each layer: alpha is at its floor {curve.floor:g} past "
                 f"{2 - curve.floor:g} tau{falls}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", nargs="+", default=[s for s in PROTOCOL_STREAMS if s != "continual"])
    p.add_argument("--method", default=RECOMMENDED, help="an auto spec (default: the recommended one)")
    p.add_argument("--data", help="frame folder (default: $DRIFTSEG_DATA or ../shared/data/camvid)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    ckpt, folder = load_checkpoint(DEFAULT_CHECKPOINT), FrameFolder.open(args.data)
    spec = parse_method(args.method)
    network = Pipeline(ckpt, spec, "cpu").network
    if network.name != "auto":
        p.error(f"--method must be an auto spec (its layers' shifts are what this measures), got {args.method!r}")
    curve = network.rule.curve
    knees = [2 - curve.floor] + ([curve.far, 2 * curve.far] if curve.far else [])  # where alpha reaches its floor(s)
    rows, medians, doc = [], {}, {"method": args.method, "streams": {}}
    for name in tqdm(args.streams, desc="streams", unit="stream"):
        stream = open_stream(name, folder, 3)
        stream.prepare()
        shifts, miou = layer_shifts(Pipeline(ckpt, spec, "cpu"), stream, folder.ignore_index)
        median, q90 = shifts.median(0).values, shifts.quantile(0.9, 0)
        medians[name] = median.tolist()
        doc["streams"][name] = {"miou": miou, "frames": len(shifts), "median": median.tolist(), "q90": q90.tolist()}
        rows.append([name, f"{miou:.1f}", f"{median.max():.1f}", f"{q90.max():.1f}",
                     *(str(int((median > level).sum())) for level in knees)])
    header = ["stream", "mIoU", "largest median shift", "largest 90th pct",
              *(f"layers past {level:g}" for level in knees)]
    write_results(args.out, doc, f"`{args.method}`, {len(medians[args.streams[0]])} BN layers, shifts in tau:\n\n"
                  + table(header, rows))
    heat_map(medians, curve, args.out.with_suffix(".png"))
    print(f"wrote {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()

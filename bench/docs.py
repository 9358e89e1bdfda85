"""The README's generated parts, from committed results, never typed:

- `driftseg bench readme`: the headline results table (from `methods.json`) and the methods table (its cost
  column from `speed-peers.json`), each between marker comments in README.md that the docs site includes
  too (pymdownx.snippets sections: `--8<-- "README.md:methods"`); `--check` says whether they are current.
- `driftseg bench picture`: one frame's colour overlay under a method beside that method's shift score and
  alpha over the `continual` stream, the README's picture.
"""
import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import torch

from driftseg.adapters.spec import method_table
from driftseg.bench.report import add_common_arguments, table

RESULTS = Path("experiments/results")
HEADLINE_METHODS = ("source", "ptbn", "tent", "auto")

# What each name of adapters/spec.py's method_table() does, in words, and its paper: the one thing the
# methods table needs that the code cannot say. Which names exist, what an alias stands for, backprop,
# served and exported come from method_table(), so a new method shows up (and fails here without a card).
METHOD_CARDS = {
    "source": ("the frozen model, BN folded into the convolutions", ""),
    "ema": ("EMA of each BN layer's input statistics, alpha-blended with the source's (mixture variance)",
            "TTN's blend, Lim et al. 2023"),
    "auto": ("per-layer alpha from a calibrated shift score, restart at domain switches", "this project"),
    "mixbn": ("a fixed mix of source and frame BN statistics, nothing kept", "Schneider et al. 2020"),
    "adamixbn": ("source and stream BN statistics mixed by how far each lies from the frame's",
                 "DomainAdaptor's AdaMixBN, Zhang et al. 2023"),
    "unmixtns": ("K statistics components per BN layer, the frame mixed into the nearest", "Tomar et al. 2024"),
    "dua": ("BN statistics from 16 augmented copies of each frame", "Mirza et al. 2022"),
    "tent": ("one Adam step per frame on the BN affine parameters (entropy)", "Wang et al. 2021"),
    "cotta": ("mean teacher on augmented views, stochastic restore to the source weights", "Wang et al. 2022"),
    "proto": ("class prototypes of the classifier's features, mixed into the scores", "DIGA, Wang et al. 2023"),
    "lame": ("the output smoothed over a kNN graph of the classifier's features", "Boudiaf et al. 2022"),
    "lc": ("label calibration: running soft-label prototypes, nearest one per pixel", "Bohdal, Li, Hospedales 2023"),
    "rdumb": ("the stream's whole state reset to the source every `every` frames, over any method",
              "RDumb, Press et al. 2023"),
    "fda": ("the frame's low-frequency amplitude moved toward the source's", "Yang & Soatto 2020"),
    "ptbn": ("each frame normalised with its own BN statistics", "Nado et al. 2020"),
    "norm_alpha": ("9 parts source, 1 part frame statistics", "Schneider et al. 2020"),
    "rbn": ("a slow EMA from the source statistics", "RoTTA's robust BN"),
    "diga": ("fixed source/frame BN mix and class prototypes", "Wang et al. 2023"),
}


def headline(results: Path = RESULTS) -> str:
    """source, ptbn, tent and auto on every protocol stream, from `methods.json`."""
    acc = json.loads((results / "methods.json").read_text())
    streams = [s for s in acc["streams"] if "/" not in s]  # the protocol's streams, not continual's segments
    rows = [[f"`{m}`", *(f"{acc['streams'][s][m]['miou']:.1f}" for s in streams),
             f"{acc['summary'][m]['mean_miou']:.1f}"] for m in HEADLINE_METHODS]
    return (table(["method", *streams, "mean"], rows) + "\n\n"
            f"mIoU (%), online protocol, severity {acc['severity']}, batch 1, the default checkpoint; `mean` leaves "
            "`continual` out. From `experiments/results/methods.json` (`driftseg bench accuracy`, "
            "`experiments/rerun-cpu.sh methods`); `driftseg bench readme` writes this block.")


def methods_table(results: Path = RESULTS) -> str:
    """Every name of method_table() with its card and its cost against the frozen model from
    `speed-peers.json`."""
    speed = json.loads((results / "speed-peers.json").read_text())["methods"]
    missing = [row.name for row in method_table() if row.name not in METHOD_CARDS]
    if missing:
        raise KeyError(f"no card in bench/docs.py METHOD_CARDS for {', '.join(missing)}")
    rows = []
    for row in method_table():
        what, paper = METHOD_CARDS[row.name]
        rows.append([f"`{row.name}`", f"`{row.stands_for}`: {what}" if row.stands_for else what, row.stage,
                     "yes" if row.backprop else "no", "yes" if row.served else "no", "yes" if row.exported else "no",
                     paper, f"{speed[row.name]['x_source']:.2f}" if row.name in speed else ""])
    return (table(["name", "what it does", "stage", "backprop", "served", "ONNX", "paper", "x source"], rows) + "\n\n"
            "A spec joins one network component with input and output ones (`ema(m=0.1,alpha=0.5)+lc`); an alias "
            "stands for the spec shown. Names, stages, `served` and `ONNX` from `adapters/spec.py`'s "
            "`method_table()`; `x source`: median time per frame against the frozen model, `driftseg bench speed` "
            "round robin on the 2-core CPU, from `experiments/results/speed-peers.json` (blank: not timed on its "
            "own); `driftseg bench readme` writes this block.")


def protocols(results: Path = RESULTS) -> str:
    """Each method's mean under the standard and the real-time protocol, from `realtime.json`."""
    acc = json.loads((results / "realtime.json").read_text())
    realtime = acc["realtime"]["summary"]
    rows = [[f"`{m}`", f"{s['mean_miou']:.1f}", f"{realtime[m]['mean_miou']:.1f}", f"{realtime[m]['cost_vs_source']:.2f}",
             str(realtime[m]["adapted_every"]), f"{s['day_change']:+.1f}"] for m, s in acc["summary"].items()]
    return (table(["method", "mean", "mean, real time", "x source", "adapts every", "day change"], rows) + "\n\n"
            "mIoU (%) over the protocol streams, whole, under the standard and the real-time protocol (frames arriving "
            "at the frozen model's speed: a method adapts on 1 frame in `adapts every`, by its cost timed round robin "
            "in the same run). From `experiments/results/realtime.json` (`experiments/peers.sh realtime`); "
            "`driftseg bench readme` writes this block.")


BLOCKS = {"headline": headline, "methods": methods_table, "protocols": protocols}


def fill(text: str, blocks: dict[str, str]) -> str:
    """`text` with each named block between its marker comments replaced."""
    for name, body in blocks.items():
        pattern = re.compile(rf"(<!-- --8<-- \[start:{name}\] -->\n).*?(<!-- --8<-- \[end:{name}\] -->)", re.S)
        if not pattern.search(text):
            raise ValueError(f"no block {name!r}: expected '<!-- --8<-- [start:{name}] -->' and "
                             f"'<!-- --8<-- [end:{name}] -->' lines")
        text = pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)
    return text


def readme_main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="driftseg bench readme",
                                description="Write the README's generated blocks (headline results, methods) "
                                "from the committed result files.")
    p.add_argument("--readme", type=Path, default=Path("README.md"))
    p.add_argument("--results", type=Path, default=RESULTS, help="the folder of committed results")
    p.add_argument("--check", action="store_true", help="only say whether the blocks are current (exit 1 if not)")
    args = p.parse_args(argv)
    text = args.readme.read_text()
    filled = fill(text, {name: make(args.results) for name, make in BLOCKS.items()})
    if args.check:
        if filled != text:
            sys.exit(f"{args.readme}: its generated blocks differ from {args.results}: run driftseg bench readme")
        print(f"{args.readme}: its generated blocks are current")
    elif filled != text:
        args.readme.write_text(filled)
        print(f"wrote {args.readme}")


def picture_main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="driftseg bench picture",
                                description="The README's picture: a frame's colour overlay under METHOD beside "
                                "its per-frame shift score and alpha over the `continual` stream, as one PNG.")
    p.add_argument("--method", default="auto", help="a method spec with the automatic mode (default auto)")
    p.add_argument("--segment", default="fog", help="the overlay shows the middle frame of this segment")
    p.add_argument("--severity", type=int, default=3, choices=range(1, 6))
    p.add_argument("--max-frames", type=int, help="only the first N frames of every segment")
    add_common_arguments(p)
    args = p.parse_args(argv)
    if args.out is None:
        p.error("--out PNG is required")

    from driftseg.adapters.pipeline import Pipeline
    from driftseg.adapters.spec import parse_method
    from driftseg.bench.accuracy import run_stream
    from driftseg.bench.plot import plot_face
    from driftseg.data.folder import FrameFolder
    from driftseg.data.streams import open_stream
    from driftseg.device import resolve_device
    from driftseg.models.checkpoint import load_checkpoint
    from driftseg.service.imaging import overlay

    ckpt = load_checkpoint(args.checkpoint)
    folder = FrameFolder.open(args.data)
    stream = open_stream("continual", folder, args.severity, per_segment=args.max_frames)
    bounds = [s.start for s in stream.segments] + [len(stream)]
    chosen = [k for k, s in enumerate(stream.segments) if s.name == args.segment]
    if not chosen:
        p.error(f"--segment {args.segment!r}: expected one of {[s.name for s in stream.segments]}")
    frame = (bounds[chosen[0]] + bounds[chosen[0] + 1]) // 2
    stream.prepare()
    pipeline = Pipeline(ckpt, parse_method(args.method), resolve_device(args.device))
    shown = {}

    def keep(index: int, image: np.ndarray, labels: torch.Tensor) -> None:
        if index == frame:
            shown["overlay"] = overlay(image, labels.cpu().numpy(), np.asarray(ckpt.palette, np.uint8))

    _, trace = run_stream(pipeline, stream, folder.ignore_index, on_frame=keep)
    if not trace["shift"]:
        p.error(f"--method {args.method!r} has no shift score: expected a spec with the automatic mode (auto)")
    caption = f"frame {frame} of `continual` ({args.segment}, severity {args.severity}), labelled by {args.method}"
    plot_face("continual", {"segments": [(s.name, s.start) for s in stream.segments],
                            "methods": {args.method: trace}}, args.method, frame, shown["overlay"], caption, args.out)
    print(f"wrote {args.out}")

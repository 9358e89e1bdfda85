"""`driftseg bench model`: the raw throughput of the frozen and the adapted pipeline at given batch
sizes, without HTTP: the ceiling the service's throughput (`driftseg bench load`) is measured
against. Each batch carries frames of as many different streams; the methods take turns batch by
batch, so the machine's load weighs on each alike.
"""
import argparse
import itertools
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from driftseg.device import device_name, resolve_device
from driftseg.adapters.engines import BACKENDS, create_backend
from driftseg.adapters.pipeline import Pipeline
from driftseg.adapters.pool import StatePool, pool_refusal
from driftseg.adapters.spec import parse_method
from driftseg.bench.report import add_common_arguments, aliases_run, table, write_results
from driftseg.bench.speed import round_robin
from driftseg.data.folder import FrameFolder
from driftseg.data.streams import open_stream
from driftseg.data.transforms import to_tensor
from driftseg.models.checkpoint import Checkpoint, load_checkpoint


def measure(pipelines: dict[str, "Pipeline | Pooled"], frame: torch.Tensor, batches: Sequence[int], steps: int,
            warmup: int = 3) -> dict[int, dict[str, dict]]:
    """{batch: {label: {"ms_per_batch", "frames_per_s"}}} from the median of `steps` timed steps."""
    out = {}
    # a compiled pipeline compiles in its first warm-up step at each batch size: the bar's ETA firms up after
    bar = tqdm(total=len(batches) * (warmup + steps) * len(pipelines), desc="bench model", unit="step")
    for b in batches:
        bar.set_postfix(batch=b)
        times = round_robin(pipelines, [frame.repeat(b, 1, 1, 1)] * (warmup + steps), warmup,
                            on_labels=lambda *_: bar.update())
        out[b] = {k: {"ms_per_batch": round(1000 * statistics.median(t), 3),
                      "frames_per_s": round(b / statistics.median(t), 1)} for k, t in times.items()}
    bar.close()
    return out


class Pooled:
    """A StatePool in a pipeline's place for `round_robin`: a stream's state is its slot."""

    def __init__(self, pipeline: Pipeline, slots: int):
        self.pool, self.device, self._slots = StatePool(pipeline, slots), pipeline.device, itertools.cycle(range(slots))

    def new_state(self) -> int:
        slot = next(self._slots)
        self.pool.reset(slot)
        return slot

    def step(self, images: torch.Tensor, slots: list[int]) -> tuple[torch.Tensor, list[int]]:
        return self.pool.step(images, slots), slots


def build(ckpt: Checkpoint, methods: Sequence[str], engines: Sequence[str], device: torch.device,
          workdir: Path, pool_slots: int = 0) -> dict[str, Pipeline | Pooled]:
    """A pipeline per method and engine, labelled `method` (torch) or `method (ENGINE)`: `compiled` is
    the torch engine through torch.compile (CUDA graphs on a GPU), `onnx` runs a file exported into
    `workdir`. With `pool_slots`, also each pipeline with a StatePool of that many streams (torch and
    compiled, methods that have one), labelled `... [pool]`."""
    pipelines = {}
    for method in methods:
        for engine in engines:
            backend = create_backend(engine, onnx_file=workdir / f"{len(pipelines)}.onnx")
            pipeline = Pipeline(ckpt, parse_method(method), device, backend=backend)
            label = method if engine == "torch" else f"{method} ({engine})"
            pipelines[label] = pipeline
            if pool_slots and not pool_refusal(pipeline):
                pipelines[f"{label} [pool]"] = Pooled(pipeline, pool_slots)
    return pipelines


def markdown_table(result: dict[int, dict[str, dict]], methods: Sequence[str]) -> str:
    base = methods[0]
    head = ["batch"] + [f"`{m}` {col}" for m in methods for col in ("ms/batch", "frames/s")]
    head += [f"`{m}` x `{base}`" for m in methods[1:]]
    rows = ([str(b)] + [f"{row[m][key]:.1f}" for m in methods for key in ("ms_per_batch", "frames_per_s")]
            + [f"{row[m]['ms_per_batch'] / row[base]['ms_per_batch']:.2f}" for m in methods[1:]]
            for b, row in result.items())
    return table(head, rows)


def engine_tables(result: dict[int, dict[str, dict]], methods: Sequence[str], engines: Sequence[str]) -> str:
    """One table per engine: a row per method, per batch size its ms per frame and its ratio to the first
    method on the same engine."""
    parts = []
    for engine in engines:
        label = (lambda m: m) if engine == "torch" else (lambda m: f"{m} ({engine})")
        base = label(methods[0])
        head = ["method"] + [f"batch {b}: {col}" for b in result for col in ("ms/frame", f"x `{methods[0]}`")]
        rows = []
        for m in methods:
            for name, key in ((f"`{m}`", label(m)), (f"`{m}` in a pool", f"{label(m)} [pool]")):
                if key not in next(iter(result.values())):
                    continue
                cells = [name]
                for b, row in result.items():
                    ms = row[key]["ms_per_batch"]
                    cells += [f"{ms / b:.1f}", f"{ms / row[base]['ms_per_batch']:.2f}"]
                rows.append(cells)
        parts.append(f"**{engine}**\n\n{table(head, rows)}")
    return "\n\n".join(parts)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="driftseg bench model", description=__doc__)
    p.add_argument("--stream", default="day", help="the stream whose first frame is timed")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    p.add_argument("--methods", nargs="+", default=["source", "auto"], help="the first is the baseline of the ratios")
    p.add_argument("--engines", nargs="+", default=["torch"], choices=BACKENDS,
                   help="run each method on each engine (compiled: torch.compile, CUDA graphs on a GPU, compiled "
                        "in the warm-up steps; onnx: exported first; both take a while)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per batch size and method")
    p.add_argument("--pool", action="store_true",
                   help="also each method with its streams' states in a device pool (adapters/pool.py; torch and "
                        "compiled engines, methods that have one)")
    add_common_arguments(p)
    args = p.parse_args(argv)
    try:
        ckpt = load_checkpoint(args.checkpoint)
        device = resolve_device(args.device)
        image, _ = next(open_stream(args.stream, FrameFolder.open(args.data)).frames(1))
        frame = to_tensor(image)
        with tempfile.TemporaryDirectory() as workdir:
            pipelines = build(ckpt, args.methods, args.engines, device, Path(workdir), max(args.batches) if args.pool else 0)
            result = measure(pipelines, frame, args.batches, args.steps)
    except (ValueError, KeyError, FileNotFoundError, StopIteration) as e:
        p.exit(2, f"driftseg bench model: error: {e!r}\n")
    table = (markdown_table(result, list(pipelines)) if len(args.engines) == 1 and not args.pool
             else engine_tables(result, args.methods, args.engines))
    print(table)
    if args.out:
        doc = {"checkpoint": str(args.checkpoint), "device": str(device), "device_name": device_name(device),
               "threads": torch.get_num_threads(), "torch": torch.__version__, "frame_size": list(frame.shape[-2:]),
               "methods": list(pipelines), "batches": {str(b): row for b, row in result.items()},
               **aliases_run(args.methods)}
        write_results(args.out, doc, table)

"""`driftseg bench training`: the speed of `train source`'s iteration (an augmented batch, forward,
loss, backward, AdamW step) under settings that change only speed: memory format, bf16 autocast,
torch.compile and the number of threads; each against the first setting, in the same run.

The settings take turns step by step (each with its own network and optimizer), so that the
machine's load falls on all of them alike; the threads are set per group. The augmentation of a
batch (train source's, on uint8 frames held in memory) is timed on its own.
"""
import argparse
import statistics
import time

import torch
from torch.nn import functional as F

from driftseg.device import device_name, resolve_device
from driftseg.bench.report import add_common_arguments, table, write_results
from driftseg.data.folder import FrameFolder
from driftseg.data.transforms import load_frames
from driftseg.models.registry import create_model
from driftseg.training import common
from driftseg.training.source import IMAGENET_MEAN, IMAGENET_STD

# name -> (channels_last, bf16 autocast, torch.compile)
SETTINGS = {
    "fp32": (False, False, False),
    "channels_last": (True, False, False),
    "channels_last+bf16": (True, True, False),
    "channels_last+compile": (True, False, True),
}


class Trainer:
    """One setting's network, optimizer and step."""

    def __init__(self, setting: str, num_classes: int, ignore_index: int, device: torch.device):
        self.channels_last, self.bf16, compiled = SETTINGS[setting]
        torch.manual_seed(0)
        model = create_model("lraspp_mobilenet_v3_large", num_classes, IMAGENET_MEAN, IMAGENET_STD).to(device).train()
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        self.model = torch.compile(model) if compiled else model
        self.ignore_index = ignore_index

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, torch.bfloat16, enabled=self.bf16):
            loss = F.cross_entropy(self.model(x), y, ignore_index=self.ignore_index)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def measure(folder: FrameFolder, settings: list[str], threads: list[int], device: torch.device, size, crop,
            batch_size: int, steps: int, warmup: int) -> list[dict]:
    images, labels = load_frames(folder, "source_train", size, device)
    augment = common.augmentation(crop, folder.ignore_index, short_side=min(size))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rows = []
    for n in threads:
        torch.set_num_threads(n)
        batches = common.Batches(images, labels, batch_size, augment, common.Dist(0, 1, device), seed=0)
        trainers = {s: Trainer(s, len(folder.class_names), folder.ignore_index, device) for s in settings}
        times = {s: [] for s in settings}
        augment_times = []
        for i in range(warmup + steps):
            start = time.perf_counter()
            x, y = next(batches)
            sync()
            augment_times.append(time.perf_counter() - start)
            for s, trainer in trainers.items():
                start = time.perf_counter()
                trainer.step(x, y)
                sync()
                if i >= warmup:
                    times[s].append(time.perf_counter() - start)
            print(f"threads {n}: step {i + 1}/{warmup + steps}", flush=True)
        base = statistics.median(times[settings[0]])
        augment_s = statistics.median(augment_times)
        for s in settings:
            step_s = statistics.median(times[s])
            rows.append({"setting": s, "threads": n, "step_s": round(step_s, 4), "augment_s": round(augment_s, 4),
                         "it_per_s": round(1 / (step_s + augment_s), 3), "x_first": round(step_s / base, 3)})
    return rows


def markdown_table(rows: list[dict]) -> str:
    head = ["setting", "threads", "s/step (median)", "augmentation s/batch", "it/s (step + augmentation)",
            "x first setting"]
    return table(head, ([f"`{r['setting']}`", str(r["threads"]), f"{r['step_s']:.3f}", f"{r['augment_s']:.3f}",
                         f"{r['it_per_s']:.3f}", f"{r['x_first']:.2f}"] for r in rows))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="driftseg bench training", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p, checkpoint=False)
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS),
                   help="the first is the reference of the ratios")
    p.add_argument("--threads", nargs="+", type=int, default=[torch.get_num_threads()])
    p.add_argument("--input-size", type=int, nargs=2, default=[360, 480], metavar=("H", "W"))
    p.add_argument("--crop", type=int, nargs=2, default=[320, 448], metavar=("H", "W"))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (torch.compile compiles in them)")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    rows = measure(FrameFolder.open(args.data), args.settings, args.threads, device, tuple(args.input_size),
                   tuple(args.crop), args.batch_size, args.steps, args.warmup)
    text = markdown_table(rows)
    print(text)
    if args.out:
        doc = {"device": device_name(device), "input_size": args.input_size, "crop": args.crop,
               "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup, "rows": rows}
        write_results(args.out, doc, text)

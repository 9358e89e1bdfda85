"""Pieces every training job shares: distributed set-up, augmentation and endless batches, the poly
schedule, progress lines with ETA and a JSONL log, evaluation, the source amplitude band, and what a
checkpoint's config records. The loop that uses them is loop.py."""
import itertools
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler
from torchvision import tv_tensors
from torchvision.transforms import v2

from driftseg.adapters.fda import low_freq_amplitude
from driftseg.device import resolve_device
from driftseg.data.metrics import ConfusionMatrix
from driftseg.data.transforms import to_unit
from driftseg.models.checkpoint import Checkpoint, file_sha256

AMPLITUDE_BETA = 0.1  # the widest FDA band the checkpoint can serve


@dataclass
class Dist:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> Dist:
    """Single process, or one process of a `torchrun` group (NCCL on GPU, gloo on CPU)."""
    device = resolve_device(device).type
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return Dist(0, 1, torch.device(device))
    local = int(os.environ["LOCAL_RANK"])
    if device == "cuda":
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if device == "cuda" else "gloo")
    dev = torch.device(device, local) if device == "cuda" else torch.device("cpu")
    return Dist(dist.get_rank(), dist.get_world_size(), dev)


def mixed_precision(device: torch.device):
    """The jobs' autocast: bf16 on a GPU; float32 on the CPU, where bf16 measured slower
    (`driftseg bench training`)."""
    return torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda")


def augmentation(
    crop: tuple[int, int], ignore_index: int, short_side: int, scale: tuple[float, float] = (0.5, 1.5)
) -> v2.Compose:
    """Joint image/mask augmentation: random scale of the frame's `short_side`, crop, flip, colour
    jitter (which touches only the image)."""
    return v2.Compose([
        v2.RandomResize(int(short_side * scale[0]), int(short_side * scale[1]) + 1),
        v2.RandomCrop(crop, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: ignore_index}),
        v2.RandomHorizontalFlip(),
        v2.ColorJitter(0.3, 0.3, 0.3, 0.02),
    ])


def endless(sampler: DistributedSampler) -> Iterator[int]:
    """The sampler's indices epoch after epoch, reshuffled each epoch (each rank its own shard)."""
    for epoch in itertools.count():
        sampler.set_epoch(epoch)
        yield from sampler


def augmented_batch(images, labels, indices, augment) -> tuple[torch.Tensor, torch.Tensor | None]:
    """float [B, 3, h, w] in [0, 1] and int64 [B, h, w] (None for unlabelled frames), augmented
    sample by sample on their device."""
    xs, ys = [], []
    for i in indices.tolist():
        if labels is None:
            xs.append(augment(tv_tensors.Image(images[i])))
            continue
        x, y = augment(tv_tensors.Image(images[i]), tv_tensors.Mask(labels[i][None]))
        xs.append(x)
        ys.append(y[0])
    return to_unit(torch.stack(xs)), torch.stack(ys).long() if ys else None


class Batches:
    """Endless augmented batches of one split, each process its own shard (DistributedSampler).
    Its state is how many indices it has drawn: a resumed job draws the same order on from there."""

    def __init__(self, images, labels, batch_size: int, augment, ctx: Dist, seed: int):
        if len(images) < ctx.world:
            raise ValueError(f"{len(images)} frames cannot be shared by {ctx.world} processes")
        self.images, self.labels, self.batch_size, self.augment = images, labels, batch_size, augment
        self.sampler = DistributedSampler(range(len(images)), ctx.world, ctx.rank, shuffle=True, seed=seed,
                                          drop_last=True)
        self.load_state_dict({"drawn": 0})

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch = torch.tensor([next(self.indices) for _ in range(self.batch_size)])
        self.drawn += self.batch_size
        return augmented_batch(self.images, self.labels, batch, self.augment)

    def state_dict(self) -> dict[str, int]:
        return {"drawn": self.drawn}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.drawn = state["drawn"]
        self.indices = itertools.islice(endless(self.sampler), self.drawn, None)


def poly_schedule(optimizer, total: int, warmup: int, power: float = 0.9):
    def factor(it: int) -> float:
        if it < warmup:
            return (it + 1) / warmup
        return max(0.0, 1 - (it - warmup) / max(1, total - warmup)) ** power
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class Progress:
    """Periodic lines (iteration, losses, lr, speed, ETA) and a JSONL log of the same records.
    Under torchrun every process calls update(); the values are averaged over the processes."""

    def __init__(self, total: int, every: int, log: Path | None, enabled: bool = True, done: int = 0,
                 elapsed: float = 0.0):
        """`done` iterations (and `elapsed` seconds) before this process: a resumed job keeps the
        log's records up to there and appends; its speed and ETA count this process's iterations."""
        self.total, self.every, self.enabled = total, max(1, every), enabled
        self.resumed_at, self.earlier_s = done, elapsed
        self.start = time.perf_counter()
        self.log = None
        if log and enabled:
            log.parent.mkdir(parents=True, exist_ok=True)
            kept = [line for line in log.read_text().splitlines() if json.loads(line)["iter"] <= done] \
                if done and log.is_file() else []
            self.log = open(log, "w")  # one run per log, as the checkpoint beside it
            self.log.writelines(line + "\n" for line in kept)

    def update(self, it: int, **values: float) -> None:
        done = it + 1
        if done % self.every and done != self.total:
            return
        values = reduce_mean(values)
        if not self.enabled:
            return
        now = time.perf_counter() - self.start
        speed = (done - self.resumed_at) / now
        eta = (self.total - done) / speed
        record = {"iter": done, "elapsed_s": round(self.earlier_s + now, 1),
                  **{k: round(float(v), 6) for k, v in values.items()}}
        text = " ".join(f"{k} {v:.4g}" for k, v in values.items())
        print(f"[{done}/{self.total}] {text} | {speed:.2f} it/s, ETA {eta:.0f}s", flush=True)
        if self.log:
            self.log.write(json.dumps(record) + "\n")
            self.log.flush()

    def close(self) -> None:
        if self.log:
            self.log.close()


def reduce_mean(values: dict[str, float]) -> dict[str, float]:
    """The mean of each value over the processes of a torchrun group (the values as they are alone)."""
    if not (dist.is_available() and dist.is_initialized()) or not values:
        return values
    t = torch.tensor([float(v) for v in values.values()], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return dict(zip(values, (t / dist.get_world_size()).tolist()))


@torch.no_grad()
def evaluate(model, images, labels, num_classes: int, ignore_index: int, batch: int = 8) -> dict:
    """mIoU and mean Dice of `model` (eval mode) over frames at their stored size."""
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(num_classes, ignore_index)
    for i in range(0, len(images), batch):
        x = to_unit(images[i:i + batch])
        with mixed_precision(x.device):
            pred = model(x).argmax(1)
        cm.update(labels[i:i + batch].cpu(), pred.cpu())
    model.train(was_training)
    return {"miou": round(cm.miou(), 2), "dice": round(cm.dice(), 2)}


def mean_amplitude(images: torch.Tensor, beta: float = AMPLITUDE_BETA, batch: int = 16) -> torch.Tensor:
    """The mean low-frequency amplitude band [3, 2b, 2b] of uint8 frames [N, 3, H, W]."""
    h, w = images.shape[-2:]
    b = int(min(h, w) * beta)
    total = sum(low_freq_amplitude(to_unit(images[i:i + batch]), b).sum(0) for i in range(0, len(images), batch))
    return (total / len(images)).cpu()


def args_record(args) -> dict:
    """A job's arguments as a checkpoint's config keeps them (paths as strings: no code to unpickle)."""
    def plain(v):
        return str(v) if isinstance(v, Path) else [plain(x) for x in v] if isinstance(v, list) else v
    return {k: plain(v) for k, v in vars(args).items()}


def job_config(args, job: str, ctx: Dist, parents: list[dict], **record) -> dict:
    """A checkpoint's config: the job's arguments and name, what it recorded, its processes, parents, device."""
    return {**args_record(args), **record, "job": job, "world_size": ctx.world, "parents": parents,
            "device_name": torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda" else "cpu"}


def parent_record(path: Path, parent: Checkpoint) -> dict:
    """How a checkpoint names one it was made from: the file, its fingerprint, the job that made it."""
    return {"path": str(path), "sha256": file_sha256(Path(path)), "job": parent.config.get("job")}

"""A training job's state, saved every N iterations so that a job cut off (the machine stops, the
process is killed) continues where it was: the weights, optimizers, schedules, the position in
the data order, the RNG and the seconds trained so far. One file written atomically, read with
`torch.load(weights_only=True)`.

A job names its stateful parts (anything with state_dict() / load_state_dict()) and the arguments
that must not change across a resume; `--resume FILE` then refuses a file from another job, other
arguments or another number of processes, naming what differs. Under torchrun every process's RNG
is kept (each draws its own augmentation); the other parts are the same on every process, or (the
data position) hold what each process needs, and are written by the main process."""
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from driftseg.models.checkpoint import load_plain, write_atomically

FORMAT = "driftseg-training-state"


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _distributed() -> tuple[int, int]:
    """(rank, world size) of this process's group, (0, 1) alone."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def difference(old: Any, new: Any, shown: int = 5) -> str:
    """How a fixed argument changed; for two mappings (a folder's files and their fingerprints), the
    keys added, removed and changed rather than both whole."""
    if not (isinstance(old, Mapping) and isinstance(new, Mapping)):
        return f"{old!r} there, {new!r} now"

    def some(keys: list) -> str:
        return ", ".join(map(str, keys[:shown])) + (f" and {len(keys) - shown} more" if len(keys) > shown else "")
    parts = {"added": [k for k in new if k not in old], "removed": [k for k in old if k not in new],
             "changed": [k for k in new if k in old and new[k] != old[k]]}
    return "; ".join(f"{what} {some(keys)}" for what, keys in parts.items() if keys)


class TrainingState:
    """Saves and restores `parts` at iteration boundaries.

    `fixed` holds the arguments a resumed run must share with the run that wrote the file (the
    schedule length, batch size, seed, data...); `path` is where `save` writes (None: never).
    Under torchrun every process calls `maybe_save` (each hands over its RNG state) and the one
    with `write` writes."""

    def __init__(self, job: str, parts: Mapping[str, Any], fixed: dict[str, Any], path: Path | None, every: int,
                 write: bool = True):
        self.job, self.parts, self.fixed, self.path, self.every, self.write = job, parts, fixed, path, every, write

    def maybe_save(self, done: int, train_seconds: float) -> None:
        """Save after `done` iterations when `done` is a multiple of `every`."""
        if self.path is not None and self.every > 0 and done % self.every == 0:
            self.save(done, train_seconds)

    def save(self, done: int, train_seconds: float) -> None:
        _, world = _distributed()
        rngs = [rng_state()]
        if world > 1:
            rngs = [None] * world
            dist.all_gather_object(rngs, rng_state())
        if not self.write:
            return
        payload = {
            "format": FORMAT, "job": self.job, "fixed": self.fixed, "done": done,
            "train_seconds": train_seconds, "rng": rngs[0], "world_size": world, "rank_rngs": rngs[1:],
            "parts": {name: part.state_dict() for name, part in self.parts.items()},
        }
        write_atomically(self.path, lambda f: torch.save(payload, f))

    def load(self, path: Path) -> tuple[int, float]:
        """Restore every part and the RNG from `path`; the iterations done and seconds trained."""
        if not path.is_file():
            raise FileNotFoundError(f"training state {path} does not exist")
        payload = load_plain(path, f"{path} is not a driftseg training state")
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise ValueError(f"{path} is not a driftseg training state (no 'format': {FORMAT!r} entry)")
        if payload["job"] != self.job:
            raise ValueError(f"{path} was written by the {payload['job']!r} job, not {self.job!r}")
        differ = {k: (payload["fixed"].get(k), v) for k, v in self.fixed.items() if payload["fixed"].get(k) != v}
        if differ:
            told = ", ".join(f"{k}: {difference(old, new)}" for k, (old, new) in differ.items())
            raise ValueError(f"{path} was written with other arguments; resume with the same ones ({told})")
        rank, world = _distributed()
        written = payload.get("world_size")  # None: a file of before the per-process RNG, whose processes shared one
        if written is not None and written != world:
            raise ValueError(f"{path} was written by a job of {written} process(es); resume it with {written}, "
                             f"not {world} (each process's data shard and RNG are in it)")
        missing = self.parts.keys() - payload["parts"].keys()
        if missing:
            raise ValueError(f"{path} lacks the state of {sorted(missing)}")
        for name, part in self.parts.items():
            part.load_state_dict(payload["parts"][name])
        set_rng_state(payload["rng"] if rank == 0 or written is None else payload["rank_rngs"][rank - 1])
        return payload["done"], payload["train_seconds"]

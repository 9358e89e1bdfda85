"""Ordered frame streams of the benchmark protocol, and of any split or split:corruption.

A stream spec is a protocol name (`day`, `dusk`, `fog`, ..., `night`, `continual`), `continual10` (the
`continual` segments ten times over, no reset between them: CoTTA's long continual protocol), a split
of the data folder (`source_val`) or a slice of one (`target_dusk[31:]`), or `SPLIT:CORRUPTION`
(`source_val:frost`). Corrupted frames are generated once, deterministically, and cached as PNG files.
"""
import hashlib
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from driftseg.data.corruptions import CORRUPTIONS, corrupt
from driftseg.data.folder import FrameFolder, UnknownSplit, whole_split
from driftseg.models.checkpoint import write_atomically

DAY_SPLIT, DUSK_SPLIT = "source_val", "target_dusk"
SYNTHETIC = ("fog", "contrast", "gaussian_noise", "motion_blur", "snow", "brightness", "defocus_blur", "night")
CONTINUAL = ("day", "fog", "dusk", "contrast", "night", "day")
ROUNDS = {"continual": 1, "continual10": 10}  # the streams made of CONTINUAL, repeated that many times
PROTOCOL_STREAMS = ("day", "dusk", *SYNTHETIC, "continual")


def default_cache_dir() -> Path:
    """$DRIFTSEG_CACHE, else $XDG_CACHE_HOME/driftseg, else ~/.cache/driftseg."""
    if os.environ.get("DRIFTSEG_CACHE"):
        return Path(os.environ["DRIFTSEG_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "driftseg"


@dataclass(frozen=True)
class Segment:
    name: str
    split: str
    corruption: str | None
    start: int  # index of the segment's first frame in the stream

    def key(self, severity: int) -> str:
        # a slice's corrupted frames are the whole split's (_generate), so they share its cache
        return self.split if self.corruption is None else f"{whole_split(self.split)}:{self.corruption}:s{severity}"


@dataclass
class Stream:
    """An ordered list of (segment, frame name); frames are read or generated lazily, in order."""

    name: str
    folder: FrameFolder
    segments: list[Segment]
    names: list[tuple[Segment, str]]
    severity: int
    cache_dir: Path
    rounds: int = 1  # times the stream's cycle of segments repeats (continual10: 10)

    def __len__(self) -> int:
        return len(self.names)

    def frames(self, limit: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(image uint8 HxWx3, label uint8 HxW) in stream order; the first `limit` only if given."""
        for segment, name in self.names[:limit]:
            yield self._image(segment, name), self.folder.read_label(name)

    def _image(self, segment: Segment, name: str) -> np.ndarray:
        if segment.corruption is None:
            return self.folder.read_image(name)
        path = self._cache_path(segment, name)
        if not path.is_file():
            _generate(self.folder, segment, self.severity, [name], path.parent)
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))

    def _cache_path(self, segment: Segment, name: str) -> Path:
        return _cache_folder(self.cache_dir, self.folder, segment, self.severity) / f"{name}.png"

    def prepare(self, workers: int | None = None) -> None:
        """Generate every missing corrupted frame up front, in parallel (corrupting is slow); once each,
        however often the stream repeats it."""
        todo: dict[Path, tuple[Segment, dict[str, None]]] = {}  # by cache folder: a segment, its names
        for segment, name in self.names:
            path = self._cache_path(segment, name)
            if segment.corruption is not None and not path.is_file():
                todo.setdefault(path.parent, (segment, {}))[1][name] = None
        if not todo:
            return
        workers = workers or min(8, os.cpu_count() or 1)
        with ProcessPoolExecutor(workers) as pool:
            jobs = []
            for folder, (segment, names) in todo.items():
                names = list(names)
                for chunk in np.array_split(np.array(names), min(workers, len(names))):
                    jobs.append(pool.submit(_generate, self.folder, segment, self.severity, list(chunk), folder))
            for job in jobs:
                job.result()


def _cache_folder(cache_dir: Path, folder: FrameFolder, segment: Segment, severity: int) -> Path:
    # the data folder's path is hashed: two folders with the same split names never share a cache
    tag = hashlib.sha1(str(folder.root).encode()).hexdigest()[:12]
    return cache_dir / "streams" / tag / segment.key(severity).replace(":", "__")


def _generate(folder: FrameFolder, segment: Segment, severity: int, names: list[str], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    # seeded by the frame's position in the whole split: a slice's frame is corrupted as the whole split's
    order = {n: i for i, n in enumerate(folder.frames(whole_split(segment.split)))}
    for name in names:
        image = Image.fromarray(corrupt(folder.read_image(name), segment.corruption, severity, seed=order[name]))
        # atomic: a concurrent reader (another process preparing the same stream) never sees half a file
        write_atomically(out / f"{name}.png", lambda f: image.save(f, format="PNG", compress_level=1))


def _segment(spec: str, folder: FrameFolder, start: int) -> Segment:
    if spec == "day":
        return Segment(spec, DAY_SPLIT, None, start)
    if spec == "dusk":
        return Segment(spec, DUSK_SPLIT, None, start)
    if spec in SYNTHETIC:
        return Segment(spec, DAY_SPLIT, spec, start)
    close = spec.find("]") + 1  # the colon of a slice (target_dusk[:31]:fog) is not the corruption's
    split, _, corruption = spec[close:].partition(":")
    split = spec[:close] + split
    try:
        folder.frames(split)
    except UnknownSplit:
        protocol = ", ".join(dict.fromkeys([*PROTOCOL_STREAMS, *ROUNDS]))
        raise UnknownSplit(f"unknown stream {spec!r}: name a protocol stream ({protocol}), a split of "
                           f"{folder.root / 'splits.json'} ({', '.join(sorted(folder.splits))}) or "
                           "SPLIT:CORRUPTION") from None
    if corruption and corruption != "night" and corruption not in CORRUPTIONS:
        raise ValueError(
            f"unknown corruption {corruption!r} in stream {spec!r}; expected 'night' or one of {list(CORRUPTIONS)}"
        )
    return Segment(spec, split, corruption or None, start)


def open_stream(spec: str, folder: FrameFolder, severity: int = 3, cache_dir: Path | None = None,
                per_segment: int | None = None) -> Stream:
    """The stream named by `spec` (see the module docstring); only the first `per_segment` frames of each
    of its segments if given (of the whole stream, for a stream of one segment)."""
    if per_segment is not None and per_segment < 1:
        raise ValueError(f"frames per segment must be >= 1, got {per_segment}")
    rounds = ROUNDS.get(spec, 1)
    parts = CONTINUAL * rounds if spec in ROUNDS else (spec,)
    segments, names = [], []
    for part in parts:
        segment = _segment(part, folder, start=len(names))
        segments.append(segment)
        names.extend((segment, n) for n in folder.check_split(segment.split)[:per_segment])
    return Stream(spec, folder, segments, names, severity, cache_dir or default_cache_dir(), rounds)

"""Recording (DRIFTSEG_RECORD): per stream, its most recent frames exactly as they were posted, on disk,
for adaptation jobs to train on. Off by default: frames are camera footage.

Each stream's frames lie in a folder of their own, `<DRIFTSEG_RECORD_DIR>/<stream>.frames/` (the suffix
keeps ids such as `..` inside the root), one file a frame, named by the time it arrived (nanoseconds,
zero-padded: name order is arrival order, across resets and restarts) with its format's extension, so
the folder is what `driftseg train self-training --target-frames DIR` reads. Past either cap of a stream
(DRIFTSEG_RECORD_MAX_FRAMES, DRIFTSEG_RECORD_MAX_BYTES) its oldest frames are deleted. A frame is written
atomically (a private temporary file renamed into place; a crash leaves at most a temporary file, which
the next use of the folder removes). Recording never fails a request: a frame that cannot be written is
logged and skipped.

`drifted` records a frame only while the stream's shift score (auto's calibrated score, after the frame)
is above DRIFTED: past it auto's per-layer alpha leaves the source statistics (adapters/auto.py)."""
import logging
import shutil
import threading
import time
from collections import OrderedDict
from pathlib import Path

from driftseg.models.checkpoint import write_atomically

log = logging.getLogger("driftseg.service")

MODES = ("off", "drifted", "all")
DRIFTED = 1.0
FOLDER_SUFFIX = ".frames"
SUFFIXES = {b"\xff\xd8\xff": ".jpg", b"\x89PNG\r\n\x1a\n": ".png"}  # WebP: RIFF....WEBP, below


def image_suffix(data: bytes) -> str | None:
    """The file extension of a JPEG, PNG or WebP image's bytes; None for anything else."""
    for magic, suffix in SUFFIXES.items():
        if data.startswith(magic):
            return suffix
    return ".webp" if data[:4] == b"RIFF" and data[8:12] == b"WEBP" else None


class Recorder:
    def __init__(self, root: Path, mode: str, max_frames: int, max_bytes: int):
        if mode not in MODES:
            raise ValueError(f"record mode {mode!r}: expected one of {', '.join(MODES)}")
        self.root, self.mode, self.max_frames, self.max_bytes = Path(root).expanduser(), mode, max_frames, max_bytes
        self._frames: dict[str, OrderedDict[str, int]] = {}  # stream -> file name -> bytes, oldest first
        self._last_name: dict[str, int] = {}  # stream -> the nanoseconds of its newest file name
        self._lock = threading.Lock()  # the index is shared by worker threads; each stream's calls are in order

    def folder(self, stream: str) -> Path:
        return self.root / f"{stream}{FOLDER_SUFFIX}"

    def wants(self, score: float | None) -> bool:
        """Whether a frame after which the stream's shift score is `score` is recorded."""
        return self.mode == "all" or (self.mode == "drifted" and score is not None and score > DRIFTED)

    def record(self, stream: str, data: bytes) -> bool:
        """Keep the frame's bytes as the stream's newest recorded frame, dropping the oldest past the caps;
        False where it was not kept (not an image this server decodes, over the byte cap alone, or the
        disk failed: logged)."""
        suffix = image_suffix(data)
        if suffix is None or len(data) > self.max_bytes:
            return False
        try:
            with self._lock:
                frames = self._index(stream)
                stamp = max(time.time_ns(), self._last_name.get(stream, 0) + 1)
                self._last_name[stream] = stamp
            name = f"{stamp:020d}{suffix}"
            write_atomically(self.folder(stream) / name, lambda f: f.write(data), private=True)
            with self._lock:
                frames[name] = len(data)
                dropped = []
                while len(frames) > self.max_frames or sum(frames.values()) > self.max_bytes:
                    dropped.append(frames.popitem(last=False)[0])
            for old in dropped:
                (self.folder(stream) / old).unlink(missing_ok=True)
            return True
        except OSError as e:
            log.warning("stream %r: frame not recorded in %s: %s", stream, self.folder(stream), e)
            return False

    def usage(self, stream: str) -> tuple[int, int]:
        """The stream's recorded frames and their bytes."""
        with self._lock:
            frames = self._index(stream)
            return len(frames), sum(frames.values())

    def count_since(self, stream: str, since_ns: int) -> int:
        """The stream's recorded frames that arrived after `since_ns` (time.time_ns())."""
        with self._lock:
            count = 0
            for name in reversed(self._index(stream)):  # newest first: stops at the first older frame
                if int(name.split(".")[0]) <= since_ns:
                    break
                count += 1
            return count

    def delete(self, stream: str) -> int:
        """Delete the stream's recording; the number of frames deleted."""
        with self._lock:
            count = len(self._index(stream))
            self._frames.pop(stream, None)
        shutil.rmtree(self.folder(stream), ignore_errors=True)
        return count

    def prune(self, ttl: float, now: float | None = None) -> list[str]:
        """Delete the recordings not written to for `ttl` seconds (0: keep all); their streams. A folder's
        modification time is its last write (each frame is renamed into it): one stat a stream."""
        if ttl <= 0 or not self.root.is_dir():
            return []
        cutoff = (time.time() if now is None else now) - ttl
        stale = []
        for folder in self.root.glob(f"*{FOLDER_SUFFIX}"):
            if folder.stat().st_mtime < cutoff:
                stream = folder.name.removesuffix(FOLDER_SUFFIX)
                self.delete(stream)
                stale.append(stream)
        return stale

    def _index(self, stream: str) -> "OrderedDict[str, int]":
        """The stream's recorded frames, read from its folder on first use (under the lock); leftover
        temporary files of a crash are removed."""
        if stream not in self._frames:
            frames = OrderedDict()
            folder = self.folder(stream)
            if folder.is_dir():
                for path in sorted(folder.iterdir()):
                    if path.name.startswith(".") and path.name.endswith(".tmp"):
                        path.unlink(missing_ok=True)
                    elif path.is_file() and path.stem.isdigit():
                        frames[path.name] = path.stat().st_size
                        self._last_name[stream] = max(self._last_name.get(stream, 0), int(path.stem))
            self._frames[stream] = frames
        return self._frames[stream]

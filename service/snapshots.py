"""Stream-state snapshots: the file format (also what GET/PUT /adaptation/state move) and the folder
store, one file per stream (a SnapshotStore, service/store.py).

A snapshot is `torch.save` bytes of

    {"format": "driftseg-stream-state", "version": 1, "checkpoint": <sha256 of the checkpoint file>,
     "method": <method spec>, "stream": <stream id>, "last_seen": <unix time>, "state": StreamState.state_dict(),
     "models": [<sha256 of each model the stream was bound to, the one serving it last>]}

(`checkpoint` is the base model the server serves; `models` empty or absent: the stream is on it.)

read back with `torch.load(weights_only=True)`. A file is named by the sha256 hex of its stream id
(ids never reach the file system raw) and written atomically: a temporary file in the same folder,
flushed and fsynced, then renamed over the old one.
"""
import hashlib
import io
import logging
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from driftseg.adapters.component import StreamState
from driftseg.adapters.spec import parse_method
from driftseg.models.checkpoint import load_plain, write_atomically
from driftseg.service.errors import Conflict, Unprocessable

FORMAT = "driftseg-stream-state"
VERSION = 1
SUFFIX = ".pt"
MAX_MODELS = 64  # a stream's binding history kept in its snapshot (rollback goes back this far)
MAX_COUNT = 2**53 - 1  # frame counts beyond it break clients that read X-Frame-Index as a float64 (JavaScript)
log = logging.getLogger("driftseg.service")


@dataclass
class StoredSnapshot:
    """What the registry knows of a stream's snapshot without reading it (what a store's `scan` lists)."""

    frames: int
    last_seen: float


def stream_key(stream: str) -> str:
    return hashlib.sha256(stream.encode()).hexdigest()


def origin_key(checkpoint: str, method: str) -> str:
    """A short name for what made a stream's state (checkpoint fingerprint, method spec): the Redis
    keys of its snapshots and the file its exported ONNX engine is cached in carry it."""
    return f"{checkpoint[:16]}-{hashlib.sha256(method.encode()).hexdigest()[:12]}"


def _to_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_cpu(v) for v in value]
    return value


def _non_finite(value, where: str = "state") -> str | None:
    """The path of the first non-finite tensor or float in a state dict, if any."""
    if isinstance(value, torch.Tensor):
        return where if value.is_floating_point() and not bool(torch.isfinite(value).all()) else None
    if isinstance(value, float):
        return None if math.isfinite(value) else where
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for k, v in items:
        found = _non_finite(v, f"{where}.{k}")
        if found:
            return found
    return None


def _misfit(value, template, where: str = "state") -> str | None:
    """What first breaks the bounds of a fresh state's dict `template` in a snapshot's: a tensor of another
    shape or dtype, a count (int) outside 0..MAX_COUNT; None if everything fits."""
    if isinstance(value, int) and not isinstance(value, bool) and not 0 <= value <= MAX_COUNT:
        return f"{where} is {value}, outside 0..{MAX_COUNT}"
    if isinstance(template, torch.Tensor):
        if not isinstance(value, torch.Tensor):
            return f"{where} should be a tensor, got {type(value).__name__}"
        if value.shape != template.shape or value.dtype != template.dtype:
            return (f"{where} should be a {template.dtype} tensor of shape {list(template.shape)}, got "
                    f"{value.dtype} {list(value.shape)}")
    if isinstance(value, dict):
        nested = template if isinstance(template, dict) else {}
        return next((bad for k, v in value.items() if (bad := _misfit(v, nested.get(k), f"{where}.{k}"))), None)
    if isinstance(value, list):
        return next((bad for i, v in enumerate(value) if (bad := _misfit(v, None, f"{where}[{i}]"))), None)
    return None


def encode(stream: str, state: StreamState, checkpoint: str, method: str, last_seen: float,
           models: list[str] = ()) -> bytes:
    payload = {"format": FORMAT, "version": VERSION, "checkpoint": checkpoint, "method": method,
               "stream": stream, "last_seen": float(last_seen), "state": _to_cpu(state.state_dict()),
               "models": list(models)}
    out = io.BytesIO()
    torch.save(payload, out)
    return out.getvalue()


def decode(data: bytes) -> dict:
    """The payload of a snapshot, its format and version checked; Unprocessable (422) saying what is wrong."""
    try:
        payload = load_plain(io.BytesIO(data), "not a driftseg stream-state snapshot")
    except ValueError as e:
        raise Unprocessable(f"{e}; export one with GET /adaptation/state?format=binary") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise Unprocessable(f"not a driftseg stream-state snapshot: no 'format': {FORMAT!r} entry")
    if payload.get("version") != VERSION:
        raise Unprocessable(f"snapshot version {payload.get('version')!r} is not supported; this server reads version {VERSION}")
    for key, kind in (("checkpoint", str), ("method", str), ("stream", str), ("state", dict)):
        if not isinstance(payload.get(key), kind):
            raise Unprocessable(f"snapshot field {key!r} should be a {kind.__name__}, got {type(payload.get(key)).__name__}")
    models = payload.setdefault("models", [])
    if not isinstance(models, list) or len(models) > MAX_MODELS or not all(
            isinstance(m, str) and len(m) == 64 and all(c in "0123456789abcdef" for c in m) for m in models):
        raise Unprocessable(f"snapshot field 'models' should be a list of at most {MAX_MODELS} sha256 hex strings")
    return payload


def check_origin(payload: dict, checkpoint: str, method: str) -> None:
    """Conflict (409) unless the snapshot was made with this checkpoint and this method."""
    if payload["checkpoint"] != checkpoint:
        raise Conflict(f"the snapshot was made with checkpoint sha256 {payload['checkpoint'][:16]}..., this server "
                       f"serves {checkpoint[:16]}...: import it into a server running that checkpoint")
    try:
        same = parse_method(payload["method"]) == parse_method(method)
    except ValueError:
        same = False
    if not same:
        raise Conflict(f"the snapshot was made with method {payload['method']!r}, this server runs {method!r}: "
                       "import it into a server running that method")


def stream_payload(data: bytes, stream: str, checkpoint: str, method: str, where: str) -> dict:
    """A stored snapshot's payload, checked for format, origin and that it is `stream`'s; Unprocessable
    or Conflict naming `where` it came from otherwise."""
    payload = decode(data)
    check_origin(payload, checkpoint, method)
    if payload["stream"] != stream:
        raise Unprocessable(f"snapshot {where} holds stream {payload['stream']!r}, not {stream!r}")
    return payload


def restore(payload: dict, new_state: Callable[[], StreamState]) -> StreamState:
    """A fresh state loaded with the snapshot's state dict; Unprocessable (422) saying which entry does not
    fit (another shape or dtype than this server's, a count out of bounds, a non-finite value)."""
    bad = _non_finite(payload["state"])
    if bad:
        raise Unprocessable(f"the snapshot's {bad} holds non-finite values")
    state = new_state()
    misfit = _misfit(payload["state"], state.state_dict())
    if misfit:
        raise Unprocessable(f"the snapshot's state does not fit this server's model and method: {misfit}")
    try:
        state.load_state_dict(payload["state"])
    except (ValueError, TypeError, KeyError, AttributeError, RuntimeError) as e:
        raise Unprocessable(f"the snapshot's state does not fit this server's model and method: {e}") from None
    return state


class FolderStore:
    """One snapshot file per stream in `directory`, for one checkpoint and method, written by this
    server alone (service/redis_store.py is the store that replicas share)."""

    shared = False  # only this server writes here: the folder's listing at start-up stays true
    healthy = True

    def __init__(self, directory: Path, checkpoint: str, method: str):
        self.directory, self.checkpoint, self.method = Path(directory), checkpoint, method
        self.location = str(self.directory)

    def ping(self) -> bool:
        return True

    def prepare(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=self.directory, prefix=".probe", delete=True)
            probe.close()
        except OSError as e:
            raise ValueError(f"state dir {self.directory} is not writable ({e}): set DRIFTSEG_STATE_DIR to a "
                             "writable folder") from None

    def path(self, stream: str) -> Path:
        return self.directory / f"{stream_key(stream)}{SUFFIX}"

    def where(self, stream: str) -> str:
        return str(self.path(stream))

    def write(self, stream: str, state: StreamState, last_seen: float, force: bool = False,
              models: list[str] = ()) -> bool:
        """Replace the stream's snapshot (one writer, so always: `force` is for the shared store)."""
        data = encode(stream, state, self.checkpoint, self.method, last_seen, models)
        write_atomically(self.path(stream), lambda f: f.write(data), private=True)
        _fsync_dir(self.directory)
        return True

    def read(self, stream: str) -> dict | None:
        """The stream's snapshot payload, checked for format, origin and stream id; None if there is none.
        Raises Unprocessable or Conflict for a file that cannot be used."""
        try:
            data = self.path(stream).read_bytes()
        except FileNotFoundError:
            return None
        return stream_payload(data, stream, self.checkpoint, self.method, self.path(stream).name)

    def delete(self, stream: str) -> None:
        self.path(stream).unlink(missing_ok=True)

    def scan(self) -> dict[str, StoredSnapshot]:
        """Stream id -> frames and last-seen time of every usable snapshot in the folder; leftover
        temporary files are removed, unusable snapshots are logged and left alone."""
        found: dict[str, StoredSnapshot] = {}
        skipped = []
        for path in sorted(self.directory.iterdir()):
            if path.name.startswith(".") and path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)  # a write cut short by a crash
                continue
            if path.suffix != SUFFIX or len(path.stem) != 64:
                continue
            try:
                payload = decode(path.read_bytes())
                check_origin(payload, self.checkpoint, self.method)
                if stream_key(payload["stream"]) != path.stem:
                    raise Unprocessable(f"holds stream {payload['stream']!r}, whose file name would differ")
                frames = payload["state"].get("frames")
                found[payload["stream"]] = StoredSnapshot(frames if isinstance(frames, int) else 0,
                                                          float(payload.get("last_seen", path.stat().st_mtime)))
            except (Unprocessable, Conflict, OSError) as e:
                skipped.append(f"{path.name}: {getattr(e, 'detail', e)}")
        if skipped:
            log.warning("%d snapshot(s) in %s cannot be resumed by this server (their streams start from the "
                        "source state):\n  %s", len(skipped), self.directory, "\n  ".join(skipped))
        return found


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable; a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

"""Where stream snapshots live between uses: the `SnapshotStore` protocol, which the folder store
(service/snapshots.py) and the Redis store shared by replicas (service/redis_store.py) implement,
and `open_store`, which picks one from the settings.

Every method may block on I/O: the registry calls them in worker threads. A store that cannot be
reached raises OSError (the Redis store's StoreUnavailable) and says so in `healthy`; the registry
then keeps states in memory and the engine's watcher retries (service/engine.py)."""
from pathlib import Path
from typing import Protocol, runtime_checkable

from driftseg.adapters.component import StreamState
from driftseg.service.redis_store import RedisStore
from driftseg.service.settings import Settings
from driftseg.service.snapshots import FolderStore, StoredSnapshot


@runtime_checkable
class SnapshotStore(Protocol):
    """One snapshot per stream, for one checkpoint and method (snapshots of others are not listed or read)."""

    shared: bool  # other servers write here too: a stream not held may have a snapshot at any time
    healthy: bool  # the last call reached the store
    location: str  # where the store is, for log lines and /readyz (never a password)

    def prepare(self) -> None:
        """Check the store once at start-up: ValueError saying the fix where it cannot work at all."""

    def ping(self) -> bool:
        """Whether the store answers now (and `healthy` set accordingly)."""

    def write(self, stream: str, state: StreamState, last_seen: float, force: bool = False,
              models: list[str] = ()) -> bool:
        """Store the stream's snapshot with the models it was bound to (service/snapshots.py); False where a
        shared store kept a newer one (more frames), unless `force`."""

    def read(self, stream: str) -> dict | None:
        """The stream's snapshot payload (service/snapshots.py), checked; None if there is none."""

    def delete(self, stream: str) -> None:
        """Forget the stream's snapshot, if any."""

    def scan(self) -> dict[str, StoredSnapshot]:
        """Every usable snapshot, by stream id."""

    def where(self, stream: str) -> str:
        """Where the stream's snapshot is (or would be), for log lines."""


def open_store(settings: Settings, checkpoint: str, method: str) -> SnapshotStore:
    """The store DRIFTSEG_STATE_STORE names: Redis (redis:// or rediss://), shared by replicas, or a
    folder (file:///DIR; default: DRIFTSEG_STATE_DIR)."""
    url = settings.state_store
    if url is not None and url.startswith(("redis://", "rediss://")):
        return RedisStore(url, checkpoint, method, ttl=settings.state_ttl)
    directory = Path(url.removeprefix("file://")) if url is not None else settings.state_dir
    return FolderStore(directory, checkpoint, method)

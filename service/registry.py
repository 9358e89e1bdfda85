"""The streams a server holds: at most `max_streams` states in memory, least recently used first out;
an evicted stream is snapshotted to the state store (service/store.py) first and resumes from its
snapshot when it comes back.

Every use of a stream runs under that stream's asyncio.Lock (FIFO), so requests on one stream apply
in arrival order while other streams go on. A stream in use is never evicted. States are never
mutated in place: a use replaces `entry.state` with the new state once everything succeeded.
All methods run on the event loop; the store's I/O goes to worker threads.
"""
import asyncio
import logging
import re
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from anyio import to_thread

from driftseg.adapters.component import StreamState
from driftseg.service.errors import Unprocessable
from driftseg.service.snapshots import StoredSnapshot, restore
from driftseg.service.store import SnapshotStore

STREAM_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
SCORE_HISTORY = 32  # shift scores kept per stream for GET /adaptation/state
log = logging.getLogger("driftseg.service")


def check_stream_id(stream: str) -> str:
    if not STREAM_ID.match(stream):
        raise Unprocessable(f"stream id {stream[:140]!r} is invalid: use 1 to 128 characters of A-Z a-z 0-9 . _ -")
    return stream


@dataclass
class StreamEntry:
    stream: str
    state: StreamState
    last_seen: float = field(default_factory=time.time)
    scores: deque = field(default_factory=lambda: deque(maxlen=SCORE_HISTORY))  # (frame, shift score)
    unsaved: int = 0  # adapted frames since the last snapshot
    dirty: bool = False  # the state differs from the stream's snapshot (or it has none)
    models: list[str] = field(default_factory=list)  # the models it was bound to, the serving one last; []: the base

    @property
    def model(self) -> str | None:
        """The sha256 of the model serving the stream; None for the base."""
        return self.models[-1] if self.models else None


@dataclass
class _Slot:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class StreamRegistry:
    def __init__(self, store: SnapshotStore, new_state: Callable[[str | None], StreamState], max_streams: int,
                 snapshot_every: int, on_write: Callable[[], None] = lambda: None, ttl: float = 0.0,
                 max_stored: int | None = None):
        # new_state(model): a stream's state at the source of that model (None: the base); it may load the
        # model, so it runs in a worker thread unless model is None
        self.store, self.new_state, self.on_write = store, new_state, on_write
        self.max_streams, self.snapshot_every = max_streams, snapshot_every
        self.ttl, self.max_stored = ttl, max_stored  # retention of snapshots: idle seconds (0: none), how many
        self.entries: OrderedDict[str, StreamEntry] = OrderedDict()  # in memory, least recently used first
        self.stored: dict[str, StoredSnapshot] = {}  # streams with a usable snapshot in the store
        self._slots: dict[str, _Slot] = {}  # streams in use or waited for

    async def open(self) -> None:
        """Check the store and list its snapshots; their states are read when their streams come back."""
        await to_thread.run_sync(self.store.prepare)
        self.stored = await to_thread.run_sync(self.store.scan)
        await self.prune()

    async def prune(self) -> list[str]:
        """Delete the snapshots of streams not in memory that were last seen over `ttl` seconds ago, then the
        least recently seen past `max_stored`; the streams whose snapshots went."""
        # neither streams in memory nor those in use or waited for (an eviction writing one holds its lock)
        now = time.time()
        idle = [(d.last_seen, s) for s, d in self.stored.items() if s not in self.entries and s not in self._slots]
        expired = {s for seen, s in idle if self.ttl and now - seen > self.ttl}
        excess = len(self.stored) - len(expired) - (self.max_stored or len(self.stored))
        expired |= {s for _, s in sorted(x for x in idle if x[1] not in expired)[:max(0, excess)]}
        gone = []
        for stream in sorted(expired):
            async with self._locked(stream):
                if stream in self.entries or self.stored.pop(stream, None) is None:
                    continue  # came back, or was reset, while we waited
                try:
                    await to_thread.run_sync(self.store.delete, stream)
                except OSError as e:
                    log.error("cannot delete the expired snapshot of stream %r from %s: %s", stream, self.store.location, e)
                    continue
                gone.append(stream)
        if gone:
            log.info("%d stream snapshot(s) deleted (DRIFTSEG_STATE_TTL, DRIFTSEG_MAX_STORED_STREAMS)", len(gone))
        return gone

    @asynccontextmanager
    async def _locked(self, stream: str) -> AsyncIterator[None]:
        slot = self._slots.setdefault(stream, _Slot())
        slot.users += 1
        try:
            async with slot.lock:
                yield
        finally:
            slot.users -= 1
            if slot.users == 0 and self._slots.get(stream) is slot:
                del self._slots[stream]

    @asynccontextmanager
    async def use(self, stream: str, create: bool = True) -> AsyncIterator[StreamEntry | None]:
        """The stream's entry, held under its lock: from memory, else resumed from its snapshot, else
        (if `create`) a new stream at the source state; None if there is none and `create` is False.
        A new stream whose first use fails (an undecodable frame, say) is dropped again: no stream is left."""
        check_stream_id(stream)
        async with self._locked(stream):
            entry, new = self.entries.get(stream), False
            if entry is None:
                entry = await self._resume(stream, create)
                if entry is not None:
                    new = stream not in self.stored  # _resume forgets a snapshot it could not read
                    self.entries[stream] = entry
                    await self._evict()
            else:
                self.entries.move_to_end(stream)
            try:
                yield entry
            except BaseException:
                if new and not entry.dirty and self.entries.get(stream) is entry:
                    del self.entries[stream]
                raise
        if len(self.entries) > self.max_streams:
            # streams that were all in use when the cap was passed: evict now that one is free
            await self._evict()

    async def _resume(self, stream: str, create: bool) -> StreamEntry | None:
        # a shared store may hold a snapshot that another replica wrote after this one listed the store
        if stream in self.stored or self.store.shared:
            try:
                payload = await to_thread.run_sync(self.store.read, stream)
                if payload is not None:
                    models = payload["models"]
                    model = models[-1] if models else None
                    state = await to_thread.run_sync(restore, payload, lambda: self.new_state(model))
                    last_seen = float(payload.get("last_seen", time.time()))
                    self.stored[stream] = StoredSnapshot(state.frames, last_seen)
                    return StreamEntry(stream, state, last_seen=last_seen, models=models)
            except Exception as e:  # a damaged snapshot must not take the stream down: it starts afresh
                log.warning("cannot resume stream %r from %s (%s); it starts from the source state",
                            stream, self.store.where(stream), getattr(e, "detail", e))
            self.stored.pop(stream, None)
        return StreamEntry(stream, self.new_state(None)) if create else None

    async def _evict(self) -> None:
        """Snapshot and drop the least recently used streams not in use until at most max_streams are held."""
        for stream in list(self.entries):
            if len(self.entries) <= self.max_streams:
                return
            if stream in self._slots:
                continue  # in use or waited for: it stays, the cap is exceeded for a while
            if stream in self.entries and self.entries[stream].dirty and not self.store.healthy:
                continue  # its state would be lost: it stays in memory until the store is back
            async with self._locked(stream):  # free, so taken at once; a request arriving now waits for the write
                entry = self.entries.pop(stream, None)  # gone already if reset while we waited for a write
                if entry is not None and entry.dirty:
                    try:
                        await self._write(entry)
                    except OSError as e:
                        log.error("cannot snapshot stream %r to %s (%s); keeping it in memory", stream,
                                  self.store.location, e)
                        self.entries[stream] = entry
                        self.entries.move_to_end(stream, last=False)

    async def _write(self, entry: StreamEntry, force: bool = False) -> None:
        """Snapshot the stream (a shared store keeps a newer snapshot than this one, unless `force`)."""
        await to_thread.run_sync(self.store.write, entry.stream, entry.state, entry.last_seen, force, entry.models)
        entry.unsaved, entry.dirty = 0, False
        self.stored[entry.stream] = StoredSnapshot(entry.state.frames, entry.last_seen)
        self.on_write()
        if self.max_stored is not None and len(self.stored) > self.max_stored:
            await self.prune()

    async def commit(self, entry: StreamEntry, state: StreamState, score: float | None) -> None:
        """Store a stream's new state (call inside `use`); snapshot it every `snapshot_every` adapted frames."""
        changed = state is not entry.state
        entry.state, entry.last_seen = state, time.time()
        if score is not None and changed:
            entry.scores.append((state.frames, score))
        if changed:
            entry.dirty = True
            entry.unsaved += 1
            # while the store is down, frames do not wait on it: the engine's watcher catches up
            if self.snapshot_every and entry.unsaved >= self.snapshot_every and self.store.healthy:
                try:
                    await self._write(entry)
                except OSError as e:  # the frame was served; the state is still in memory
                    log.error("cannot snapshot stream %r to %s: %s", entry.stream, self.store.location, e)

    async def replace(self, entry: StreamEntry, state: StreamState, score: float | None,
                      models: list[str] | None = None) -> None:
        """Put an imported state in place (call inside `use`), with the models the stream was bound to if
        given (binding and rollback: a fresh state of the model now serving it), and snapshot it at once."""
        if models is not None:
            entry.models = list(models)
        entry.state, entry.last_seen, entry.dirty = state, time.time(), True
        entry.scores.clear()
        if score is not None:
            entry.scores.append((state.frames, score))
        await self._write(entry, force=True)  # an import may have fewer frames than what it replaces

    async def reset(self, stream: str) -> bool:
        """Forget the stream's adaptation, in memory and in the store: its next frame starts from the source
        state of its model. A stream bound to a model stays bound (its fresh state is snapshotted); any
        other is forgotten. False if it was not held."""
        check_stream_id(stream)
        async with self.use(stream, create=False) as entry:
            if entry is not None and entry.models:
                state = await to_thread.run_sync(self.new_state, entry.model)
                await self.replace(entry, state, None)
                return True
        async with self._locked(stream):
            held = self.entries.pop(stream, None) is not None
            held = self.stored.pop(stream, None) is not None or held
            await to_thread.run_sync(self.store.delete, stream)
            return held

    async def reset_all(self) -> list[str]:
        streams = sorted(set(self.entries) | set(self.stored))
        return [s for s in streams if await self.reset(s)]

    async def flush(self) -> int:
        """Snapshot every stream whose state changed since its last snapshot; the number written."""
        written = 0
        for stream in list(self.entries):
            async with self._locked(stream):
                entry = self.entries.get(stream)
                if entry is not None and entry.dirty:
                    try:
                        await self._write(entry)
                        written += 1
                    except OSError as e:
                        log.error("cannot snapshot stream %r to %s: %s", stream, self.store.location, e)
        return written

    def streams(self) -> list[tuple[str, int, float, bool, bool]]:
        """(stream, frames, last seen, in memory, in the store) for every stream held, most recent first."""
        rows = {s: (s, d.frames, d.last_seen, False, True) for s, d in self.stored.items()}
        for s, e in self.entries.items():
            rows[s] = (s, e.state.frames, e.last_seen, True, s in self.stored)
        return sorted(rows.values(), key=lambda r: r[2], reverse=True)

    def counts(self) -> tuple[int, int]:
        """Streams in memory, streams with a snapshot in the store."""
        return len(self.entries), len(self.stored)

    def is_stored(self, stream: str) -> bool:
        return stream in self.stored

    def latest_scores(self) -> list[tuple[str, float]]:
        """(stream, last shift score) of the streams in memory that have one, most recently seen first."""
        recent = sorted(self.entries.values(), key=lambda e: e.last_seen, reverse=True)
        return [(e.stream, e.scores[-1][1]) for e in recent if e.scores]

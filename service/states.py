"""What the state routes do to the streams a server holds: describe a stream's state (GET
/adaptation/state), export it as a snapshot and import one (PUT), reset streams, list them, bind a stream
to a model of the model store and roll that back."""
import re

from anyio import to_thread

from driftseg.service import snapshots
from driftseg.service.adaptation import describe_method_state, shift_and_alpha
from driftseg.service.errors import Conflict, NotFound
from driftseg.service.model_store import Models
from driftseg.service.recorder import Recorder
from driftseg.service.registry import StreamEntry, StreamRegistry, check_stream_id


MAX_PAGE = 1000  # streams per page of GET /adaptation/streams
# a page's end: the last stream's last-seen time and id (keyset paging: pages stay right while streams come and go)
CURSOR = re.compile(r"^([0-9]+(?:\.[0-9]+)?)~([A-Za-z0-9._-]{1,128})$")


class States:
    def __init__(self, models: Models, registry: StreamRegistry, max_streams: int, recorder: Recorder | None = None):
        self.models, self.registry, self.max_streams, self.recorder = models, registry, max_streams, recorder
        self.served = models.base

    async def summary(self, stream: str) -> dict:
        """What GET /adaptation/state answers (service.schemas.StreamStateSummary)."""
        async with self.registry.use(stream, create=False) as entry:
            if entry is None:
                raise _unknown(stream)
            stored = self.registry.is_stored(stream)
            return await to_thread.run_sync(self._summary, entry, list(entry.scores), stored)

    def _summary(self, entry: StreamEntry, scores: list, stored: bool) -> dict:
        recorded, recorded_bytes = self.recorder.usage(entry.stream) if self.recorder is not None else (0, 0)
        served = self.models.get(entry.model)
        return {
            "stream": entry.stream, "checkpoint": self.served.fingerprint, "model": served.fingerprint,
            "previous_models": [self.served.fingerprint, *entry.models][-len(entry.models) - 1:-1],
            "frames": entry.state.frames, "last_seen": entry.last_seen, "in_memory": True, "on_disk": stored,
            "recorded_frames": recorded, "recorded_bytes": recorded_bytes,
            "shift_history": [{"frame": f, "score": s} for f, s in scores],
            **describe_method_state(served, entry.state),
        }

    async def export(self, stream: str) -> bytes:
        """The stream's state as snapshot bytes (service/snapshots.py)."""
        async with self.registry.use(stream, create=False) as entry:
            if entry is None:
                raise _unknown(stream)
            return await to_thread.run_sync(snapshots.encode, stream, entry.state, self.served.fingerprint,
                                            self.served.method, entry.last_seen, entry.models)

    async def import_state(self, stream: str, data: bytes) -> dict:
        """Replace the stream's state with a snapshot's, all checks passed first: Unprocessable (422) for a
        file that is not a snapshot or does not fit, Conflict (409) for another checkpoint or method."""
        check_stream_id(stream)
        payload = await to_thread.run_sync(snapshots.decode, data)
        snapshots.check_origin(payload, self.served.fingerprint, self.served.method)
        models = payload["models"]
        for model in set(models):
            await to_thread.run_sync(self.models.check, model)  # every model it names is here and fits
        served = await to_thread.run_sync(self.models.get, models[-1] if models else None)
        state = await to_thread.run_sync(snapshots.restore, payload, served.pipeline.new_state)
        async with self.registry.use(stream) as entry:
            await self.registry.replace(entry, state, shift_and_alpha(served.pipeline, state)[0] if state.frames else None,
                                        models)
        return await self.summary(stream)

    async def bind(self, stream: str, model: str) -> dict:
        """Serve the stream with `model` (a sha256 of the model store, or the base's) from its next frame on,
        at that model's source state; the model it was on is kept for rollback."""
        check_stream_id(stream)
        await to_thread.run_sync(self.models.check, model)
        served = await to_thread.run_sync(self.models.get, model)
        async with self.registry.use(stream) as entry:
            if served.fingerprint != self.models.get(entry.model).fingerprint:
                history = [*entry.models, model][-snapshots.MAX_MODELS:]
                await self.registry.replace(entry, served.pipeline.new_state(), None, history)
        return await self.summary(stream)

    async def rollback(self, stream: str) -> dict:
        """Serve the stream with the model it was on before its last binding, at that model's source state."""
        check_stream_id(stream)
        async with self.registry.use(stream, create=False) as entry:
            if entry is None:
                raise _unknown(stream)
            if not entry.models:
                raise Conflict(f"stream {stream!r} is on the base model and was never bound to another: nothing to "
                               "roll back to")
            history = entry.models[:-1]
            served = await to_thread.run_sync(self.models.get, history[-1] if history else None)
            await self.registry.replace(entry, served.pipeline.new_state(), None, history)
        return await self.summary(stream)

    def model_list(self) -> dict:
        """What GET /adaptation/models answers: the base, the store's models with their provenance, which
        are in memory."""
        resident = set(self.models.resident())
        return {"base": self.served.fingerprint, "max_models": self.models.max_models,
                "models": [{"sha256": record["sha256"], "resident": record["sha256"] in resident, "provenance": record}
                           for record in self.models.store.list()]}

    async def reset(self, stream: str) -> list[str]:
        if not await self.registry.reset(stream):
            raise _unknown(stream)
        return [stream]

    async def delete_recording(self, stream: str) -> int:
        """Delete the stream's recorded frames (held or not: footage outlives a stream's state); how many."""
        check_stream_id(stream)
        return await to_thread.run_sync(self.recorder.delete, stream) if self.recorder is not None else 0

    async def reset_all(self) -> list[str]:
        return await self.registry.reset_all()

    def listing(self, limit: int = MAX_PAGE, cursor: str | None = None) -> dict:
        """A page of what GET /adaptation/streams answers (service.schemas.StreamList): `limit` streams,
        most recently seen first, after `cursor` (a CURSOR: the last row of the previous page)."""
        rows = sorted(self.registry.streams(), key=lambda r: (-r[2], r[0]))
        if cursor is not None:
            seen, stream = CURSOR.match(cursor).groups()
            rows = [r for r in rows if (-r[2], r[0]) > (-float(seen), stream)]
        page = rows[:limit]
        in_memory, stored = self.registry.counts()
        return {"streams": [{"stream": s, "frames": f, "last_seen": t, "in_memory": m, "on_disk": d}
                            for s, f, t, m, d in page],
                "next_cursor": f"{page[-1][2]!r}~{page[-1][0]}" if len(rows) > limit else None,
                "in_memory": in_memory, "on_disk": stored, "max_streams": self.max_streams}

    def counts(self) -> tuple[int, int]:
        """Streams in memory, streams with a snapshot in the store."""
        return self.registry.counts()

    def latest_scores(self) -> list[tuple[str, float]]:
        """(stream, last shift score) of the streams in memory that have one, most recently seen first."""
        return self.registry.latest_scores()


def _unknown(stream: str) -> NotFound:
    return NotFound(f"stream {stream!r} is not held: POST /segment with X-Stream-Id: {stream} starts it "
                    "(GET /adaptation/streams lists the streams held)")

"""Stream snapshots in Redis (DRIFTSEG_STATE_STORE=redis://host:port/db), shared by every replica, so
a stream that moves to another replica (its own replica died, or the ring changed) resumes there.

One hash per stream, `driftseg:<origin key>:<stream key>` (service/snapshots.py), holding the snapshot
bytes (service/snapshots.py's format), its version and last-seen time, expiring DRIFTSEG_STATE_TTL seconds
after the stream was last seen (Redis deletes it, whichever replica wrote it). The version is the stream's
frame count, and a write lands only if it is not older than the stored one (checked inside Redis by
a script, atomically): a replica that lags behind cannot roll a stream back. A reset deletes the
key, and an imported state is written unconditionally.

Redis down: every call raises StoreUnavailable (an OSError, which the registry already answers by
keeping the state in memory and retrying later) and `healthy` turns False until a call succeeds.
"""
import logging
import math
from urllib.parse import urlsplit

import redis

from driftseg.adapters.component import StreamState
from driftseg.service.errors import Conflict, Unprocessable
from driftseg.service.snapshots import (StoredSnapshot, check_origin, decode, encode, origin_key, stream_key,
                                       stream_payload)

log = logging.getLogger("driftseg.service")

# KEYS[1]: the stream's hash; ARGV: data, version, last_seen, force ("1" or "0"), expiry (unix seconds, "0":
# none). 1 if written.
_WRITE_IF_NEWER = """
local current = redis.call('HGET', KEYS[1], 'version')
if current and ARGV[4] ~= '1' and tonumber(current) > tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'data', ARGV[1], 'version', ARGV[2], 'last_seen', ARGV[3])
if ARGV[5] ~= '0' then redis.call('EXPIREAT', KEYS[1], ARGV[5]) else redis.call('PERSIST', KEYS[1]) end
return 1
"""


class StoreUnavailable(OSError):
    """The state store cannot be reached."""


class RedisStore:
    """A SnapshotStore (service/store.py) in one Redis database, shared by every replica."""

    shared = True  # other replicas write here too: a stream not held may have a snapshot at any time

    def __init__(self, url: str, checkpoint: str, method: str, timeout: float = 2.0, ttl: float = 0.0):
        parts = urlsplit(url)
        self.location = f"redis://{parts.hostname}:{parts.port or 6379}{parts.path or '/0'}"  # no password in logs
        self.checkpoint, self.method, self.ttl = checkpoint, method, ttl
        self.prefix = f"driftseg:{origin_key(checkpoint, method)}:"
        self.client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._write_if_newer = self.client.register_script(_WRITE_IF_NEWER)
        self.healthy = False

    def _call(self, fn, *args):
        try:
            result = fn(*args)
        except redis.RedisError as e:
            if self.healthy:
                log.error("state store %s unavailable (%s): serving from memory until it is back", self.location, e)
            self.healthy = False
            raise StoreUnavailable(f"state store {self.location} unavailable: {e}") from None
        if not self.healthy:
            log.info("state store %s reachable", self.location)
        self.healthy = True
        return result

    def key(self, stream: str) -> str:
        return self.prefix + stream_key(stream)

    def where(self, stream: str) -> str:
        return f"{self.location} {self.key(stream)}"

    def prepare(self) -> None:
        """Reach Redis once; a server that is down at start-up starts degraded instead of not at all."""
        try:
            self._call(self.client.ping)
        except StoreUnavailable as e:
            log.error("%s: starting without it", e)

    def ping(self) -> bool:
        try:
            self._call(self.client.ping)
        except StoreUnavailable:
            return False
        return True

    def write(self, stream: str, state: StreamState, last_seen: float, force: bool = False,
              models: list[str] = ()) -> bool:
        """Store the stream's snapshot unless a newer one (more frames) is there; whether it was written."""
        data = encode(stream, state, self.checkpoint, self.method, last_seen, models)
        expiry = math.ceil(last_seen + self.ttl) if self.ttl else 0
        written = self._call(self._write_if_newer, [self.key(stream)],
                             [data, state.frames, repr(last_seen), "1" if force else "0", expiry])
        if not written:
            log.info("stream %r: a newer snapshot than frame %d is in %s; kept it", stream, state.frames, self.location)
        return bool(written)

    def read(self, stream: str) -> dict | None:
        data = self._call(self.client.hget, self.key(stream), "data")
        if data is None:
            return None
        return stream_payload(data, stream, self.checkpoint, self.method, self.key(stream))

    def delete(self, stream: str) -> None:
        self._call(self.client.delete, self.key(stream))

    def scan(self) -> dict[str, StoredSnapshot]:
        """Frames and last-seen time of every snapshot this checkpoint and method have in Redis (empty
        while Redis is down). The stream ids come from the snapshots: keys hold only their hashes."""
        found: dict[str, StoredSnapshot] = {}
        try:
            keys = self._call(lambda: list(self.client.scan_iter(match=self.prefix + "*")))
            for key in keys:
                data = self._call(self.client.hget, key, "data")
                if data is None:
                    continue  # reset by a replica since the SCAN listed it
                try:
                    payload = decode(data)
                    check_origin(payload, self.checkpoint, self.method)
                except (Unprocessable, Conflict) as e:
                    log.warning("snapshot %s in %s cannot be resumed: %s", key, self.location, e.detail)
                    continue
                found[payload["stream"]] = StoredSnapshot(int(payload["state"].get("frames", 0)),
                                                          float(payload.get("last_seen", 0.0)))
        except StoreUnavailable:
            return {}
        return found

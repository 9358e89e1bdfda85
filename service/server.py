"""How `driftseg serve` runs the app on uvicorn: an HTTP protocol with deadlines on reading a request,
the connection bound, and log lines that never carry an API key.

uvicorn (0.55) bounds the time a connection may sit idle between requests (timeout_keep_alive) and
answers 503 beyond `limit_concurrency` connections, but sets no deadline on reading a request: a
client that sends half its headers, or declares a body and sends part of it, holds its connection,
its file descriptor and the request's task for ever. No uvicorn option or ASGI middleware can close
a connection whose headers never complete (the app is not called until they do), so the deadlines
are a subclass of uvicorn's h11 protocol: a timer per request read, cancelled when the headers, then
the body, are in."""
import json
import logging
import re
from copy import deepcopy

import h11
from uvicorn.config import LOGGING_CONFIG
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("driftseg.service")

# query parameters that look like a credential: their values never reach the access log
KEY_PARAMS = re.compile(r"(?i)([?&][^=&]*(?:key|token|secret|password|auth)[^=&]*=)[^&\s\"]*")
REDACTED = "REDACTED"


def _timeout_answer(detail: str) -> bytes:
    """A whole 408 answer in the error model, written raw: the request was never parsed whole, so h11
    (whose state machine wants a complete request first) cannot frame it."""
    body = json.dumps({"detail": detail}).encode()
    return (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"content-length: %d\r\n\r\n" % len(body)) + body


class ReadDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol with two deadlines: `header_timeout` seconds from a request's first byte
    (or from the connection's opening) to its last header, and `body_timeout` seconds from there to the
    end of its body. Past either the client gets a 408 if no answer was started, the connection is
    closed, and the app (if it is reading the body) sees the client disconnect."""

    header_timeout: float = 10.0
    body_timeout: float = 60.0

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._read_timer = None
        self._arm("headers", self.header_timeout, "DRIFTSEG_HEADER_TIMEOUT")

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._read_timer is None and self.conn.their_state is h11.IDLE:
            # the first bytes of the next request on a kept-alive connection
            self._arm("headers", self.header_timeout, "DRIFTSEG_HEADER_TIMEOUT")
        super().data_received(data)

    def handle_events(self) -> None:
        before = self.conn.their_state
        super().handle_events()
        after = self.conn.their_state
        if before is h11.IDLE and after is h11.SEND_BODY:
            self._arm("body", self.body_timeout, "DRIFTSEG_BODY_TIMEOUT")
        elif after is not h11.IDLE and after is not h11.SEND_BODY:  # DONE, MUST_CLOSE, ERROR...: nothing to wait for
            self._disarm()

    def _arm(self, what: str, seconds: float, setting: str) -> None:
        self._disarm()
        self._read_timer = self.loop.call_later(seconds, self._timed_out, what, seconds, setting)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _timed_out(self, what: str, seconds: float, setting: str) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        client = "%s:%d" % self.client if self.client else "a client"
        log.info("%s: request %s not received within %g s (%s); connection closed", client, what, seconds, setting)
        # headers: answered only if part of a request came (a connection opened and left idle just closes);
        # body: answered unless the app already started its answer
        answer = bool(self.conn.trailing_data[0]) if what == "headers" else not self.cycle.response_started
        if answer:
            self.transport.write(_timeout_answer(
                f"the request {what} did not arrive within {seconds:g} s ({setting}): send it whole, faster"))
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True  # the app's receive() answers http.disconnect, its send() is dropped
            self.cycle.message_event.set()
        self.transport.close()


def protocol(header_timeout: float, body_timeout: float) -> type[ReadDeadlineProtocol]:
    """The protocol class uvicorn instantiates per connection, with the settings' deadlines."""
    return type("ReadDeadlineProtocol", (ReadDeadlineProtocol,),
                {"header_timeout": header_timeout, "body_timeout": body_timeout})


class RedactKeys(logging.Filter):
    """Blanks credential-like query parameters (?api_key=..., ?token=...) and the server's own key,
    wherever it appears, in uvicorn's access lines: a key sent in the URL by mistake is not logged."""

    def __init__(self, key: str | None = None):
        super().__init__()
        self.key = key

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) >= 3 and isinstance(record.args[2], str):
            path = KEY_PARAMS.sub(rf"\g<1>{REDACTED}", record.args[2])
            if self.key:
                path = path.replace(self.key, REDACTED)
            record.args = (*record.args[:2], path, *record.args[3:])
        return True


def log_config(level: str, api_key: str | None) -> dict:
    """uvicorn's logging config, with the service's own log lines (start-up, snapshots, shutdown) through
    its handler and format, and the access log redacted (RedactKeys)."""
    config = deepcopy(LOGGING_CONFIG)
    config["loggers"]["driftseg"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    config.setdefault("filters", {})["redact_keys"] = {"()": RedactKeys, "key": api_key}
    config["handlers"]["access"]["filters"] = ["redact_keys"]
    return config

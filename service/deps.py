"""Dependencies shared by the routes: the API key (when one is set), the settings, what a route
works with once the model is ready (the segmenter, the stream states; 503 until then) and the
stream id. Routes see the engine only through these, never its registry or store."""
import secrets
from typing import Annotated

from fastapi import Depends, Header, Query, Request
from fastapi.security import APIKeyHeader

from driftseg.service.engine import Engine
from driftseg.service.errors import NO_STREAM, NotReady, Unauthorized, Unprocessable
from driftseg.service.jobs import Jobs
from driftseg.service.metrics import Metrics
from driftseg.service.openapi import READ_SCHEME, WRITE_SCHEME
from driftseg.service.registry import STREAM_ID, check_stream_id
from driftseg.service.segmenter import Segmenter
from driftseg.service.settings import Settings
from driftseg.service.states import States

DEFAULT_STREAM = "default"
API_KEY_HEADER = "X-API-Key"

# two schemes for the one header, so that the served schema (service/openapi.py, `security`) marks the key
# as needed exactly where this server's settings need it
_write_key = APIKeyHeader(
    name=API_KEY_HEADER, auto_error=False, scheme_name=WRITE_SCHEME,
    description="needed on the routes that change a stream's state, model or recording (PUT, POST /adapt/reset, "
                "POST /adaptation/model/rollback, DELETE) where the server sets DRIFTSEG_API_KEY")
_read_key = APIKeyHeader(
    name=API_KEY_HEADER, auto_error=False, scheme_name=READ_SCHEME,
    description="needed on POST /segment and GET /adaptation/* where the server sets DRIFTSEG_API_KEY_EVERYWHERE too")


def _check_key(request: Request, given: str | None, everywhere_only: bool) -> None:
    settings = get_settings(request)
    if settings.api_key is None or (everywhere_only and not settings.api_key_everywhere):
        return
    if not given:
        raise Unauthorized(f"this route needs the header {API_KEY_HEADER}: send {API_KEY_HEADER}: <the server's "
                           "DRIFTSEG_API_KEY>")
    # bytes, so that a non-ASCII header is a mismatch rather than compare_digest's TypeError
    if not secrets.compare_digest(given.encode(), settings.api_key.get_secret_value().encode()):
        raise Unauthorized(f"the header {API_KEY_HEADER} does not match the server's key (DRIFTSEG_API_KEY)")


def require_key(request: Request, x_api_key: Annotated[str | None, Depends(_write_key)]) -> None:
    """Routes that change a stream's state: 401 without the key, wherever DRIFTSEG_API_KEY is set."""
    _check_key(request, x_api_key, everywhere_only=False)


def require_key_everywhere(request: Request, x_api_key: Annotated[str | None, Depends(_read_key)]) -> None:
    """The other stream routes: 401 without the key where DRIFTSEG_API_KEY_EVERYWHERE is set too."""
    _check_key(request, x_api_key, everywhere_only=True)


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def get_loaded_engine(request: Request) -> Engine | None:
    """The engine once the model is loaded (ready or shutting down), else None: for the health routes."""
    return getattr(request.app.state, "engine", None)


def get_engine(engine: Annotated[Engine | None, Depends(get_loaded_engine)]) -> Engine:
    if engine is None or not engine.ready:
        raise NotReady("the model is not loaded yet (or the server is shutting down): retry once GET /readyz answers 200")
    return engine


def get_segmenter(engine: Annotated[Engine, Depends(get_engine)]) -> Segmenter:
    return engine.segmenter


def get_states(engine: Annotated[Engine, Depends(get_engine)]) -> States:
    return engine.states


def get_jobs(engine: Annotated[Engine, Depends(get_loaded_engine)]) -> Jobs:
    return engine.jobs


# the rule in the schema too, so that generated clients know it; check_stream_id enforces it with its own message
_STREAM_RULE = {"pattern": STREAM_ID.pattern}


def get_stream_id(
    request: Request,
    stream: Annotated[str | None, Query(description="stream id, 1-128 of A-Z a-z 0-9 . _ - (or header X-Stream-Id)",
                                        json_schema_extra=_STREAM_RULE)] = None,
    x_stream_id: Annotated[str | None, Header(description=f"stream id (or query parameter stream); without either the "
                                              f"stream is {DEFAULT_STREAM!r}, shared by every such request, unless the "
                                              "server sets DRIFTSEG_REQUIRE_STREAM_ID (the Docker image does): then "
                                              "it answers 422", json_schema_extra=_STREAM_RULE)] = None,
) -> str:
    if stream is not None and x_stream_id is not None and stream != x_stream_id:
        raise Unprocessable(f"stream given twice, as X-Stream-Id {x_stream_id!r} and as ?stream={stream!r}: give one")
    if stream is None and x_stream_id is None:
        if get_settings(request).require_stream_id:
            raise Unprocessable(NO_STREAM)
        return DEFAULT_STREAM
    return check_stream_id(stream if stream is not None else x_stream_id)


WriteAccess = Annotated[None, Depends(require_key)]
ReadAccess = Annotated[None, Depends(require_key_everywhere)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
LoadedEngine = Annotated[Engine | None, Depends(get_loaded_engine)]
SegmenterDep = Annotated[Segmenter, Depends(get_segmenter)]
StatesDep = Annotated[States, Depends(get_states)]
JobsDep = Annotated[Jobs, Depends(get_jobs)]
StreamId = Annotated[str, Depends(get_stream_id)]

"""Dependencies shared by the routes: the engine (503 until it is ready) and the stream id."""
from typing import Annotated

from fastapi import Depends, Header, Query, Request

from service.engine import Engine
from service.errors import NotReady, Unprocessable
from service.registry import check_stream_id

DEFAULT_STREAM = "default"


def get_engine(request: Request) -> Engine:
    engine = getattr(request.app.state, "engine", None)
    if engine is None or not engine.ready:
        raise NotReady("the model is not loaded yet (or the server is shutting down): retry once GET /readyz answers 200")
    return engine


def get_stream_id(
    stream: Annotated[str | None, Query(description="stream id, 1-128 of A-Z a-z 0-9 . _ - (or header X-Stream-Id)")] = None,
    x_stream_id: Annotated[str | None, Header(description="stream id (or query parameter stream)")] = None,
) -> str:
    if stream is not None and x_stream_id is not None and stream != x_stream_id:
        raise Unprocessable(f"stream given twice, as X-Stream-Id {x_stream_id!r} and as ?stream={stream!r}: give one")
    return check_stream_id(stream if stream is not None else x_stream_id if x_stream_id is not None else DEFAULT_STREAM)


EngineDep = Annotated[Engine, Depends(get_engine)]
StreamId = Annotated[str, Depends(get_stream_id)]

"""A stream's adaptation state: read it (JSON summary or snapshot file), import a snapshot, reset it;
and delete the frames recorded of it."""
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request, Response

from driftseg.service.body import read_body
from driftseg.service.deps import ReadAccess, StatesDep, StreamId, WriteAccess
from driftseg.service.openapi import KEY, KEY_EVERYWHERE, NOT_READY, errors, headers
from driftseg.service.schemas import RecordingDeleted, ResetResult, StreamStateSummary

router = APIRouter(tags=["adaptation state"])

MAX_STATE_BYTES = 64 * 1024 * 1024  # a state is tens of KB; this only stops runaway uploads
SNAPSHOT_TYPE = "application/octet-stream"
_BINARY = {"type": "string", "format": "binary"}


@router.get(
    "/adaptation/state", operation_id="get_stream_state", response_model=StreamStateSummary,
    responses={200: {"content": {SNAPSHOT_TYPE: {"schema": _BINARY}},
                     "description": "format=json: a summary; format=binary: the snapshot file for PUT",
                     "headers": headers("Content-Disposition")},
               **errors({401: (KEY_EVERYWHERE, "key missing", "key wrong"),
                         404: ("the stream is not held", "stream not held"),
                         422: ("an invalid stream id or parameter, or no stream named where the server requires one",
                               "invalid stream id", "stream not named", "invalid parameter"),
                         503: (NOT_READY, "not ready")})},
)
async def get_state(
    _access: ReadAccess,
    states: StatesDep,
    stream: StreamId,
    fmt: Annotated[Literal["json", "binary"] | None, Query(alias="format", description="json | binary (else from Accept)")] = None,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
):
    """The stream's state: method and parameters, frames seen, shift score and its recent history,
    per-BN-layer drift and alpha, label-calibration prototypes; or (format=binary) the whole state as a
    snapshot file that PUT /adaptation/state imports here or on another replica."""
    if fmt == "binary" or (fmt is None and SNAPSHOT_TYPE in (accept or "")):
        data = await states.export(stream)
        return Response(data, media_type=SNAPSHOT_TYPE,
                        headers={"Content-Disposition": f'attachment; filename="{stream}.driftseg-state"'})
    return await states.summary(stream)


@router.put(
    "/adaptation/state", operation_id="put_stream_state", response_model=StreamStateSummary,
    responses=errors({401: (KEY, "key missing", "key wrong"),
                      409: ("a snapshot of another checkpoint or method", "snapshot of another method"),
                      413: ("the body is over 64 MiB", "snapshot too large"),
                      422: ("not a snapshot, its state does not fit, an invalid stream id, or no stream named "
                            "where the server requires one", "not a snapshot", "invalid stream id", "stream not named"),
                      503: (NOT_READY, "not ready")}),
    openapi_extra={"requestBody": {"required": True, "description": "a snapshot from GET /adaptation/state?format=binary",
                                   "content": {SNAPSHOT_TYPE: {"schema": _BINARY}}}},
)
async def put_state(_access: WriteAccess, request: Request, states: StatesDep, stream: StreamId) -> dict:
    """Replace the stream's state with a snapshot's. Every check runs before the stream is touched:
    on any error its state stays as it was."""
    data = await read_body(request, MAX_STATE_BYTES, "snapshot", None)
    return await states.import_state(stream, data)


@router.post("/adapt/reset", operation_id="reset_streams", response_model=ResetResult,
             responses=errors({401: (KEY, "key missing", "key wrong"),
                               404: ("the stream is not held", "stream not held"),
                               422: ("an invalid stream id or parameter", "invalid stream id", "invalid parameter"),
                               503: (NOT_READY, "not ready")}))
async def reset(
    _access: WriteAccess,
    states: StatesDep,
    stream: StreamId,
    all_: Annotated[bool, Query(alias="all", description="reset every stream held (the stream named among them)")] = False,
) -> ResetResult:
    """Drop a stream's state (or with all=true every stream's), in memory and its snapshot in the store:
    its next frame starts from the source model."""
    if all_:
        return ResetResult(reset=await states.reset_all())
    return ResetResult(reset=await states.reset(stream))


@router.delete("/adaptation/recording", operation_id="delete_recording", response_model=RecordingDeleted,
               responses=errors({401: (KEY, "key missing", "key wrong"),
                                 422: ("an invalid stream id, or no stream named where the server requires one",
                                       "invalid stream id", "stream not named"),
                                 503: (NOT_READY, "not ready")}))
async def delete_recording(_access: WriteAccess, states: StatesDep, stream: StreamId) -> RecordingDeleted:
    """Delete the frames recorded of the stream (DRIFTSEG_RECORD): camera footage, kept until deleted
    here, pushed out by newer frames past the caps, or pruned after DRIFTSEG_STATE_TTL. Its state stays."""
    return RecordingDeleted(stream=stream, deleted=await states.delete_recording(stream))

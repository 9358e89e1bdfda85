"""POST /segment: one frame in, its label map (PNG), a colour overlay (JPEG) or a JSON summary out."""
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse

from driftseg.service.body import read_image
from driftseg.service.deps import EngineDep, ReadAccess, StreamId
from driftseg.service.engine import Segmented
from driftseg.service.imaging import MEDIA_TYPES
from driftseg.service.schemas import ClassCount, SegmentSummary, Timings
from driftseg.service.stages import server_timing

router = APIRouter(tags=["segment"])

Format = Literal["png", "overlay", "json"]
_ACCEPT = {"image/png": "png", "image/jpeg": "overlay", "application/json": "json"}
_BINARY = {"type": "string", "format": "binary"}
_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "description": "the frame: a JPEG, PNG or WebP as the raw body, or multipart/form-data with it in 'image'",
        "content": {
            **{t: {"schema": _BINARY} for t in MEDIA_TYPES},
            "multipart/form-data": {"schema": {"type": "object", "properties": {"image": _BINARY}, "required": ["image"]}},
        },
    }
}
_RESPONSES = {
    200: {"description": "format=png: the label map, one uint8 class index per pixel at the frame's size; "
                         "format=overlay: the frame blended with the class colours; format=json: a summary",
          "content": {"image/png": {"schema": _BINARY}, "image/jpeg": {"schema": _BINARY}}},
    401: {"description": "X-API-Key missing or wrong (only where DRIFTSEG_API_KEY_EVERYWHERE is set)"},
    413: {"description": "body or image too large"},
    415: {"description": "content type not accepted"},
    422: {"description": "undecodable image or invalid stream id"},
    503: {"description": "model not loaded yet, or more requests in flight than DRIFTSEG_MAX_PENDING (see Retry-After)"},
}


def choose_format(fmt: str | None, accept: str | None) -> str:
    """?format= wins; else the first media type of Accept that has a format; else png."""
    if fmt is not None:
        return fmt
    for item in (accept or "").split(","):
        kind = item.split(";")[0].strip().lower()
        if kind in _ACCEPT:
            return _ACCEPT[kind]
    return "png"


def _headers(r: Segmented) -> dict[str, str]:
    headers = {"X-Stream-Id": r.stream, "X-Frame-Index": str(r.frame), "Server-Timing": server_timing(r.seconds)}
    if r.shift_score is not None:
        headers["X-Shift-Score"] = f"{r.shift_score:.4f}"
    return headers


@router.post("/segment", response_model=SegmentSummary, responses=_RESPONSES, openapi_extra=_REQUEST_BODY)
async def segment(
    _access: ReadAccess,
    request: Request,
    engine: EngineDep,
    stream: StreamId,
    adapt: Annotated[bool, Query(description="fold the frame into the stream's state")] = True,
    fmt: Annotated[Format | None, Query(alias="format", description="png | overlay | json (else from Accept; png)")] = None,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response:
    """Segment one frame of a stream and, unless adapt=false, fold it into the stream's adaptation state.
    Frames of one stream apply in the order they arrive."""
    fmt = choose_format(fmt, accept)
    data = await read_image(request, engine.settings.max_image_bytes)
    r = await engine.segment(stream, data, adapt=adapt, fmt=fmt)
    headers = _headers(r)
    if fmt != "json":
        return Response(r.body, media_type=r.media_type, headers=headers)
    total = max(int(r.counts.sum()), 1)
    summary = SegmentSummary(
        stream=r.stream, frame=r.frame, adapted=r.adapted, width=r.width, height=r.height,
        shift_score=r.shift_score, alpha_mean=r.alpha_mean,
        classes=[ClassCount(id=i, name=name, pixels=int(n), fraction=int(n) / total)
                 for i, (name, n) in enumerate(zip(engine.class_names, r.counts))],
        timings_ms=Timings(**{k: v * 1000 for k, v in r.seconds.items()}),
    )
    return JSONResponse(summary.model_dump(mode="json"), headers=headers)

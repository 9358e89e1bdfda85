"""POST /segment: one frame in, its label map (PNG), a colour overlay (JPEG) or a JSON summary out."""
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response

from driftseg.service import formats
from driftseg.service.body import read_image
from driftseg.service.deps import ReadAccess, SegmenterDep, SettingsDep, StreamId
from driftseg.service.imaging import MEDIA_TYPES
from driftseg.service.openapi import KEY_EVERYWHERE, errors, headers
from driftseg.service.schemas import SegmentSummary

router = APIRouter(tags=["segment"])

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
          "content": {"image/png": {"schema": _BINARY}, "image/jpeg": {"schema": _BINARY}},
          "headers": headers("X-Stream-Id", "X-Frame-Index", "Server-Timing", "X-Shift-Score")},
    **errors({
        401: (KEY_EVERYWHERE, "key missing", "key wrong"),
        413: ("the body or the decoded image is over DRIFTSEG_MAX_IMAGE_BYTES or DRIFTSEG_MAX_IMAGE_PIXELS",
              "image too large"),
        415: ("the content type is not an image this server decodes, nor multipart/form-data", "not an image type"),
        422: ("an undecodable or empty image, an invalid stream id or parameter, or no stream named where the "
              "server requires one (DRIFTSEG_REQUIRE_STREAM_ID)", "undecodable image", "invalid stream id",
              "stream not named", "invalid parameter"),
        503: ("the model is not loaded yet, or more requests are in flight than DRIFTSEG_MAX_PENDING (see "
              "Retry-After)", "not ready", "overloaded"),
    }),
}


@router.post("/segment", operation_id="segment", response_model=SegmentSummary, responses=_RESPONSES,
             openapi_extra=_REQUEST_BODY)
async def segment(
    _access: ReadAccess,
    request: Request,
    settings: SettingsDep,
    segmenter: SegmenterDep,
    stream: StreamId,
    adapt: Annotated[bool, Query(description="fold the frame into the stream's state")] = True,
    fmt: Annotated[formats.Format | None, Query(alias="format", description="png | overlay | json (else from Accept; png)")] = None,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response:
    """Segment one frame of a stream and, unless adapt=false, fold it into the stream's adaptation state.
    Frames of one stream apply in the order they arrive."""
    fmt = formats.choose_format(fmt, accept)
    data = await read_image(request, settings.max_image_bytes)
    result = await segmenter.segment(stream, data, adapt=adapt, fmt=fmt)
    return formats.answer(result, segmenter.class_names)

"""Reading request bodies with a size limit, and the image of a POST /segment (raw or multipart)."""
from starlette.exceptions import HTTPException
from starlette.requests import Request

from driftseg.service.errors import PayloadTooLarge, Unprocessable, UnsupportedMediaType
from driftseg.service.imaging import MEDIA_TYPES

MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around the image
ACCEPTED = f"{', '.join(MEDIA_TYPES)} as the raw body, or multipart/form-data with the image in the field 'image'"


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_body(request: Request, limit: int, what: str = "body", setting: str | None = "DRIFTSEG_MAX_IMAGE_BYTES") -> bytes:
    """The whole body, or PayloadTooLarge as soon as it passes `limit` bytes (Content-Length is checked first)."""
    too_large = PayloadTooLarge(f"the {what} is over the limit of {limit} bytes" + (f" ({setting})" if setting else "")
                                + ": send a smaller one")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _replay(body: bytes):
    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


async def read_image(request: Request, limit: int) -> bytes:
    """The encoded image of a /segment request: UnsupportedMediaType (415), PayloadTooLarge (413) or
    Unprocessable (422) saying what to send instead."""
    kind = media_type(request)
    if kind in MEDIA_TYPES:
        data = await read_body(request, limit, "image")
        if not data:
            raise Unprocessable(f"the body is empty: send the frame's encoded bytes ({ACCEPTED})")
        return data
    if kind != "multipart/form-data":
        raise UnsupportedMediaType(f"content type {kind or '(none)'!r} is not accepted: send {ACCEPTED}")
    body = await read_body(request, limit + MULTIPART_OVERHEAD, "multipart body")
    try:
        form = await Request(request.scope, _replay(body)).form(max_files=1, max_fields=16)
    except HTTPException as e:
        raise Unprocessable(f"malformed multipart body: {e.detail}") from None
    try:
        part = form.get("image")
        if part is None or isinstance(part, str):
            raise Unprocessable(f"the multipart body has no file field 'image' (fields: {sorted(form.keys())}): "
                                "send the image as -F image=@frame.jpg")
        part_type = (part.content_type or "").split(";")[0].strip().lower()
        if part_type not in (*MEDIA_TYPES, "application/octet-stream", ""):
            raise UnsupportedMediaType(f"the field 'image' has content type {part_type!r}: send one of {', '.join(MEDIA_TYPES)}")
        data = await part.read()
    finally:
        await form.close()
    if len(data) > limit:
        raise PayloadTooLarge(f"the image is {len(data)} bytes, over the limit of {limit} (DRIFTSEG_MAX_IMAGE_BYTES)")
    if not data:
        raise Unprocessable("the multipart field 'image' is empty: send the frame's encoded bytes in it")
    return data

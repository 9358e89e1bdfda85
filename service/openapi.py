"""What the OpenAPI schema says of the routes' answers beyond their 200 body: the one error model
(schemas.Error) with examples on every 4xx and 5xx, the response headers the routes set, and the key
marked as needed exactly where the server's settings need it."""
from driftseg.adapters.spec import RECOMMENDED
from driftseg.service.errors import NO_STREAM
from driftseg.service.schemas import Error
from driftseg.service.stages import Stage

WRITE_SCHEME, READ_SCHEME = "APIKey", "APIKeyEverywhere"  # the key on the routes that change state / on the others
_STRING, _INTEGER, _NUMBER = {"type": "string"}, {"type": "integer"}, {"type": "number"}

HEADERS = {
    "X-Stream-Id": {"description": "the stream the frame belongs to (X-Stream-Id or ?stream=, else 'default' "
                                   "unless the server sets DRIFTSEG_REQUIRE_STREAM_ID)",
                    "schema": _STRING},
    "X-Frame-Index": {"description": "frames folded into the stream's state so far, this one included when adapted",
                      "schema": _INTEGER},
    "X-Shift-Score": {"description": "the stream's shift score after this frame, 4 decimals (method auto only; "
                                     "about 1 at the edge of in-domain)", "schema": _NUMBER},
    "Server-Timing": {"description": "ms per stage of the request: "
                                     + ", ".join(f"{stage};dur=MS ({stage.description})" for stage in Stage),
                      "schema": _STRING},
    "Retry-After": {"description": "seconds after which the request may succeed", "schema": _INTEGER},
    "Content-Disposition": {"description": 'attachment; filename="<stream>.driftseg-state"', "schema": _STRING},
}

# the service's own words (errors.py, body.py, deps.py, ...), by the name each example has in /docs
EXAMPLES: dict[str, str | list] = {
    "key missing": "this route needs the header X-API-Key: send X-API-Key: <the server's DRIFTSEG_API_KEY>",
    "key wrong": "the header X-API-Key does not match the server's key (DRIFTSEG_API_KEY)",
    "stream not named": NO_STREAM,
    "stream not held": "stream 'cam7' is not held: POST /segment with X-Stream-Id: cam7 starts it "
                       "(GET /adaptation/streams lists the streams held)",
    "snapshot of another method": f"the snapshot was made with method 'ptbn', this server runs {RECOMMENDED!r}: "
                                  "import it into a server running that method",
    "image too large": "the image is over the limit of 20971520 bytes (DRIFTSEG_MAX_IMAGE_BYTES): send a smaller one",
    "snapshot too large": "the snapshot is over the limit of 67108864 bytes: send a smaller one",
    "not an image type": "content type 'text/plain' is not accepted: send image/jpeg, image/png, image/webp as the "
                         "raw body, or multipart/form-data with the image in the field 'image'",
    "undecodable image": "cannot decode the body as a JPEG, PNG or WebP image: it is none of them, or is cut short "
                         "(it starts with b'not an i')",
    "not a snapshot": "not a driftseg stream-state snapshot: no 'format': 'driftseg-stream-state' entry",
    "invalid stream id": "stream id 'cam 7' is invalid: use 1 to 128 characters of A-Z a-z 0-9 . _ -",
    "invalid parameter": [{"loc": ["query", "format"], "msg": "Input should be 'png', 'overlay' or 'json'",
                           "type": "literal_error", "input": "gif"}],
    "not ready": "the model is not loaded yet (or the server is shutting down): retry once GET /readyz answers 200",
    "model not loaded": "the model is not loaded yet, or the server is shutting down",
    "overloaded": "32 frames are in flight, the most this server takes (DRIFTSEG_MAX_PENDING); retry in 2 s",
    "a bug": "internal error (RuntimeError): the server log has the traceback",
    "model not stored": "model 3f2a9c0d1e8b7a65... is not in the model store /var/lib/driftseg/models: add it with "
                        "`driftseg models add CHECKPOINT` (GET /adaptation/models lists the store)",
    "no source data": "adaptation jobs need the labelled source data: set DRIFTSEG_SOURCE_DATA to a folder in the "
                      "project's data layout (images/, labels/, splits.json)",
    "job active": "stream 'cam7' has a job running already: GET /adaptation/jobs/5f0c7d2e9a8b4c1d3e6f7a8b9c0d1e2f",
    "too few frames": "stream 'cam7' has 4 recorded frames; a job needs at least 10 (DRIFTSEG_RECORD keeps them as "
                      "the stream posts frames)",
    "job not known": "job '5f0c7d2e9a8b4c1d3e6f7a8b9c0d1e2f' is not known to this server (POST "
                     "/adaptation/jobs?stream=ID starts one)",
    "body not json": "There was an error parsing the body",
    "not a model id": "model 'latest' is not a sha256 (64 lowercase hex digits)",
    "model of another architecture": "model 3f2a9c0d1e8b7a65... differs from the served model in arch, class_names "
                                     "(deeplabv3_resnet50, 19 classes, input [512, 1024]): only models adapted "
                                     "from it serve beside it",
    "nothing to roll back": "stream 'cam7' is on the base model and was never bound to another: nothing to roll "
                            "back to",
}
KEY = "X-API-Key missing or wrong (where DRIFTSEG_API_KEY is set)"
KEY_EVERYWHERE = "X-API-Key missing or wrong (only where DRIFTSEG_API_KEY_EVERYWHERE is set)"
NOT_READY = "the model is not loaded yet, or the server is shutting down (see Retry-After)"
UNEXPECTED = ("an unexpected error: a bug, whose traceback is in the server log", "a bug")


def errors(why: dict[int, tuple[str, ...]], model: type[Error] = Error, retry_after: bool = True) -> dict[int, dict]:
    """The `responses` of a route's 4xx and 5xx answers, `why` giving each status its description and
    the names of its EXAMPLES (500 is always added): the error model, the examples, and on 503 the
    Retry-After header unless `retry_after` is False."""
    out = {}
    for status, (description, *names) in {**why, 500: UNEXPECTED}.items():
        examples = {name: {"value": {"detail": EXAMPLES[name]}} for name in names}
        out[status] = {"model": model if status != 500 else Error, "description": description,
                       "content": {"application/json": {"examples": examples}}}
        if status == 503 and retry_after:
            out[status]["headers"] = headers("Retry-After")
    return out


def headers(*names: str) -> dict[str, dict]:
    """The OpenAPI `headers` of a response that sets `names`."""
    return {name: HEADERS[name] for name in names}


def secure_where_needed(schema: dict, write_key: bool, read_key: bool) -> dict:
    """The schema with the security requirements a server does not enforce taken out (the key on the
    routes that change state where `write_key`, on the others where `read_key` too): generated clients
    and schema-driven tests then send the key exactly where this server needs it. Idempotent."""
    enforced = {WRITE_SCHEME: write_key, READ_SCHEME: read_key}
    for operations in schema["paths"].values():
        for operation in operations.values():
            kept = [need for need in operation.get("security", []) if all(enforced.get(name, True) for name in need)]
            if kept:
                operation["security"] = kept
            else:
                operation.pop("security", None)
    components = schema.get("components", {})
    schemes = components.get("securitySchemes", {})
    for name, on in enforced.items():
        if not on:
            schemes.pop(name, None)
    if not schemes:
        components.pop("securitySchemes", None)
    return schema

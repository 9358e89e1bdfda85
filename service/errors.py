"""Errors of the request path, each with the HTTP status it is answered with; the detail says the fix.
The app turns them into JSON {"detail": ...} (service/app.py)."""


# a request that names no stream where the server needs one (DRIFTSEG_REQUIRE_STREAM_ID); here so that
# deps.py, which raises it, and openapi.py, which shows it, both read it
NO_STREAM = ("this server needs the stream named (DRIFTSEG_REQUIRE_STREAM_ID): send the header X-Stream-Id: <camera id> "
             "(or ?stream=<camera id>), one id per camera")


class ServiceError(Exception):
    status_code = 500
    retry_after: int | None = None  # seconds, sent as Retry-After

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class Unauthorized(ServiceError):
    status_code = 401


class NotFound(ServiceError):
    status_code = 404


class Conflict(ServiceError):
    status_code = 409


class PayloadTooLarge(ServiceError):
    status_code = 413


class UnsupportedMediaType(ServiceError):
    status_code = 415


class Unprocessable(ServiceError):
    status_code = 422


class NotReady(ServiceError):
    status_code = 503
    retry_after = 5


class Overloaded(ServiceError):
    """More /segment requests in flight than the server takes: the client should retry later."""

    status_code = 503

    def __init__(self, detail: str, retry_after: int):
        super().__init__(detail)
        self.retry_after = retry_after

"""A bounded schemathesis run: requests generated from the service's own OpenAPI schema (valid and
invalid images, stream ids, query values, keys) never get a 5xx, and every 4xx is in the error model."""
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from driftseg.service.app import create_app
from driftseg.service.schemas import Error

EXAMPLES = 40  # per operation


def test_no_generated_request_gets_a_server_error(make_settings):
    app = create_app(make_settings(max_streams=4))  # generated stream ids also exercise eviction
    with TestClient(app, raise_server_exceptions=False) as client:
        # from the served schema, not from_asgi: that would run the app's lifespan a second time
        schema = schemathesis.openapi.from_dict(client.get("/openapi.json").json())
        operations = [result.ok() for result in schema.get_all_operations()]
        assert {op.label for op in operations} >= {"POST /segment", "GET /adaptation/state", "PUT /adaptation/state",
                                                  "POST /adapt/reset", "GET /adaptation/streams", "GET /metrics",
                                                  "GET /v2/health/live", "GET /v2/health/ready"}
        for operation in operations:
            @given(case=operation.as_strategy())
            @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            def no_server_error(case):
                kwargs = case.as_transport_kwargs(base_url=str(client.base_url))
                if kwargs.get("files"):  # httpx sends only str or bytes in a form part; schemathesis may put an int there
                    kwargs["files"] = [(k, (name, v if isinstance(v, (str, bytes)) else str(v)))
                                       for k, (name, v) in kwargs["files"]]
                if isinstance(kwargs.get("data"), bytes):  # httpx's name for a raw body
                    kwargs["content"] = kwargs.pop("data")
                if not kwargs.get("cookies"):
                    kwargs.pop("cookies", None)
                response = client.request(**kwargs)
                assert response.status_code < 500, f"{response.status_code} {response.text[:200]}\n{case.as_curl_command()}"
                if response.status_code >= 400:
                    Error.model_validate(response.json())

            no_server_error()

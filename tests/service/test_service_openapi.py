"""The OpenAPI schema: stable operation ids, the one error model with examples on every 4xx and 5xx,
every header the routes set documented; /docs served without a CDN; the v2 health aliases."""
import re

import pytest
from fastapi.testclient import TestClient

from driftseg.service.app import create_app
from driftseg.service.schemas import Error

OPERATIONS = {
    ("post", "/segment"): "segment",
    ("get", "/adaptation/state"): "get_stream_state",
    ("put", "/adaptation/state"): "put_stream_state",
    ("post", "/adapt/reset"): "reset_streams",
    ("delete", "/adaptation/recording"): "delete_recording",
    ("put", "/adaptation/model"): "bind_stream_model",
    ("post", "/adaptation/model/rollback"): "rollback_stream_model",
    ("get", "/adaptation/models"): "list_models",
    ("post", "/adaptation/jobs"): "start_adaptation_job",
    ("get", "/adaptation/jobs/{job_id}"): "get_adaptation_job",
    ("get", "/adaptation/streams"): "list_streams",
    ("get", "/healthz"): "healthz",
    ("get", "/readyz"): "readyz",
    ("get", "/v2/health/live"): "v2_health_live",
    ("get", "/v2/health/ready"): "v2_health_ready",
    ("get", "/metrics"): "metrics",
}
# the headers the service sets beyond the HTTP ones (content-type, content-length, date, server)
OWN_HEADERS = {"x-stream-id", "x-frame-index", "x-shift-score", "server-timing", "retry-after", "content-disposition"}


@pytest.fixture(scope="module")
def spec(client) -> dict:
    return client.get("/openapi.json").json()


def resolve(spec: dict, schema: dict) -> dict:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def operations(spec: dict):
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            yield method, path, operation


def test_operation_ids_are_explicit_and_stable(spec):
    assert {(method, path): op["operationId"] for method, path, op in operations(spec)} == OPERATIONS


def test_every_error_answer_has_the_error_model_and_examples(spec):
    for method, path, operation in operations(spec):
        errors = {int(status): r for status, r in operation["responses"].items() if int(status) >= 400}
        assert 500 in errors, (method, path)
        for status, response in errors.items():
            where = f"{method} {path} {status}"
            content = response["content"]["application/json"]
            schema = resolve(spec, content["schema"])
            assert "detail" in schema["required"] and set(Error.model_fields) <= set(schema["properties"]), where
            assert content["examples"], where
            for example in content["examples"].values():
                Error.model_validate(example["value"])
    segment = spec["paths"]["/segment"]["post"]["responses"]
    assert {"401", "413", "415", "422", "503"} <= set(segment)
    assert "HTTPValidationError" not in spec["components"]["schemas"]  # FastAPI's own 422 model is replaced


def own_headers(response) -> set[str]:
    return {name.lower() for name in response.headers} & OWN_HEADERS


def documented(spec: dict, method: str, path: str, status: int) -> set[str]:
    response = spec["paths"][path][method]["responses"][str(status)]
    return {name.lower() for name in response.get("headers", {})}


def test_every_header_the_routes_set_is_documented(client, spec, frames, make_settings):
    frame = {"content": frames[0], "headers": {"Content-Type": "image/jpeg", "X-Stream-Id": "doc"}}
    answers = [
        ("post", "/segment", client.post("/segment?format=json", **frame)),
        ("post", "/segment", client.post("/segment?format=png", **frame)),
        ("get", "/adaptation/state", client.get("/adaptation/state?stream=doc&format=binary")),
        ("get", "/adaptation/state", client.get("/adaptation/state?stream=nobody")),
        ("post", "/segment", client.post("/segment?format=gif", **frame)),
    ]
    not_ready = TestClient(create_app(make_settings()))  # no `with`: the lifespan has not run, 503 with Retry-After
    answers.append(("post", "/segment", not_ready.post("/segment", **frame)))
    answers.append(("get", "/adaptation/streams", not_ready.get("/adaptation/streams")))
    seen = set()
    for method, path, r in answers:
        assert own_headers(r) <= documented(spec, method, path, r.status_code), (method, path, r.status_code)
        seen |= own_headers(r)
    assert seen == OWN_HEADERS


def test_error_answers_match_the_error_model(client, frames):
    answers = [
        client.get("/adaptation/state?stream=nobody"),  # 404
        client.post("/segment?format=gif", content=frames[0], headers={"Content-Type": "image/jpeg"}),  # FastAPI's 422
        client.post("/segment", content=b"x", headers={"Content-Type": "text/plain"}),  # 415
        client.get("/no/such/route"),  # Starlette's 404
    ]
    assert [r.status_code for r in answers] == [404, 422, 415, 404]
    for r in answers:
        Error.model_validate(r.json())
    assert answers[1].json()["detail"][0]["loc"] == ["query", "format"]


def test_an_unexpected_error_is_a_500_in_the_error_model(make_settings, frames):
    with TestClient(create_app(make_settings()), raise_server_exceptions=False) as client:
        client.app.state.engine.segmenter.encode = lambda *args: 1 / 0
        r = client.post("/segment", content=frames[0], headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 500 and "ZeroDivisionError" in Error.model_validate(r.json()).detail


def test_docs_are_served_without_a_cdn(client):
    page = client.get("/docs")
    assert page.status_code == 200 and "swagger" in page.text.lower()
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text) + \
        re.findall(r"""url: ?['"]([^'"]+)['"]""", page.text)
    assert assets and not [a for a in assets if "//" in a], assets  # nothing from another host
    for asset in assets:
        r = client.get(asset)
        assert r.status_code == 200 and r.content, asset
    assert client.get("/redoc").status_code == 200


def test_v2_health_aliases(client, make_settings):
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    loading = TestClient(create_app(make_settings()))  # the lifespan has not run: not ready yet
    assert loading.get("/v2/health/live").status_code == 200
    r = loading.get("/v2/health/ready")
    assert r.status_code == 503 and r.json()["ready"] is False and Error.model_validate(r.json())
    assert loading.get("/readyz").status_code == 503


def test_without_a_key_no_route_asks_for_one(spec):
    # test_service_auth.py: where a key is set, the schema asks for it exactly where the server does
    assert not [op for _, _, op in operations(spec) if op.get("security")]
    assert "securitySchemes" not in spec.get("components", {})


def test_a_405_allows_every_method_of_the_path(client):
    r = client.delete("/adaptation/state")
    assert r.status_code == 405 and r.headers["allow"] == "GET, PUT"
    Error.model_validate(r.json())


def test_the_stream_id_rule_is_in_the_schema(spec):
    import re

    for _, path, op in operations(spec):
        for param in op.get("parameters", []):
            if param["name"].lower() in ("stream", "x-stream-id"):
                pattern = re.compile(param["schema"]["pattern"])  # beside anyOf [string, null]: strings only
                assert pattern.match("cam-7.a_b") and not pattern.match("") and not pattern.match("x" * 129), path

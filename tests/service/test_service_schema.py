"""Bounded schemathesis runs: requests generated from the service's own OpenAPI schema (valid and
invalid images, stream ids, query values, keys) never get a 5xx and every 4xx is in the error model;
and against a live `driftseg serve`, the schema passes every check schemathesis has."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from driftseg.service.app import create_app
from driftseg.service.schemas import Error
from service_util import start, stop

HERE = Path(__file__).parent
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


LIVE_EXAMPLES = 30  # per operation and phase: about 15 s against the tiny checkpoint


@pytest.mark.slow
@pytest.mark.parametrize("key", [None, "k3y-for-schemathesis"], ids=["open", "keyed"])
def test_the_served_schema_matches_a_live_server_under_every_check(ckpt_file, tmp_path, key):
    """`schemathesis run --checks all` against `driftseg serve` (open, and with DRIFTSEG_API_KEY set): the
    schema says what the server takes and answers: stream ids, where the key is needed, error bodies, headers,
    the Allow header of a 405. tests/service/schemathesis.toml and schemathesis_hooks.py say what it cannot."""
    settings = {"DRIFTSEG_CHECKPOINT": str(ckpt_file), "DRIFTSEG_MAX_STREAMS": "4"}
    if key:
        settings["DRIFTSEG_API_KEY"] = key
    proc, client = start(tmp_path / "state", tmp_path / "serve.log", **settings)
    try:
        env = {**os.environ, "PYTHONPATH": str(HERE), "SCHEMATHESIS_HOOKS": "schemathesis_hooks"}
        run = subprocess.run(
            [str(Path(sys.executable).with_name("schemathesis")), "--config-file", str(HERE / "schemathesis.toml"),
             "run", f"{client.base_url}/openapi.json", "--checks", "all", "-n", str(LIVE_EXAMPLES),
             "--generation-deterministic", *(["--header", f"X-API-Key: {key}"] if key else [])],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)  # its cache in tmp_path
    finally:
        client.close()
        stop(proc)
    assert run.returncode == 0 and " passed" in run.stdout, run.stdout[-6000:]
    assert "Traceback" not in (tmp_path / "serve.log").read_text()

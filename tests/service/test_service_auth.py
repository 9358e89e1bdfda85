"""Access control: DRIFTSEG_API_KEY guards the routes that change a stream's state, and with
DRIFTSEG_API_KEY_EVERYWHERE the other stream routes too; health, readiness and metrics stay open."""
import pytest
from fastapi.testclient import TestClient

from driftseg.service.app import create_app
from driftseg.service.settings import load_settings
from service_util import assert_same, exported_state

KEY = "s3cret-key"
JPEG = {"Content-Type": "image/jpeg"}
GOOD = {"X-API-Key": KEY}
BAD_KEYS = [{}, {"X-API-Key": ""}, {"X-API-Key": "wrong"}, {"X-API-Key": KEY + "x"}, {"X-API-Key": KEY[:-1]},
            {"X-API-Key": "clé".encode()}]  # non-ASCII: a mismatch, not compare_digest's TypeError


def segment(client, frame, stream="cam", headers=None):
    return client.post("/segment", params={"stream": stream}, content=frame, headers={**JPEG, **(headers or {})})


def put_state(client, data, stream="cam", headers=None):
    return client.put("/adaptation/state", params={"stream": stream}, content=data,
                      headers={"Content-Type": "application/octet-stream", **(headers or {})})


def assert_401(r):
    assert r.status_code == 401, r.text
    assert "X-API-Key" in r.json()["detail"]
    assert KEY not in r.text


def assert_open(client):
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    assert client.get("/metrics").status_code == 200


def test_no_key_set_leaves_every_route_open(make_settings, frames):
    with TestClient(create_app(make_settings())) as client:
        assert segment(client, frames[0]).status_code == 200
        data = client.get("/adaptation/state?stream=cam&format=binary").content
        assert put_state(client, data).status_code == 200
        assert client.get("/adaptation/streams").status_code == 200
        assert client.post("/adapt/reset?stream=cam").status_code == 200
        assert_open(client)


def test_key_guards_reset_and_import(make_settings, frames):
    with TestClient(create_app(make_settings(api_key=KEY))) as client:
        # segment and the GET routes stay open without the key
        assert segment(client, frames[0]).status_code == 200
        assert segment(client, frames[1]).status_code == 200
        r = client.get("/adaptation/state?stream=cam&format=binary")
        assert r.status_code == 200
        saved, before = r.content, exported_state(client, "cam")
        assert client.get("/adaptation/state?stream=cam").json()["frames"] == 2
        assert client.get("/adaptation/streams").status_code == 200
        assert_open(client)

        for headers in BAD_KEYS:
            assert_401(client.post("/adapt/reset?stream=cam", headers=headers))
            assert_401(client.post("/adapt/reset?all=true", headers=headers))
            assert_401(put_state(client, saved, headers=headers))
            assert_401(put_state(client, saved, stream="other", headers=headers))
        r = client.post("/adapt/reset?stream=cam")
        assert "needs the header X-API-Key" in r.json()["detail"]
        r = client.post("/adapt/reset?stream=cam", headers={"X-API-Key": "wrong"})
        assert "does not match" in r.json()["detail"]
        assert_same(exported_state(client, "cam"), before)  # nothing changed
        assert client.get("/adaptation/state?stream=other").status_code == 404

        assert put_state(client, saved, stream="other", headers=GOOD).status_code == 200
        assert client.post("/adapt/reset?stream=cam", headers={"x-api-key": KEY}).json() == {"reset": ["cam"]}
        assert client.post("/adapt/reset?all=true", headers=GOOD).json() == {"reset": ["other"]}
        text = client.get("/metrics").text
        assert 'route="/adapt/reset",status="401"' in text


def test_key_everywhere_guards_segment_and_reads(make_settings, frames):
    with TestClient(create_app(make_settings(api_key=KEY, api_key_everywhere=True))) as client:
        for headers in BAD_KEYS:
            assert_401(segment(client, frames[0], headers=headers))
            assert_401(client.get("/adaptation/state?stream=cam", headers=headers))
            assert_401(client.get("/adaptation/state?stream=cam&format=binary", headers=headers))
            assert_401(client.get("/adaptation/streams", headers=headers))
            assert_401(client.post("/adapt/reset?stream=cam", headers=headers))
            assert_401(put_state(client, b"x", headers=headers))
        assert client.get("/adaptation/streams", headers=GOOD).json()["streams"] == []  # no frame got through
        assert_open(client)

        assert segment(client, frames[0], headers=GOOD).headers["X-Frame-Index"] == "1"
        assert client.get("/adaptation/state?stream=cam", headers=GOOD).json()["frames"] == 1
        saved = client.get("/adaptation/state?stream=cam&format=binary", headers=GOOD).content
        assert [s["stream"] for s in client.get("/adaptation/streams", headers=GOOD).json()["streams"]] == ["cam"]
        assert put_state(client, saved, stream="copy", headers=GOOD).status_code == 200
        assert client.post("/adapt/reset?all=true", headers=GOOD).json() == {"reset": ["cam", "copy"]}


def test_key_is_checked_before_readiness_and_the_body(make_settings):
    client = TestClient(create_app(make_settings(api_key=KEY, api_key_everywhere=True)))  # lifespan not run
    assert_401(client.post("/adapt/reset?stream=cam"))
    assert_401(segment(client, b"\xff" * 300_001))  # over the byte limit, but refused for the key first
    assert client.post("/adapt/reset?stream=cam", headers=GOOD).status_code == 503
    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").status_code == 200


def test_openapi_declares_the_key_where_the_settings_need_it(make_settings):
    writes = (("/adapt/reset", "post"), ("/adaptation/state", "put"))
    reads = (("/segment", "post"), ("/adaptation/state", "get"), ("/adaptation/streams", "get"))
    for everywhere in (False, True):
        spec = TestClient(create_app(make_settings(api_key=KEY, api_key_everywhere=everywhere))).get("/openapi.json").json()
        schemes = spec["components"]["securitySchemes"]
        assert set(schemes) == ({"APIKey", "APIKeyEverywhere"} if everywhere else {"APIKey"})
        for scheme in schemes.values():
            assert scheme == {**scheme, "type": "apiKey", "in": "header", "name": "X-API-Key"}
        paths = spec["paths"]
        for path, method in writes + reads:
            wanted = [{"APIKey": []}] if (path, method) in writes else [{"APIKeyEverywhere": []}] if everywhere else None
            assert paths[path][method].get("security") == wanted, (path, method, everywhere)
            assert "401" in paths[path][method]["responses"]
        for path in ("/healthz", "/readyz", "/metrics"):
            assert "security" not in paths[path]["get"]


def test_key_settings(ckpt_file, monkeypatch):
    assert load_settings(checkpoint=ckpt_file).api_key is None
    monkeypatch.setenv("DRIFTSEG_API_KEY", KEY)
    monkeypatch.setenv("DRIFTSEG_API_KEY_EVERYWHERE", "true")
    s = load_settings(checkpoint=ckpt_file)
    assert s.api_key.get_secret_value() == KEY and s.api_key_everywhere is True
    assert KEY not in repr(s) and KEY not in str(s.model_dump())

    monkeypatch.delenv("DRIFTSEG_API_KEY")
    with pytest.raises(ValueError, match="DRIFTSEG_API_KEY is not"):
        load_settings(checkpoint=ckpt_file)
    monkeypatch.setenv("DRIFTSEG_API_KEY", "  ")
    with pytest.raises(ValueError, match="DRIFTSEG_API_KEY .*empty") as e:
        load_settings(checkpoint=ckpt_file)
    assert "got" not in str(e.value)  # the value of a secret setting is never repeated
    for bad in (" padded-key ", "clé-secrète", "tab\tkey"):
        with pytest.raises(ValueError, match="printable ASCII") as e:
            load_settings(checkpoint=ckpt_file, api_key=bad, api_key_everywhere=False)
        assert bad not in str(e.value)

"""Several models in one server (service/model_store.py): a stream bound to a model of the store is served by
that model's weights, the binding survives a restart, an eviction and a move to another replica, rolls back,
and a model that cannot serve beside the base is refused."""
import copy
import io
import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from driftseg import cli
from driftseg.models.checkpoint import file_sha256, save_checkpoint
from driftseg.service.app import create_app
from driftseg.service.model_store import ModelStore

KEY = "k3y-for-tests"
WRITE = {"X-API-Key": KEY}


@pytest.fixture(scope="module")
def variant_file(tiny_ckpt, tmp_path_factory):
    """The tiny checkpoint with other classifier weights: the same network shape, other labels."""
    ckpt = copy.deepcopy(tiny_ckpt)
    generator = torch.Generator().manual_seed(1)
    for name, weight in ckpt.weights.items():
        if "classifier" in name and weight.is_floating_point():
            ckpt.weights[name] = weight + torch.randn(weight.shape, generator=generator) * weight.std()
    path = tmp_path_factory.mktemp("variant") / "variant.pt"
    save_checkpoint(ckpt, path)
    return path


@pytest.fixture(scope="module")
def other_size_file(tiny_ckpt, tmp_path_factory):
    ckpt = copy.deepcopy(tiny_ckpt)
    ckpt.input_size = [16, 24]
    path = tmp_path_factory.mktemp("other") / "other-size.pt"
    save_checkpoint(ckpt, path)
    return path


def labels(client, stream: str, frame: bytes) -> np.ndarray:
    r = client.post("/segment?format=png", content=frame, headers={"Content-Type": "image/jpeg", "X-Stream-Id": stream})
    assert r.status_code == 200, r.text
    return np.array(Image.open(io.BytesIO(r.content)))


def state(client, stream: str) -> dict:
    r = client.get("/adaptation/state", params={"stream": stream})
    assert r.status_code == 200, r.text
    return r.json()


def bind(client, stream: str, model: str):
    return client.put("/adaptation/model", params={"stream": stream}, json={"model": model}, headers=WRITE)


def test_a_bound_stream_is_served_by_its_model_and_rolls_back(make_settings, frames, variant_file, ckpt_file, tmp_path):
    sha = ModelStore(tmp_path / "models").add(variant_file, {"note": "test"})
    base = file_sha256(ckpt_file)
    # the independent computation: a server whose base is the variant, and one on the base
    with TestClient(create_app(make_settings(checkpoint=variant_file, state_dir=tmp_path / "v"))) as alone:
        expected = [labels(alone, "cam", f) for f in frames[:2]]
    settings = make_settings(model_store=tmp_path / "models", api_key=KEY)
    with TestClient(create_app(settings)) as client:
        on_base = labels(client, "other", frames[0])
        assert not np.array_equal(on_base, expected[0])  # the variant labels differently
        labels(client, "cam1", frames[0])
        unkeyed = client.put("/adaptation/model", params={"stream": "cam1"}, json={"model": sha})
        assert unkeyed.status_code == 401  # binding needs the key
        r = bind(client, "cam1", sha)
        assert r.status_code == 200, r.text
        assert (r.json()["model"], r.json()["previous_models"], r.json()["frames"]) == (sha, [base], 0)
        got = [labels(client, "cam1", f) for f in frames[:2]]  # from the variant's source state, as alone
        assert all(np.array_equal(g, e) for g, e in zip(got, expected))
        assert state(client, "other")["model"] == base  # other streams stay on the base

        listed = client.get("/adaptation/models").json()
        assert listed["base"] == base and [(m["sha256"], m["resident"], m["provenance"]["note"])
                                           for m in listed["models"]] == [(sha, True, "test")]

        assert client.post("/adaptation/model/rollback", params={"stream": "cam1"}, headers=WRITE).json()["model"] == base
        assert state(client, "cam1")["previous_models"] == []
        r = client.post("/adaptation/model/rollback", params={"stream": "cam1"}, headers=WRITE)
        assert r.status_code == 409 and "nothing to roll back" in r.json()["detail"]
        assert np.array_equal(labels(client, "fresh", frames[0]), on_base)


def test_the_binding_survives_a_restart_an_eviction_and_a_reset(make_settings, frames, variant_file, tmp_path):
    sha = ModelStore(tmp_path / "models").add(variant_file)
    settings = make_settings(model_store=tmp_path / "models", max_streams=1)
    with TestClient(create_app(settings)) as client:
        assert bind(client, "cam1", sha).status_code == 200
        first = labels(client, "cam1", frames[0])
        labels(client, "cam2", frames[1])  # one stream in memory: cam1 is snapshotted and evicted
        assert state(client, "cam1")["model"] == sha
        assert client.post("/adapt/reset", params={"stream": "cam1"}).status_code == 200
        after_reset = state(client, "cam1")
        assert (after_reset["model"], after_reset["frames"]) == (sha, 0)  # the adaptation goes, the model stays
    with TestClient(create_app(settings)) as client:  # a restart on the same state dir
        assert state(client, "cam1")["model"] == sha
        assert np.array_equal(labels(client, "cam1", frames[0]), first)


def test_the_binding_moves_to_another_replica_that_has_the_model(make_settings, frames, variant_file, tmp_path):
    sha = ModelStore(tmp_path / "models").add(variant_file)
    a = make_settings(model_store=tmp_path / "models", state_dir=tmp_path / "a")
    with TestClient(create_app(a)) as client:
        bind(client, "cam1", sha)
        labels(client, "cam1", frames[0])
        snapshot = client.get("/adaptation/state", params={"stream": "cam1", "format": "binary"}).content
    b = make_settings(model_store=tmp_path / "models", state_dir=tmp_path / "b")
    with TestClient(create_app(b)) as client:
        r = client.put("/adaptation/state", params={"stream": "cam1"}, content=snapshot)
        assert r.status_code == 200 and (r.json()["model"], r.json()["frames"]) == (sha, 1)
    c = make_settings(model_store=tmp_path / "empty", state_dir=tmp_path / "c")
    with TestClient(create_app(c)) as client:
        r = client.put("/adaptation/state", params={"stream": "cam1"}, content=snapshot)
        assert r.status_code == 404 and "driftseg models add" in r.json()["detail"]
        assert client.get("/adaptation/state", params={"stream": "cam1"}).status_code == 404  # nothing changed


def test_models_that_cannot_serve_are_refused_and_change_nothing(make_settings, frames, other_size_file, tmp_path):
    sha = ModelStore(tmp_path / "models").add(other_size_file)
    with TestClient(create_app(make_settings(model_store=tmp_path / "models"))) as client:
        labels(client, "cam1", frames[0])
        r = bind(client, "cam1", sha)
        assert r.status_code == 409 and "input_size" in r.json()["detail"]
        r = bind(client, "cam1", "0" * 64)
        assert r.status_code == 404 and "not in the model store" in r.json()["detail"]
        assert bind(client, "cam1", "latest").status_code == 422
        after = state(client, "cam1")
        assert after["frames"] == 1 and after["previous_models"] == []


def test_at_most_max_models_stay_in_memory(make_settings, frames, tiny_ckpt, tmp_path):
    store = ModelStore(tmp_path / "models")
    shas = []
    for seed in (1, 2):
        ckpt = copy.deepcopy(tiny_ckpt)
        ckpt.extra["seed"] = seed  # another file, the same network
        save_checkpoint(ckpt, tmp_path / f"m{seed}.pt")
        shas.append(store.add(tmp_path / f"m{seed}.pt"))
    with TestClient(create_app(make_settings(model_store=tmp_path / "models", max_models=1))) as client:
        for i, sha in enumerate(shas):
            bind(client, f"cam{i}", sha)
            labels(client, f"cam{i}", frames[0])
        resident = {m["sha256"]: m["resident"] for m in client.get("/adaptation/models").json()["models"]}
        assert resident == {shas[0]: False, shas[1]: True}
        labels(client, "cam0", frames[1])  # loaded again when its stream needs it
        assert state(client, "cam0")["model"] == shas[0]


def test_engines_with_one_graph_refuse_binding(make_settings, tmp_path) -> None:
    assert make_settings(compile=True).binding_refusal.startswith("binding a stream to another model needs")
    assert make_settings().binding_refusal is None


def test_models_add_and_list_on_the_command_line(variant_file, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("DRIFTSEG_STATE_DIR", str(tmp_path / "state"))  # the store serve would use: state dir/models
    cli.main(["models", "add", str(variant_file), "--note", "from a test"])
    sha = capsys.readouterr().out.strip()
    assert sha == file_sha256(variant_file) and (tmp_path / "state" / "models" / f"{sha}.pt").is_file()
    cli.main(["models", "list", "--store", str(tmp_path / "state" / "models")])
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["sha256"], r["note"], r["source"]) for r in listed] == [(sha, "from a test", str(variant_file.resolve()))]
    with pytest.raises(SystemExit) as e:
        cli.main(["models", "add", str(tmp_path / "state" / "models" / f"{sha}.json")])
    assert e.value.code == 2 and "is not a driftseg checkpoint" in capsys.readouterr().err

"""Helpers for the service tests (imported by them; pytest adds this folder to sys.path)."""
import io

import torch


def exported_state(client, stream: str) -> dict:
    """The stream's state dict, through GET /adaptation/state?format=binary."""
    r = client.get("/adaptation/state", params={"stream": stream, "format": "binary"})
    assert r.status_code == 200, r.text
    return torch.load(io.BytesIO(r.content), weights_only=True)["state"]


def assert_same(a, b, where="state"):
    """Equal state dicts: same keys, equal tensors and values, recursively."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: {sorted(a)} != {sorted(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"

"""models/checkpoint.py: the round trip, and refusal of every malformed or unsafe file."""
import math
import os
from dataclasses import asdict, fields
from pathlib import Path

import pytest
import torch

from driftseg.models import checkpoint as ckpt_mod
from driftseg.models.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    Checkpoint,
    compact_weights,
    load_checkpoint,
    save_checkpoint,
)
from driftseg.models.registry import create_model

ARCH = "lraspp_mobilenet_v3_large"
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
NAMES = ["road", "car", "sky"]


pytestmark = pytest.mark.usefixtures("one_thread")


def fp16_exact(model: torch.nn.Module) -> torch.nn.Module:
    """Round the float weights (not the BN statistics) to what fp16 can hold, as the checkpoint stores them."""
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point() and not name.endswith(("running_mean", "running_var")):
                t.copy_(t.half().float())
    return model


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    m = create_model(ARCH, len(NAMES), MEAN, STD)
    m.train()
    with torch.no_grad():  # move the BN statistics away from their 0 / 1 initial values
        for _ in range(2):
            m(torch.rand(2, 3, 32, 48) * 0.8 + 0.1)
    return fp16_exact(m.eval())


def make_ckpt(model) -> Checkpoint:
    return Checkpoint(
        arch=ARCH, arch_kwargs={}, class_names=list(NAMES), palette=[[1, 2, 3], [4, 5, 6], [7, 8, 9]],
        mean=list(MEAN), std=list(STD), input_size=[32, 48], weights=compact_weights(model.state_dict()),
        source_amplitude=torch.rand(3, 6, 6) + 0.5, source_amplitude_beta=0.1,
        config={"iters": 3, "lr": 1e-3}, data={"root": "/x", "frames": 4}, metrics={"miou": 12.5},
        git_commit="abc123", extra={"calibration": [1.0, 2.0]},
    )


@pytest.fixture(scope="module")
def payload(model) -> dict:
    """A valid payload as save_checkpoint writes it, for tests to break one field at a time."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, **asdict(make_ckpt(model))}


def write(payload: dict, path: Path) -> Path:
    torch.save(payload, path)
    return path


# ---------------------------------------------------------------- round trip


def test_round_trip(model, tmp_path) -> None:
    original = make_ckpt(model)
    path = tmp_path / "sub" / "model.pt"  # parent folders are created
    save_checkpoint(original, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]  # no temporary file left behind
    loaded = load_checkpoint(path)
    for f in fields(Checkpoint):
        if f.name not in ("weights", "source_amplitude"):
            assert getattr(loaded, f.name) == getattr(original, f.name), f.name
    assert loaded.num_classes == 3
    torch.testing.assert_close(loaded.source_amplitude, original.source_amplitude, rtol=0, atol=0)
    state = model.state_dict()
    assert loaded.weights.keys() == state.keys()
    for k, v in loaded.weights.items():
        # weights stored fp16, BN statistics fp32, counters stay integers; values equal
        if k.endswith(("running_mean", "running_var")):
            assert v.dtype == torch.float32
        elif state[k].is_floating_point():
            assert v.dtype == torch.float16
        else:
            assert v.dtype == state[k].dtype
        assert torch.equal(v.to(state[k].dtype), state[k]), k

    rebuilt = loaded.build_model()
    assert not rebuilt.training
    assert all(p.dtype == torch.float32 for p in rebuilt.parameters())
    x = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x), rtol=0, atol=0)


def test_compact_weights_rounds_only_float_weights() -> None:
    state = {
        "conv.weight": torch.tensor([1.0 + 2**-12, 3.0]),
        "bn.running_mean": torch.tensor([1.0 + 2**-20]),
        "bn.running_var": torch.tensor([2.0 + 2**-20]),
        "bn.num_batches_tracked": torch.tensor(7),
    }
    out = compact_weights(state)
    assert out["conv.weight"].dtype == torch.float16
    assert out["conv.weight"].tolist() == [1.0, 3.0]  # 1 + 2^-12 is not an fp16 value
    assert out["bn.running_mean"].item() == 1.0 + 2**-20 and out["bn.running_mean"].dtype == torch.float32
    assert out["bn.running_var"].item() == 2.0 + 2**-20
    assert out["bn.num_batches_tracked"].dtype == torch.int64 and out["bn.num_batches_tracked"].item() == 7
    out["bn.running_mean"] += 1  # a copy, not a view of the live model's buffers
    assert state["bn.running_mean"].item() == 1.0 + 2**-20


def test_git_commit_from_environment(monkeypatch) -> None:
    monkeypatch.setenv("DRIFTSEG_GIT_COMMIT", "feedbeef")
    assert ckpt_mod.git_commit() == "feedbeef"


# ---------------------------------------------------------------- refusals


def test_missing_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "absent.pt")


@pytest.mark.parametrize("content", [b"not a checkpoint at all", b"# README\n\nA text file, not a checkpoint.\n"])
def test_garbage_file(tmp_path, content) -> None:
    (tmp_path / "junk.pt").write_bytes(content)
    with pytest.raises(ValueError, match="junk.pt is not a driftseg checkpoint") as info:
        load_checkpoint(tmp_path / "junk.pt")
    assert "weights_only=False" not in str(info.value)  # torch's advice to load unsafely is not passed on


@pytest.mark.parametrize("fmt", ["other-format", None])
def test_wrong_format_tag(payload, tmp_path, fmt) -> None:
    bad = {**payload, "format": fmt}
    with pytest.raises(ValueError, match="not a driftseg checkpoint.*'format'"):
        load_checkpoint(write(bad, tmp_path / "c.pt"))


def test_not_a_dict(tmp_path) -> None:
    with pytest.raises(ValueError, match="not a driftseg checkpoint"):
        load_checkpoint(write([1, 2, 3], tmp_path / "c.pt"))


def test_wrong_format_version(payload, tmp_path) -> None:
    with pytest.raises(ValueError, match=f"format version 99, expected {FORMAT_VERSION}"):
        load_checkpoint(write({**payload, "format_version": 99}, tmp_path / "c.pt"))


@pytest.mark.parametrize("name", ["arch", "class_names", "weights", "source_amplitude", "metrics", "extra"])
def test_missing_field(payload, tmp_path, name) -> None:
    bad = {k: v for k, v in payload.items() if k != name}
    with pytest.raises(ValueError, match=f"lacks the field '{name}'"):
        load_checkpoint(write(bad, tmp_path / "c.pt"))


@pytest.mark.parametrize(("name", "value", "got"), [
    ("arch", 3, "int"),
    ("class_names", "road", "str"),
    ("weights", [1, 2], "list"),
    ("source_amplitude", [[1.0]], "list"),
    ("source_amplitude_beta", "0.1", "str"),
    ("config", None, "NoneType"),
    ("git_commit", 5, "int"),
])
def test_wrong_field_type(payload, tmp_path, name, value, got) -> None:
    with pytest.raises(ValueError, match=f"field '{name}' should be .*, got {got}"):
        load_checkpoint(write({**payload, name: value}, tmp_path / "c.pt"))


@pytest.mark.parametrize("shape", [(3, 6), (2, 6, 6), (3, 6, 4), (3, 5, 5), (1, 3, 6, 6)])
def test_wrong_source_amplitude_shape(payload, tmp_path, shape) -> None:
    with pytest.raises(ValueError, match=r"source_amplitude should be \[3, 2b, 2b\]"):
        load_checkpoint(write({**payload, "source_amplitude": torch.ones(shape)}, tmp_path / "c.pt"))


@pytest.mark.parametrize("bad_value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("key", ["net.classifier.high_classifier.weight", "net.backbone.1.block.0.1.running_var"])
def test_non_finite_weight(payload, tmp_path, key, bad_value) -> None:
    weights = dict(payload["weights"])
    assert key in weights
    w = weights[key].clone()
    w.view(-1)[0] = bad_value
    weights[key] = w
    with pytest.raises(ValueError, match="non-finite") as err:
        load_checkpoint(write({**payload, "weights": weights}, tmp_path / "c.pt"))
    assert key in str(err.value)


@pytest.mark.parametrize(("field", "value", "match"), [
    ("palette", [[1, 2, 3]], "palette"),
    ("palette", [[1, 2], [3, 4], [5, 6]], "palette"),
    ("mean", [0.5, 0.5], "mean and std"),
    ("std", [0.5] * 4, "mean and std"),
    ("input_size", [32], "input_size"),
    ("input_size", [0, 48], "input_size"),
])
def test_inconsistent_metadata(payload, tmp_path, field, value, match) -> None:
    with pytest.raises(ValueError, match=match):
        load_checkpoint(write({**payload, field: value}, tmp_path / "c.pt"))


def test_missing_weight_does_not_fit(payload, tmp_path) -> None:
    key = "net.classifier.high_classifier.weight"
    weights = {k: v for k, v in payload["weights"].items() if k != key}
    with pytest.raises(ValueError, match="do not fit architecture") as err:
        load_checkpoint(write({**payload, "weights": weights}, tmp_path / "c.pt"))
    assert key in str(err.value)


def test_unexpected_weight_does_not_fit(payload, tmp_path) -> None:
    weights = {**payload["weights"], "net.extra_head.weight": torch.zeros(2, 2)}
    with pytest.raises(ValueError, match="do not fit architecture") as err:
        load_checkpoint(write({**payload, "weights": weights}, tmp_path / "c.pt"))
    assert "net.extra_head.weight" in str(err.value)


def test_other_architecture_does_not_fit(payload, tmp_path) -> None:
    with pytest.raises(ValueError, match="do not fit architecture 'deeplabv3_mobilenet_v3_large'"):
        load_checkpoint(write({**payload, "arch": "deeplabv3_mobilenet_v3_large"}, tmp_path / "c.pt"))


def test_wrong_shaped_weight_does_not_fit(payload, tmp_path) -> None:
    bad = {**payload, "class_names": NAMES + ["extra"], "palette": payload["palette"] + [[0, 0, 0]]}
    with pytest.raises(ValueError, match="do not fit.*wrong shape"):
        load_checkpoint(write(bad, tmp_path / "c.pt"))


def test_non_tensor_weight(payload, tmp_path) -> None:
    weights = {**payload["weights"], "net.classifier.high_classifier.bias": 0.5}
    with pytest.raises(ValueError, match="should all be tensors"):
        load_checkpoint(write({**payload, "weights": weights}, tmp_path / "c.pt"))


class _Payload:
    """Unpickling this runs os.mkdir(marker): stands in for arbitrary code in a hostile file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_pickled_code_is_refused_without_running(payload, tmp_path) -> None:
    marker = tmp_path / "code_ran"
    path = write({**payload, "extra": {"hook": _Payload(marker)}}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="is not a driftseg checkpoint") as info:
        load_checkpoint(path)
    assert "weights_only=False" not in str(info.value)
    assert not marker.exists(), "loading the checkpoint ran code from the file"
    # the file really does carry code: an unsafe load runs it
    torch.load(path, weights_only=False)
    assert marker.is_dir()

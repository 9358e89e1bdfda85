"""bench/precision.py: every precision on the same frames, compared with fp32 in the same run."""
import numpy as np
import pytest
import torch
from synthetic_frames import domain_frames

from driftseg.adapters.pipeline import Pipeline
from driftseg.adapters.spec import parse_method
from driftseg.bench.precision import markdown_table, measure


def _stream(n: int, seed: int) -> list:
    frames = (domain_frames(n, seed=seed) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    labels = np.random.default_rng(seed).integers(0, 11, size=frames.shape[:3], dtype=np.uint8)
    return list(zip(frames, labels))


def test_fp32_against_itself_and_bf16(tiny_ckpt) -> None:
    result = measure(tiny_ckpt, {"a": _stream(3, 0)}, ["source", "auto"], ["fp32", "bf16"], torch.device("cpu"), 11)
    for method in ("source", "auto"):
        rows = result[method]["a"]
        assert list(rows) == ["fp32", "bf16"]  # fp32 once, first
        assert rows["fp32"]["same_labels"] == 100.0
        assert 50.0 <= rows["bf16"]["same_labels"] <= 100.0
        assert all(r["ms_per_frame"] > 0 and 0 <= r["miou"] <= 100 for r in rows.values())
    lines = markdown_table(result).splitlines()
    assert len(lines) == 2 + 4 and "| `auto` | a | bf16 |" in lines[-1]


def test_bf16_runs_the_network_in_bf16_and_keeps_states_in_fp32(tiny_ckpt) -> None:
    fp32, bf16 = (Pipeline(tiny_ckpt, parse_method("auto"), precision=p) for p in ("fp32", "bf16"))
    frame = domain_frames(1, seed=4)
    (_, (s32,)), (_, (s16,)) = fp32.step(frame, [fp32.new_state()]), bf16.step(frame, [bf16.new_state()])
    assert s16.parts["norm"].stats.dtype == torch.float32 and s16.parts["lc"].proto_sum.dtype == torch.float32
    assert not torch.equal(s16.parts["norm"].stats, s32.parts["norm"].stats)  # the convolutions did run in bf16
    torch.testing.assert_close(s16.parts["norm"].stats, s32.parts["norm"].stats, rtol=0.1, atol=0.1)


def test_precision_is_checked(tiny_ckpt) -> None:
    with pytest.raises(ValueError, match="precision must be one of"):
        Pipeline(tiny_ckpt, parse_method("source"), precision="fp8")
    with pytest.raises(ValueError, match="tent"):
        Pipeline(tiny_ckpt, parse_method("tent"), precision="bf16")

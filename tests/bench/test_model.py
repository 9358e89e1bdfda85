"""bench/model.py: every method timed at every batch size, throughput consistent with the time."""
import pytest
import torch
from synthetic_frames import domain_frames

from driftseg.bench.model import build, engine_tables, markdown_table, measure


def test_throughput_at_each_batch_size(tiny_ckpt, tmp_path) -> None:
    frame = domain_frames(1, seed=0)
    pipelines = build(tiny_ckpt, ["source", "auto"], ["torch"], torch.device("cpu"), tmp_path)
    result = measure(pipelines, frame, [1, 3], steps=2, warmup=1)
    assert list(result) == [1, 3]
    for b, row in result.items():
        assert list(row) == ["source", "auto"]
        for t in row.values():
            assert t["ms_per_batch"] > 0
            # frames/s is rounded to 0.1 and ms/batch to 0.001: a slow step leaves only the rounding
            assert t["frames_per_s"] == pytest.approx(b / (t["ms_per_batch"] / 1000), rel=1e-3, abs=0.051)
    lines = markdown_table(result, ["source", "auto"]).splitlines()
    assert len(lines) == 4 and lines[2].startswith("| 1 |") and lines[3].startswith("| 3 |")
    ratio = result[3]["auto"]["ms_per_batch"] / result[3]["source"]["ms_per_batch"]
    assert lines[3].endswith(f"| {ratio:.2f} |")


def test_engines_label_their_pipelines(tiny_ckpt, tmp_path) -> None:
    pipelines = build(tiny_ckpt, ["auto"], ["torch", "compiled"], torch.device("cpu"), tmp_path)
    assert list(pipelines) == ["auto", "auto (compiled)"]
    assert not pipelines["auto"].pad_batches and pipelines["auto (compiled)"].pad_batches


def test_engine_tables_compare_each_engine_with_its_own_frozen_model() -> None:
    def timing(ms):
        return {"ms_per_batch": ms, "frames_per_s": 0.0}

    result = {1: {"source": timing(10.0), "source (onnx)": timing(5.0), "auto": timing(12.0), "auto (onnx)": timing(7.5)},
              8: {"source": timing(80.0), "source (onnx)": timing(32.0), "auto": timing(88.0), "auto (onnx)": timing(48.0)}}
    text = engine_tables(result, ["source", "auto"], ["torch", "onnx"])
    torch_part, onnx_part = text.split("**onnx**")
    assert "| `auto` | 12.0 | 1.20 | 11.0 | 1.10 |" in torch_part
    assert "| `auto` | 7.5 | 1.50 | 6.0 | 1.50 |" in onnx_part and "| `source` | 5.0 | 1.00 | 4.0 | 1.00 |" in onnx_part


def test_pooled_pipelines_are_timed_beside_their_own_and_refusing_methods_left_out(tiny_ckpt, tmp_path) -> None:
    frame = domain_frames(1, seed=0)
    pipelines = build(tiny_ckpt, ["source", "auto", "auto(guard=2)"], ["torch"], torch.device("cpu"), tmp_path,
                      pool_slots=3)
    assert list(pipelines) == ["source", "source [pool]", "auto", "auto [pool]", "auto(guard=2)"]
    result = measure(pipelines, frame, [1, 3], steps=2, warmup=1)
    pool = pipelines["auto [pool]"].pool
    assert [pool.state(slot).frames for slot in range(3)] == [3, 3, 3]  # the batch of 3: one frame per slot
    text = engine_tables(result, ["source", "auto"], ["torch"])
    ratio = result[3]["auto [pool]"]["ms_per_batch"] / result[3]["source"]["ms_per_batch"]
    assert f"| `auto` in a pool | {result[1]['auto [pool]']['ms_per_batch']:.1f} |" in text
    assert text.rstrip().endswith(f"| {ratio:.2f} |")

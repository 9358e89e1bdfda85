"""bench/model.py: every method timed at every batch size, throughput consistent with the time."""
import pytest
import torch
from synthetic_frames import domain_frames

from driftseg.bench.model import build, markdown_table, measure


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

"""bench/training.py: train source's iteration timed under speed-only settings, on real frames at toy size."""
import json

import pytest

from driftseg.bench import training


def test_every_setting_and_thread_count_gets_a_row(tmp_path, one_thread):
    out = tmp_path / "training.json"
    training.main(["--settings", "fp32", "channels_last", "--threads", "1", "2", "--input-size", "32", "48",
                   "--crop", "24", "32", "--batch-size", "2", "--steps", "2", "--warmup", "1", "--device", "cpu",
                   "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [(r["setting"], r["threads"]) for r in rows] == [("fp32", 1), ("channels_last", 1), ("fp32", 2),
                                                            ("channels_last", 2)]
    for r in rows:
        assert r["step_s"] > 0 and r["augment_s"] > 0
        assert r["it_per_s"] == pytest.approx(1 / (r["step_s"] + r["augment_s"]), rel=0.01)
    assert rows[0]["x_first"] == 1.0 and rows[2]["x_first"] == 1.0
    assert "| `channels_last` | 2 |" in out.with_suffix(".md").read_text()

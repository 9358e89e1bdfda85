"""bench/speed.py: round-robin timing gives every method the same frames and ratios to source."""
import torch
from synthetic_frames import domain_frames

from bench.speed import measure, with_ratios


def test_every_method_timed_on_every_frame_after_warm_up(tiny_ckpt) -> None:
    frames = [f[None] for f in domain_frames(6, seed=0)]
    timings = with_ratios(measure(tiny_ckpt, frames, ["source", "ptbn", "auto"], torch.device("cpu"), warmup=2))
    assert list(timings) == ["source", "ptbn", "auto"]
    for t in timings.values():
        assert t["frames"] == 4 and t["median_ms"] > 0 and t["mean_ms"] > 0
    assert timings["source"]["x_source"] == 1.0
    assert timings["auto"]["x_source"] == round(timings["auto"]["median_ms"] / timings["source"]["median_ms"], 3)

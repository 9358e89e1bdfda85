"""bench/speed.py: round-robin timing gives every method the same frames and ratios to source."""
import torch
from synthetic_frames import domain_frames

from driftseg.bench.speed import measure, with_ratios


def test_every_method_timed_on_every_frame_after_warm_up(tiny_ckpt) -> None:
    frames = [f[None] for f in domain_frames(6, seed=0)]
    timings = with_ratios(measure(tiny_ckpt, frames, ["source", "ptbn", "auto"], torch.device("cpu"), warmup=2))
    assert list(timings) == ["source", "ptbn", "auto"]
    for t in timings.values():
        assert t["frames"] == 4 and t["median_ms"] > 0 and t["mean_ms"] > 0
    assert timings["source"]["x_source"] == 1.0
    assert timings["auto"]["x_source"] == round(timings["auto"]["median_ms"] / timings["source"]["median_ms"], 3)


def test_repeats_pool_the_frames_and_keep_each_repeats_ratio(tiny_ckpt) -> None:
    frames = [f[None] for f in domain_frames(5, seed=1)]
    timings = with_ratios(measure(tiny_ckpt, frames, ["source", "ptbn"], torch.device("cpu"), warmup=2, repeats=3))
    for t in timings.values():
        assert t["frames"] == 9 and len(t["repeat_median_ms"]) == 3
    ptbn, source = timings["ptbn"], timings["source"]
    assert source["repeat_x_source"] == [1.0] * 3
    assert ptbn["repeat_x_source"] == [round(a / b, 3) for a, b in zip(ptbn["repeat_median_ms"], source["repeat_median_ms"])]

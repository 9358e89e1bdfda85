"""bench/plot.py: the rolling mIoU against per-window confusion matrices, and the picture is written."""
import torch

from driftseg.data.metrics import mean_iou
from driftseg.bench.plot import plot_rounds, plot_stream, rolling_miou


def test_rolling_miou_equals_the_miou_of_each_window() -> None:
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 50, (9, 3, 3), generator=g)
    got = rolling_miou(frames, window=4)
    expected = [mean_iou(frames[max(0, i - 3): i + 1].sum(0)) for i in range(9)]
    assert got == expected


def test_plot_is_written_with_and_without_auto(tmp_path) -> None:
    cms = torch.randint(0, 50, (6, 3, 3))
    plain = {"confusion": cms, "shift": [], "alpha": [], "switches": []}
    auto = {"confusion": cms, "shift": [0.5, 1, 3, 9, 2, 1], "alpha": [1, 1, 0.6, 0.2, 0.5, 0.9], "switches": [4]}
    segments = [("day", 0), ("fog", 3)]
    for name, methods in (("a", {"source": plain}), ("b", {"source": plain, "auto": auto})):
        out = tmp_path / f"{name}.png"
        plot_stream("continual", {"segments": segments, "methods": methods}, out)
        assert out.read_bytes()[:4] == b"\x89PNG"


def test_rounds_plot_is_written(tmp_path) -> None:
    rounds = [f"continual10/round{r}" for r in range(1, 5)]
    segments = [f"{r}/{k}-{name}" for r in rounds for k, name in enumerate(["day", "fog", "day"], 1)]
    score = {"source": {"miou": 40.0}, "auto": {"miou": 50.0}}
    out = tmp_path / "r.png"
    plot_rounds("continual10", dict.fromkeys(["continual10", *rounds, *segments], score), out)
    assert out.read_bytes()[:4] == b"\x89PNG"

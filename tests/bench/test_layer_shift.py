"""experiments/layer_shift.py: the per-layer shift it records is the one computed here from the stream's state,
a shifted stream moves the first layer further than an in-domain one, and the heat map is drawn."""
import importlib.util
from pathlib import Path

import numpy as np
import torch
from synthetic_frames import domain_frames

from driftseg.adapters.auto import AlphaCurve
from driftseg.adapters.ema_bn import layer_divergence
from driftseg.adapters.pipeline import Pipeline
from driftseg.adapters.spec import RECOMMENDED, parse_method
from driftseg.data.transforms import to_tensor

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("layer_shift", ROOT / "experiments" / "layer_shift.py")
layer_shift = importlib.util.module_from_spec(spec)
spec.loader.exec_module(layer_shift)


class _Stream:
    def __init__(self, frames: torch.Tensor):
        self.images = [(f.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy() for f in frames]

    def frames(self):
        for image in self.images:
            yield image, np.zeros(image.shape[:2], dtype=np.uint8)


def test_shifts_are_the_state_s_divergence_in_units_of_tau(tiny_ckpt) -> None:
    stream = _Stream(domain_frames(4, seed=5, shift=0.6))
    shifts, miou = layer_shift.layer_shifts(Pipeline(tiny_ckpt, parse_method(RECOMMENDED)), stream, 255)
    pipeline = Pipeline(tiny_ckpt, parse_method(RECOMMENDED))
    state, expected = pipeline.new_state(), []
    auto = pipeline.network
    for image, _ in stream.frames():
        _, (state,) = pipeline.step(to_tensor(image), [state])
        stats = state.parts["norm"].stats[None]
        expected.append(layer_divergence(stats, auto.source, auto.source, auto.module.sizes)[0] / auto.tau)
    torch.testing.assert_close(shifts, torch.stack(expected), rtol=1e-5, atol=1e-5)
    assert 0.0 <= miou <= 100.0
    in_domain, _ = layer_shift.layer_shifts(Pipeline(tiny_ckpt, parse_method(RECOMMENDED)),
                                           _Stream(domain_frames(4, seed=6)), 255)
    assert shifts[:, 0].median() > 2 * in_domain[:, 0].median()


def test_heat_map_is_drawn(tmp_path) -> None:
    out = tmp_path / "shift.png"
    layer_shift.heat_map({"day": [0.5, 1.0, 0.9], "fog": [20.0, 9.0, 1.5]}, AlphaCurve(0.8, 8, 0.5), out)
    assert out.stat().st_size > 0

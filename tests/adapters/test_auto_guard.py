"""auto's guard (adapters/auto.py): the information measure against a direct computation, and the fallback
to the frozen model where a check finds that adapting does not pay, with the checks' outcomes set here."""
import itertools

import numpy as np
import pytest
import torch
from pipeline_util import run
from synthetic_frames import domain_frames

from driftseg.adapters import auto
from driftseg.adapters.auto import GuardState, information
from driftseg.adapters.pipeline import Pipeline
from driftseg.adapters.spec import parse_method


def test_information_is_marginal_entropy_minus_mean_pixel_entropy() -> None:
    logits = torch.randn(2, 4, 3, 5, generator=torch.Generator().manual_seed(0)) * 3
    p = logits.softmax(1).numpy()
    for b in range(2):
        pixels = p[b].reshape(4, -1).T  # [N, C]
        mean_entropy = np.mean([-(q * np.log(q)).sum() for q in pixels])
        marginal = pixels.mean(0)
        expected = -(marginal * np.log(marginal)).sum() - mean_entropy
        assert float(information(logits)[b]) == pytest.approx(expected, abs=1e-5)
    sure_of_one_class = torch.zeros(1, 4, 2, 2)
    sure_of_one_class[:, 0] = 50
    assert float(information(sure_of_one_class)[0]) == pytest.approx(0.0, abs=1e-5)


def _checks(monkeypatch, d: float) -> list[int]:
    """Make every check find IM(adapted) - IM(frozen) = d; the frames checked, recorded."""
    values = itertools.cycle([torch.tensor([d]), torch.tensor([0.0])])  # adapted's call, then frozen's
    calls = []

    def fake(logits):
        calls.append(1)
        return next(values)
    monkeypatch.setattr(auto, "information", fake)
    return calls


def test_a_stream_where_adapting_pays_is_served_as_without_the_guard(tiny_ckpt, monkeypatch) -> None:
    calls = _checks(monkeypatch, 0.5)
    frames = domain_frames(6, seed=3, shift=0.6)
    labels, state = run(Pipeline(tiny_ckpt, parse_method("auto(m=0.5,guard=2)")), frames)
    expected, plain = run(Pipeline(tiny_ckpt, parse_method("auto(m=0.5)")), frames)
    assert torch.equal(labels, expected)
    assert len(calls) == 2 * 3  # checks on frames 0, 2 and 4: the first one, then every 2nd
    assert state.parts["guard"].gain == pytest.approx(0.5)
    torch.testing.assert_close(state.parts["norm"].stats, plain.parts["norm"].stats)


def test_a_stream_where_adapting_does_not_pay_falls_back_to_the_frozen_model(tiny_ckpt, monkeypatch) -> None:
    _checks(monkeypatch, -0.5)
    frames = domain_frames(6, seed=3, shift=0.6)
    # no restarts (switch=100): the held stream's later layers see other activations, so its jumps differ
    pipeline = Pipeline(tiny_ckpt, parse_method("auto(m=0.5,switch=100,guard=2)"))
    labels, state = run(pipeline, frames)
    frozen, _ = run(Pipeline(tiny_ckpt, parse_method("source")), frames)
    adapted, plain = run(Pipeline(tiny_ckpt, parse_method("auto(m=0.5,switch=100)")), frames)
    # from the first check on (frame 0) the frozen model's labels (source statistics between checks: equal
    # up to BN folding)
    assert (labels == frozen).float().mean() > 0.999
    assert not torch.equal(adapted, frozen)  # the stream's own statistics would have changed them
    # the statistics still follow the frames, so that a later check can find that adapting pays: the
    # first BN layer sees the same input either way (later ones see the source-normalised activations)
    first = pipeline.network.module.sizes[0]
    torch.testing.assert_close(state.parts["norm"].stats[:, :first], plain.parts["norm"].stats[:, :first])
    assert not torch.allclose(state.parts["norm"].stats, pipeline.new_state().parts["norm"].stats)
    assert state.parts["guard"].gain == pytest.approx(-0.5)
    assert pipeline.describe(state)["guard_gain"] == pytest.approx(-0.5)


def test_guard_state_round_trip_and_refusals() -> None:
    state = GuardState()
    assert state.state_dict()["gain"] != state.state_dict()["gain"]  # NaN: no check yet
    state.load_state_dict({"gain": -0.25})
    assert state.gain == -0.25
    for bad in ({"gain": "high"}, {"gain": float("inf")}, {}):
        with pytest.raises(ValueError, match="guard gain"):
            state.load_state_dict(bad)
    state.reset()
    assert state.gain != state.gain


def test_a_guarded_auto_is_not_exported_and_bad_guards_are_refused() -> None:
    assert "guard" in parse_method("auto(guard=8)").export_refusal()
    assert parse_method("auto").export_refusal() is None
    with pytest.raises(ValueError, match="auto guard"):
        parse_method("auto(guard=-1)")

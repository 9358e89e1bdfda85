"""rdumb (adapters/rdumb.py): a stream reset to the source every `every` frames, over another method."""
import pytest
import torch
from pipeline_util import assert_same_state, run
from synthetic_frames import domain_frames

from driftseg.adapters.pipeline import Pipeline
from driftseg.adapters.spec import parse_method


def test_a_reset_stream_equals_the_method_restarted_by_hand(tiny_ckpt) -> None:
    frames = torch.cat([domain_frames(3, seed=1), domain_frames(2, seed=2) * 0.4])
    labels, state = run(Pipeline(tiny_ckpt, parse_method("rdumb(every=2)+ema(m=0.5)+lc")), frames)
    plain = Pipeline(tiny_ckpt, parse_method("ema(m=0.5)+lc"))
    chunks = [run(plain, frames[i:i + 2]) for i in range(0, 5, 2)]  # each from the source state
    assert torch.equal(labels, torch.cat([chunk_labels for chunk_labels, _ in chunks]))
    assert state.frames == 1
    assert_same_state(state, chunks[-1][1])


def test_without_a_reset_due_it_changes_nothing(tiny_ckpt) -> None:
    frames = domain_frames(4, seed=3)
    labels, state = run(Pipeline(tiny_ckpt, parse_method("rdumb(every=10)+ema(m=0.5)")), frames)
    expected, reference = run(Pipeline(tiny_ckpt, parse_method("ema(m=0.5)")), frames)
    assert torch.equal(labels, expected)
    assert_same_state(state, reference)


def test_a_frame_not_adapted_on_keeps_the_state_even_when_a_reset_is_due(tiny_ckpt) -> None:
    pipeline = Pipeline(tiny_ckpt, parse_method("rdumb(every=1)+ema(m=0.5)"))
    _, (state,) = pipeline.step(domain_frames(1, seed=4), [pipeline.new_state()])
    _, (kept,) = pipeline.step(domain_frames(1, seed=5), [state], adapt=False)
    assert kept is state and state.frames == 1


def test_every_below_one_frame_is_refused() -> None:
    with pytest.raises(ValueError, match="rdumb every"):
        parse_method("rdumb(every=0)+ema")

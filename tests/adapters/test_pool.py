"""The device pool of stream states (adapters/pool.py) against the pipeline's own step on host states."""
import pytest
import torch
from pipeline_util import assert_same_state
from synthetic_frames import domain_frames

from driftseg.adapters.backends import Compiled
from driftseg.adapters.pipeline import Pipeline
from driftseg.adapters.pool import StatePool
from driftseg.adapters.spec import parse_method

# every backprop-free network component that has a pool, with the output components and FDA
POOLED = ["source", "ema(m=0.2,alpha=0.3)+lc", "auto(m=0.2,switch=1.5)+lc+fda(beta=0.05)", "auto(m=1,floor=0.2,switch=1.5,layers=0)",
          "unmixtns+proto", "adamixbn", "ema(m=0.2,lag=1)"]


def _streams():
    """Three streams of 8 frames; the second turns dark half way (a domain switch), the third is shifted."""
    return [domain_frames(8, seed=1),
            torch.cat([domain_frames(4, seed=2), domain_frames(4, seed=3, shift=0.8)]),
            domain_frames(8, seed=4, shift=0.4)]


# which streams send a frame at each step: batches of 3, 2 and 1 frames, in changing order
SCHEDULE = [[0, 1, 2], [2, 0], [1], [1, 2, 0], [0], [2, 1], [0, 1, 2], [1, 0], [2], [0, 2, 1], [1], [2, 0, 1]]


def _run_both(pipeline, pool, streams, slots, schedule=SCHEDULE, differ=1e-3):
    """Step the pool and the pipeline on host states through `schedule`: label maps equal at every step, but
    for a fraction `differ` of near-ties of the untrained network."""
    states, sent = [pipeline.new_state() for _ in streams], [0] * len(streams)
    for order in schedule:
        order = [s for s in order if sent[s] < len(streams[s])]
        frames = torch.stack([streams[s][sent[s]] for s in order])
        labels, new = pipeline.step(frames, [states[s] for s in order])
        pooled = pool.step(frames, [slots[s] for s in order])
        assert (pooled != labels).float().mean() < differ
        for s, state in zip(order, new):
            states[s], sent[s] = state, sent[s] + 1
    return states


@pytest.mark.parametrize("spec", POOLED)
def test_a_pool_steps_as_the_pipeline_does_on_host_states(tiny_ckpt, spec) -> None:
    pipeline = Pipeline(tiny_ckpt, parse_method(spec))
    pool = StatePool(pipeline, slots=5)
    slots = [3, 0, 4]  # not the streams' own numbers
    states = _run_both(pipeline, pool, _streams(), slots)
    for slot, state in zip(slots, states):
        assert_same_state(pool.state(slot), state)
        assert pool.state(slot).frames == state.frames > 0
    assert_same_state(pool.state(1), pipeline.new_state())  # slots no stream used stay at the source
    if "auto" in spec:  # the switch was taken on the device, and recorded as the pipeline records it
        assert states[1].parts["auto"].switches, "the test needs a domain switch"
        assert pool.state(slots[1]).parts["auto"].switches == states[1].parts["auto"].switches


def test_load_state_and_reset_round_trip_and_continue_identically(tiny_ckpt) -> None:
    pipeline = Pipeline(tiny_ckpt, parse_method("auto(m=0.2)+lc"))
    pool = StatePool(pipeline, slots=2)
    frames = domain_frames(6, seed=5, shift=0.5)
    state = pipeline.new_state()
    for frame in frames[:3]:
        _, (state,) = pipeline.step(frame[None], [state])
    pool.load(1, state)
    assert_same_state(pool.state(1), state)
    for frame in frames[3:]:
        labels, (state,) = pipeline.step(frame[None], [state])
        assert torch.equal(pool.step(frame[None], [1]), labels)
    assert_same_state(pool.state(1), state)
    pool.reset(1)
    assert_same_state(pool.state(1), pipeline.new_state())
    assert pool.state(1).frames == 0


def test_bad_input_is_refused_and_writes_nothing(tiny_ckpt) -> None:
    pipeline = Pipeline(tiny_ckpt, parse_method("ema(m=0.2)+lc"))
    pool = StatePool(pipeline, slots=3)
    frames = domain_frames(2, seed=6)
    pool.step(frames[:1], [0])
    before = {k: t.clone() for k, t in pool.tensors.items()}
    for images, slots, message in [(frames, [0, 0], "one frame per stream"), (frames, [0, 3], r"slot must be an int in \[0, 3\)"),
                                   (frames, [0], "2 frames but 1 slots"), (frames[:, :2], [0, 1], r"\[B, 3, H, W\]"),
                                   (frames[:1], [True], "slot must be an int")]:
        with pytest.raises(ValueError, match=message):
            pool.step(images, slots)
    with pytest.raises(ValueError, match="a state of this method holds"):
        pool.load(1, Pipeline(tiny_ckpt, parse_method("ema")).new_state())
    for k, t in pool.tensors.items():
        assert torch.equal(t, before[k]), k
    with pytest.raises(ValueError, match="slots must be >= 1"):
        StatePool(pipeline, slots=0)


@pytest.mark.parametrize("spec, reason", [
    ("auto(guard=4)", r"\['check'\] are made on the host"),
    ("dua(copies=3)", "made on the host"),
    ("rdumb(every=5)+ema", "rdumb decides on the host"),
    ("tent", "adapts by backprop"),
])
def test_methods_that_decide_on_the_host_have_no_pool(tiny_ckpt, spec, reason) -> None:
    with pytest.raises(ValueError, match=reason):
        StatePool(Pipeline(tiny_ckpt, parse_method(spec)), slots=2)


@pytest.mark.slow
def test_a_compiled_pool_gathers_and_scatters_inside_its_graph_as_eager_does(tiny_ckpt) -> None:
    """Batches of 3 frames run as 4: the padding reads and writes back the padding row, and the graph leaves
    every slot as eager does; one graph (a compilation takes a minute on the CPU)."""
    from torch._dynamo.utils import counters

    spec = "auto(m=0.2,switch=1.5)+lc"
    eager = Pipeline(tiny_ckpt, parse_method(spec))
    pool = StatePool(Pipeline(tiny_ckpt, parse_method(spec), backend=Compiled()), slots=4)
    graphs = counters["stats"]["unique_graphs"]
    states = _run_both(eager, pool, _streams(), [2, 0, 1], [[0, 1, 2], [2, 0, 1], [1, 2, 0], [0, 2, 1]] * 2)
    for slot, state in zip([2, 0, 1], states):
        assert_same_state(pool.state(slot), state)
    assert_same_state(pool.state(3), eager.new_state())
    source = eager.stack_states([eager.new_state()])
    for key, t in pool.tensors.items():  # the padding row, after every padded batch
        assert torch.equal(t[-1], source[key][0]), key
    assert pool.state(0).parts["auto"].switches == states[1].parts["auto"].switches != []
    assert counters["stats"]["unique_graphs"] - graphs == 1


@pytest.mark.gpu
def test_a_compiled_pool_on_cuda_replays_its_writes_as_eager_does(tiny_ckpt, monkeypatch) -> None:
    """Under CUDA graphs (reduce-overhead) the pool's in-place writes to its tensors must be part of the
    replayed graph: each replay has to advance the states as eager does, across a domain switch."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # as test_compiled_pipeline_equals_eager_on_cuda
    spec = "auto(m=0.2,switch=1.5)+lc"
    eager = Pipeline(tiny_ckpt, parse_method(spec), "cuda")
    pool = StatePool(Pipeline(tiny_ckpt, parse_method(spec), "cuda", backend=Compiled()), slots=4)
    streams = [s.cuda() for s in _streams()]
    states = _run_both(eager, pool, streams, [2, 0, 1], [[0, 1, 2], [2, 0, 1], [1, 2, 0], [0, 2, 1]] * 2, differ=1e-2)
    for slot, state in zip([2, 0, 1], states):
        assert_same_state(pool.state(slot), state)
    assert pool.state(0).parts["auto"].switches == states[1].parts["auto"].switches != []

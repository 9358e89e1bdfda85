"""adapters/pipeline.py: streams batched together equal streams run apart; states are explicit,
never mutated, round-trip through state_dict, and load all or nothing; auto restarts at a switch."""
import json

import pytest
import torch
from synthetic_frames import domain_frames
from torch.nn import functional as F

from driftseg.adapters.auto import AlphaCurve
from driftseg.adapters.label_calibration import LabelCalibration, LabelCalibrationConfig, calibrate, calibrated_scores
from driftseg.adapters.backends import Compiled, Eager, padded_batch_size
from driftseg.adapters.pipeline import Pipeline, to_input_size
from driftseg.adapters.registry import METHODS
from pipeline_util import assert_same_state, run
from driftseg.adapters.spec import parse_method

SPECS = ["source", "ptbn", "ema(m=0.2,alpha=0.5)+lc", "auto(m=0.2)+lc+fda(beta=0.05)", "fda(mode=swap)", "diga+lc",
         "dua(copies=3)+proto", "ema(m=0.2)+lame", "lame", "adamixbn(m=0.3)", "rdumb(every=2)+unmixtns(m=0.2)+lc",
         "ema(m=0.2,lag=1)+lc", "auto(m=1,floor=0.8,far=4,low=0,reach=1)+lc"]


@pytest.mark.parametrize("spec", SPECS)
def test_batched_streams_equal_streams_run_apart(tiny_ckpt, spec) -> None:
    pipeline = Pipeline(tiny_ckpt, parse_method(spec))
    a_frames, b_frames = domain_frames(4, seed=1), domain_frames(4, seed=2, shift=0.6)
    a_labels, a_state = run(pipeline, a_frames)
    b_labels, b_state = run(pipeline, b_frames)
    states = [pipeline.new_state(), pipeline.new_state()]
    batched = []
    for fa, fb in zip(a_frames, b_frames):
        out, states = pipeline.step(torch.stack([fa, fb]), states)
        batched.append(out)
    batched = torch.stack(batched)
    # labels may differ only where two classes tie to float precision
    assert (batched[:, 0] != a_labels).float().mean() < 1e-3
    assert (batched[:, 1] != b_labels).float().mean() < 1e-3
    assert_same_state(states[0], a_state)
    assert_same_state(states[1], b_state)


def test_labels_come_back_at_the_frame_size(tiny_ckpt) -> None:
    pipeline = Pipeline(tiny_ckpt, parse_method("auto"))
    labels, _ = pipeline.step(domain_frames(1, seed=3, size=(45, 70)), [pipeline.new_state()])
    assert labels.shape == (1, 45, 70) and labels.dtype == torch.int64
    assert 0 <= labels.min() and labels.max() < tiny_ckpt.num_classes


def test_label_calibration_at_stride_0_runs_on_the_classifier_grid_and_labels_at_the_frame_size(tiny_ckpt) -> None:
    from driftseg.models.registry import classifier_features

    pipeline = Pipeline(tiny_ckpt, parse_method("lc(stride=0)"))
    frame = domain_frames(1, seed=7, shift=0.3, size=(45, 70))
    labels, (state,) = pipeline.step(frame, [pipeline.new_state()])
    _, coarse, _ = classifier_features(pipeline.network.module, to_input_size(frame, pipeline.input_size))
    assert coarse.shape[-2:] == (4, 6)  # the 32x48 input on LRASPP's 1/8 grid
    scores, proto_sum, weight = calibrated_scores(coarse.softmax(1), torch.zeros(1, 11, 11), torch.zeros(1, 11))
    torch.testing.assert_close(state.parts["lc"].proto_sum, proto_sum[0])
    torch.testing.assert_close(state.parts["lc"].weight, weight[0])
    expected = F.interpolate(scores.view(coarse.shape), size=(45, 70), mode="bilinear", align_corners=False).argmax(1)
    assert labels.shape == (1, 45, 70) and (labels != expected).float().mean() < 1e-3


def test_label_calibration_at_stride_0_needs_a_network_that_gives_the_classifier_logits(tiny_ckpt) -> None:
    from dataclasses import replace

    with pytest.raises(ValueError, match=r"lc reads the network's \['feature_logits'\], which tent does not provide"):
        parse_method("tent+lc(stride=0)")
    parse_method("tent+lc(stride=8)")  # another stride reads the network's output, which every network gives
    other = replace(tiny_ckpt, arch="torchvision:deeplabv3_mobilenet_v3_large")  # its model is beside the point
    with pytest.raises(ValueError, match="LRASPP head only"):
        LabelCalibration(LabelCalibrationConfig(stride=0), other, tiny_ckpt.build_model("cpu"), torch.device("cpu"))


def test_label_calibration_runs_on_2x2_block_means_of_the_network_output(tiny_ckpt) -> None:
    pipeline = Pipeline(tiny_ckpt, parse_method("lc(stride=2)"))
    frame = domain_frames(1, seed=7, shift=0.3)
    _, (state,) = pipeline.step(frame, [pipeline.new_state()])
    logits = pipeline.network.module(to_input_size(frame, pipeline.input_size))
    _, proto_sum, weight = calibrate(F.avg_pool2d(logits, 2).softmax(1), torch.zeros(1, 11, 11), torch.zeros(1, 11))
    torch.testing.assert_close(state.parts["lc"].proto_sum, proto_sum[0])
    torch.testing.assert_close(state.parts["lc"].weight, weight[0])
    assert weight.sum() < (logits.shape[-1] * logits.shape[-2]) / 4 + 1e-3  # a quarter of the pixels, weighted


def test_step_never_mutates_the_given_states_and_adapt_false_keeps_them(tiny_ckpt) -> None:
    pipeline = Pipeline(tiny_ckpt, parse_method("auto(m=0.2)+lc+fda"))
    _, state = run(pipeline, domain_frames(3, seed=4))
    before = state.state_dict()
    frame = domain_frames(1, seed=5, shift=0.5)
    labels, (new,) = pipeline.step(frame, [state])
    assert new is not state and new.frames == state.frames + 1
    for key, value in before.items():
        if isinstance(value, dict):
            for k, v in value.items():
                now = state.state_dict()[key][k]
                assert torch.equal(v, now) if isinstance(v, torch.Tensor) else v == now
    kept_labels, (kept,) = pipeline.step(frame, [state], adapt=False)
    assert kept is state
    assert torch.equal(kept_labels, labels)


def test_state_dict_round_trip_continues_identically(tiny_ckpt) -> None:
    pipeline = Pipeline(tiny_ckpt, parse_method("auto(m=0.2)+lc+fda"))
    _, state = run(pipeline, domain_frames(5, seed=6, shift=0.4))
    restored = pipeline.new_state()
    restored.load_state_dict(state.state_dict())
    next_frames = domain_frames(2, seed=7, shift=0.4)
    a_labels, a_state = run(pipeline, next_frames, state)
    b_labels, b_state = run(pipeline, next_frames, restored)
    assert torch.equal(a_labels, b_labels)
    assert_same_state(a_state, b_state)


def test_bad_state_dict_is_refused_and_leaves_the_state_as_it_was(tiny_ckpt) -> None:
    pipeline = Pipeline(tiny_ckpt, parse_method("auto+fda"))
    _, state = run(pipeline, domain_frames(3, seed=8))
    before = state.state_dict()
    bad = state.state_dict()
    bad["auto"]["alpha"] = torch.full_like(bad["auto"]["alpha"], 0.5)  # valid part, loaded first
    bad["norm"]["stats"] = bad["norm"]["stats"][:, :-1]  # then a part of the wrong shape
    with pytest.raises(ValueError, match="norm stats"):
        state.load_state_dict(bad)
    with pytest.raises(ValueError, match="should hold"):
        state.load_state_dict({"frames": 3})
    assert_same_state(state, _restored(pipeline, before))


def _restored(pipeline, d):
    s = pipeline.new_state()
    s.load_state_dict(d)
    return s


def test_reset_returns_to_the_source_state(tiny_ckpt) -> None:
    pipeline = Pipeline(tiny_ckpt, parse_method("auto+fda"))
    _, state = run(pipeline, domain_frames(3, seed=9, shift=0.7))
    state.reset()
    assert_same_state(state, pipeline.new_state())


def test_auto_stays_at_the_source_in_domain_and_restarts_at_a_switch(tiny_ckpt) -> None:
    pipeline = Pipeline(tiny_ckpt, parse_method("auto(m=0.1)"))
    in_domain = domain_frames(30, seed=10)
    shifted = domain_frames(20, seed=11, shift=0.8)
    _, state = run(pipeline, in_domain)
    assert state.parts["auto"].switches == []
    assert state.parts["auto"].alpha.mean() > 0.8  # mostly the source statistics
    _, state = run(pipeline, shifted, state)
    assert state.parts["auto"].switches and 31 <= state.parts["auto"].switches[0] <= 33, state.parts["auto"].switches
    assert state.parts["auto"].score > 1 and state.parts["auto"].alpha.mean() < 0.8


def test_auto_reach_is_the_last_frames_largest_layer_shift_and_lowers_the_next_frames_floor(tiny_ckpt) -> None:
    spec = "auto(m=1,floor=0.8,far=4,low=0,reach={},switch=100)"
    pipeline, without = (Pipeline(tiny_ckpt, parse_method(spec.format(r))) for r in (1, 0))
    frames = domain_frames(3, seed=11, shift=0.8)
    assert pipeline.new_state().parts["auto"].reach == 0
    _, state = run(pipeline, frames[:2])
    reach = max(layer["shift"] for layer in pipeline.describe(state)["layers"])  # m=1: the last frame's
    assert reach > 1 and state.parts["auto"].reach == pytest.approx(reach, rel=1e-5)
    assert pipeline.describe(state)["reach"] == state.parts["auto"].reach  # GET /adaptation/state shows it
    _, after = run(pipeline, frames[2:], state)
    shift = torch.tensor([layer["shift"] for layer in pipeline.describe(after)["layers"]])
    curve = AlphaCurve(0.8, 4, 0)
    torch.testing.assert_close(after.parts["auto"].alpha, curve(shift, torch.tensor(reach)), rtol=1e-4, atol=1e-5)
    assert bool((curve(shift, torch.tensor(reach)) < curve(shift)).any())  # the reach lowered some layer's floor
    _, alone = run(without, frames[2:], state)  # the same state without the reach: other statistics
    assert not torch.allclose(alone.parts["norm"].stats, after.parts["norm"].stats)


def test_auto_needs_the_calibration(tiny_ckpt) -> None:
    from dataclasses import replace

    bare = replace(tiny_ckpt, extra={})
    with pytest.raises(ValueError, match="driftseg calibrate"):
        Pipeline(bare, parse_method("auto"))


@pytest.mark.gpu
@pytest.mark.parametrize("spec", ["source", "ema(m=0.2,alpha=0.5)+lc", "auto(m=0.2)+lc+fda(beta=0.05)"])
def test_compiled_pipeline_equals_eager_on_cuda(tiny_ckpt, spec, monkeypatch) -> None:
    # CUDA graphs replay into the same output buffers: states kept from earlier frames must not
    # change under later ones, and a domain switch in the middle must restart the stream the same way.
    # Eager convolutions default to TF32, compiled 1x1 ones run as fp32 matmuls: on the tiny untrained
    # network, whose per-frame statistics amplify any difference, that alone moved 8% of the deep
    # layers' statistics apart on an H100, so both run in full fp32 here
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    eager, compiled = (Pipeline(tiny_ckpt, parse_method(spec), "cuda", backend=b) for b in (Eager(), Compiled()))
    frames = torch.cat([domain_frames(6, seed=1), domain_frames(6, seed=2, shift=0.8)]).cuda()
    e_labels, e_state = run(eager, frames)
    c_first, c_mid = run(compiled, frames[:6])
    kept = c_mid.state_dict()
    c_rest, c_state = run(compiled, frames[6:], c_mid)
    torch.testing.assert_close(c_mid.state_dict(), kept, rtol=0, atol=0)  # untouched by the replays after it
    assert (torch.cat([c_first, c_rest]) != e_labels).float().mean() < 1e-2  # near-ties of the untrained network
    assert_same_state(c_state, e_state)
    if "auto" in e_state.parts:
        assert c_state.parts["auto"].switches == e_state.parts["auto"].switches


@pytest.mark.parametrize("b, padded", [(1, 1), (2, 2), (3, 4), (5, 8), (8, 8), (9, 16), (32, 32)])
def test_padded_batch_size_is_the_next_power_of_two(b, padded) -> None:
    assert padded_batch_size(b) == padded


def test_padding_a_batch_changes_nothing_for_its_streams(tiny_ckpt) -> None:
    plain, padded = (Pipeline(tiny_ckpt, parse_method("auto(m=0.2)+lc+fda(beta=0.05)")) for _ in range(2))
    padded.pad_batches = True  # what compile turns on, here without compiling
    frames = [domain_frames(3, seed=s, shift=0.2 * s) for s in range(3)]
    states = {p: [p.new_state() for _ in range(3)] for p in (plain, padded)}
    for t in range(3):
        batch = torch.stack([f[t] for f in frames])
        labels = {}
        for p in (plain, padded):
            labels[p], states[p] = p.step(batch, states[p])
        assert labels[padded].shape == (3, *batch.shape[-2:])
        assert torch.equal(labels[padded], labels[plain])
    for a, b in zip(states[padded], states[plain]):
        assert_same_state(a, b)
        assert a.frames == 3


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["auto(m=0.2)+lc", "ema(m=0.2,lag=1)+lc"])
def test_compiled_pipeline_equals_eager_on_the_cpu(tiny_ckpt, spec) -> None:
    from torch._dynamo.utils import counters

    eager, compiled = (Pipeline(tiny_ckpt, parse_method(spec), backend=b) for b in (Eager(), Compiled()))
    frames = domain_frames(4, seed=12, shift=0.3)
    graphs = counters["stats"]["unique_graphs"]
    e_labels, e_states = eager.step(frames[:3], [eager.new_state() for _ in range(3)])
    c_labels, c_states = compiled.step(frames[:3], [compiled.new_state() for _ in range(3)])  # padded to 4
    assert (c_labels != e_labels).float().mean() < 1e-3
    for c, e in zip(c_states, e_states):
        assert_same_state(c, e)
    compiled.step(frames, [compiled.new_state() for _ in range(4)])
    assert counters["stats"]["unique_graphs"] - graphs == 1  # batches of 3 and 4 share one graph


def test_the_batching_tester_covers_every_registered_method() -> None:
    named = {name for spec in SPECS for name, _ in parse_method(spec).parts}
    assert named == {name for name, c in METHODS.items() if not c.backprop}


def _flat(d, prefix=""):
    """A nested state_dict as {path: leaf}."""
    if isinstance(d, dict):
        return {k: v for key, sub in d.items() for k, v in _flat(sub, f"{prefix}/{key}").items()}
    if isinstance(d, (list, tuple)):
        return {k: v for i, sub in enumerate(d) for k, v in _flat(sub, f"{prefix}/{i}").items()}
    return {prefix: d}


def _assert_equal_dicts(a: dict, b: dict) -> None:
    fa, fb = _flat(a), _flat(b)
    assert fa.keys() == fb.keys()
    for k, v in fa.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, fb[k]), k
        else:
            assert v == fb[k], k


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_round_trips_resets_and_describes_its_state(tiny_ckpt, name) -> None:
    pipeline = Pipeline(tiny_ckpt, parse_method("fda(beta=0.05)" if name == "fda" else name))
    _, state = run(pipeline, domain_frames(3, seed=1, shift=0.4))
    json.dumps(pipeline.describe(state))  # what GET /adaptation/state answers
    restored = pipeline.new_state()
    restored.load_state_dict(state.state_dict())
    _assert_equal_dicts(restored.state_dict(), state.state_dict())
    state.reset()
    _assert_equal_dicts(state.state_dict(), pipeline.new_state().state_dict())


def test_a_compiled_pipeline_keeps_its_graphs_past_dynamos_default_recompile_limit(tiny_ckpt) -> None:
    """Every pipeline's `adapt` is one code object to dynamo: two served models at six padded batch sizes
    exceed its default limit of 8 graphs, past which it would run eagerly without a word."""
    from driftseg.adapters.backends import RECOMPILE_LIMIT

    config = torch._dynamo.config  # its attributes are not plain ones: monkeypatch's undo would delete it
    before, config.recompile_limit = config.recompile_limit, 8
    try:
        Pipeline(tiny_ckpt, parse_method("auto(m=0.2)+lc"), backend=Compiled())  # torch.compile is lazy
        assert config.recompile_limit == RECOMPILE_LIMIT >= 2 * len({padded_batch_size(b) for b in range(1, 33)})
    finally:
        config.recompile_limit = before

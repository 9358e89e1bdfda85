"""adapters/onnx_engine.py: the adapted function exported with the stream states as graph inputs and
outputs gives, in onnxruntime, the labels and states of the torch engine, at any batch size; a file
made for another checkpoint or method is refused, and what has no export says so."""
import pytest
import torch
from pipeline_util import assert_same_state, run
from synthetic_frames import domain_frames

from driftseg.adapters.onnx_engine import Onnx, OnnxCore, export, onnx_metadata
from driftseg.adapters.pipeline import Pipeline
from driftseg.adapters.spec import parse_method

META = onnx_metadata("c0ffee", "auto(m=0.2)+lc")


@pytest.fixture(scope="module")
def exported(tiny_ckpt, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "auto.onnx"
    export(Pipeline(tiny_ckpt, parse_method("auto(m=0.2)+lc")), path, META)
    return path


def test_onnx_engine_equals_torch_over_a_domain_switch(tiny_ckpt, exported) -> None:
    torch_pipe = Pipeline(tiny_ckpt, parse_method("auto(m=0.2)+lc"))
    onnx_pipe = Pipeline(tiny_ckpt, parse_method("auto(m=0.2)+lc"), backend=Onnx(exported, META))
    frames = torch.cat([domain_frames(6, seed=1), domain_frames(6, seed=2, shift=0.8)])
    t_labels, t_state = run(torch_pipe, frames)
    o_labels, o_state = run(onnx_pipe, frames)
    assert (o_labels != t_labels).float().mean() < 1e-3  # near-ties of the untrained network may flip
    assert_same_state(o_state, t_state)
    assert o_state.parts["auto"].switches == t_state.parts["auto"].switches


def test_the_batch_dimension_is_dynamic(tiny_ckpt, exported) -> None:
    torch_pipe = Pipeline(tiny_ckpt, parse_method("auto(m=0.2)+lc"))
    onnx_pipe = Pipeline(tiny_ckpt, parse_method("auto(m=0.2)+lc"), backend=Onnx(exported, META))
    for b in (1, 3):
        frames = domain_frames(b, seed=b)
        t_labels, t_states = torch_pipe.step(frames, [torch_pipe.new_state() for _ in range(b)])
        o_labels, o_states = onnx_pipe.step(frames, [onnx_pipe.new_state() for _ in range(b)])
        assert (o_labels != t_labels).float().mean() < 1e-3
        for o, t in zip(o_states, t_states):
            assert_same_state(o, t)


def test_a_file_for_another_checkpoint_or_method_is_refused(tiny_ckpt, exported) -> None:
    pipe = Pipeline(tiny_ckpt, parse_method("auto(m=0.2)+lc"))
    with pytest.raises(ValueError, match="exported for checkpoint 'c0ffee', not 'other'"):
        OnnxCore(exported, pipe, onnx_metadata("other", "auto(m=0.2)+lc"))
    with pytest.raises(ValueError, match="returns states"):  # the method needs other state tensors
        OnnxCore(exported, Pipeline(tiny_ckpt, parse_method("ema(m=0.2)")), {})


@pytest.mark.parametrize("spec, match", [("tent", "backprop"), ("cotta", "backprop"), ("auto+fda(beta=0.1)", "FFT"),
                                         ("lame", "kNN graph")])
def test_what_has_no_export_says_so(tiny_ckpt, tmp_path, spec, match) -> None:
    with pytest.raises(ValueError, match=match):
        export(Pipeline(tiny_ckpt, parse_method(spec)), tmp_path / "x.onnx", META)
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("spec", ["norm_alpha", "rbn", "dua(copies=3)", "diga", "ema(m=0.2,lag=1)"])
def test_backprop_free_peers_export_and_equal_torch(tiny_ckpt, tmp_path, spec) -> None:
    """The peers that need no backprop run in onnxruntime too: DUA's crops come in as a state-like input
    drawn on the host, DIGA's feature reads are inside the exported function (LAME is refused: below); and
    `ema` with a lag, whose layers folded into the convolutions per sample are exported unfolded."""
    meta = onnx_metadata("c0ffee", spec)
    path = export(Pipeline(tiny_ckpt, parse_method(spec)), tmp_path / "peer.onnx", meta)
    torch_pipe = Pipeline(tiny_ckpt, parse_method(spec))
    onnx_pipe = Pipeline(tiny_ckpt, parse_method(spec), backend=Onnx(path, meta))
    frames = domain_frames(3, seed=3, shift=0.5)
    t_labels, t_state = run(torch_pipe, frames)
    o_labels, o_state = run(onnx_pipe, frames)
    assert (o_labels != t_labels).float().mean() < 1e-3
    assert_same_state(o_state, t_state)

"""Method spec parsing: components joined by '+', each `name` or `name(key=value,...)`."""
import dataclasses

import pytest

from driftseg.adapters.spec import RECOMMENDED, MethodSpec, parse_method


def test_source_is_the_default_spec() -> None:
    spec = parse_method("source")
    assert spec == MethodSpec()
    assert spec.norm == "source" and not spec.lc and spec.fda_mode is None


def test_ptbn_is_ema_with_momentum_one_alpha_zero() -> None:
    spec = parse_method("ptbn")
    assert (spec.norm, spec.momentum, spec.alpha) == ("ema", 1.0, 0.0)
    assert spec == parse_method("ema(m=1,alpha=0)")
    assert spec == parse_method("ema(alpha=0.0, m=1.0)")
    assert not spec.lc and spec.fda_mode is None


def test_ema_with_label_calibration() -> None:
    spec = parse_method("ema(m=0.1,alpha=0.5)+lc")
    assert spec == MethodSpec(norm="ema", momentum=0.1, alpha=0.5, lc=True)
    assert isinstance(spec.momentum, float) and isinstance(spec.alpha, float)
    assert spec.lc_forget == 1.0
    # order of the components and whitespace do not matter
    assert parse_method(" lc + ema( m = 0.1 , alpha = 0.5 ) ") == spec


def test_ema_defaults() -> None:
    spec = parse_method("ema")
    assert (spec.norm, spec.momentum, spec.alpha) == ("ema", 0.1, 0.0)
    assert parse_method("ema()") == spec


def test_tent_parameters() -> None:
    spec = parse_method("tent(lr=0.01,steps=2)")
    assert spec == MethodSpec(norm="tent", tent_lr=0.01, tent_steps=2)
    assert type(spec.tent_steps) is int
    assert parse_method("tent(lr=1e-4)").tent_lr == pytest.approx(1e-4)
    assert parse_method("tent") == MethodSpec(norm="tent", tent_lr=1e-3, tent_steps=1)


def test_fda_with_ema() -> None:
    spec = parse_method("fda(beta=0.05,mode=swap,m=0.2)+ema")
    assert spec.fda_mode == "swap"
    assert spec.fda_beta == pytest.approx(0.05)
    assert spec.fda_momentum == pytest.approx(0.2)
    # fda's m is its own, not the ema's
    assert (spec.norm, spec.momentum, spec.alpha) == ("ema", 0.1, 0.0)
    assert parse_method("fda").fda_mode == "ratio"
    assert parse_method("fda").norm == "source"


def test_lc_forget() -> None:
    spec = parse_method("lc(forget=0.9)")
    assert spec.lc and spec.lc_forget == pytest.approx(0.9)
    assert spec.norm == "source"
    assert parse_method("lc(forget=1)").lc_forget == 1.0


def test_lc_stride() -> None:
    assert parse_method("lc").lc_stride == 2
    assert parse_method("lc(stride=1,forget=0.5)").lc_stride == 1


def test_spec_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        parse_method("ema").momentum = 0.5  # type: ignore[misc]


@pytest.mark.parametrize("spec", ["bogus", "ema+bogus", "EMA", "", "ema(m=0.1", "+lc", "lc+"])
def test_unknown_component(spec: str) -> None:
    with pytest.raises(ValueError, match="unknown method component") as info:
        parse_method(spec)
    # the message lists what is allowed
    assert "ptbn" in str(info.value) and "tent" in str(info.value)


@pytest.mark.parametrize(
    "spec, bad",
    [("ema(beta=0.1)", "beta"), ("tent(m=0.1)", "m=0.1"), ("ptbn(m=0.5)", "m=0.5"), ("source(alpha=1)", "alpha"), ("ema(m)", "'m'")],
)
def test_unknown_parameter(spec: str, bad: str) -> None:
    with pytest.raises(ValueError, match="takes parameters") as info:
        parse_method(spec)
    assert bad in str(info.value)


@pytest.mark.parametrize("spec", ["ema(m=abc)", "ema(alpha=)", "tent(steps=1.5)", "tent(lr=fast)", "lc(forget=0.9x)"])
def test_bad_value(spec: str) -> None:
    with pytest.raises(ValueError, match="bad value"):
        parse_method(spec)


@pytest.mark.parametrize(
    "spec, what",
    [
        ("ema(m=1.5)", "ema m"),
        ("ema(m=-0.1)", "ema m"),
        ("ema(m=nan)", "ema m"),
        ("ema(alpha=2)", "ema alpha"),
        ("ema(alpha=-1e-9)", "ema alpha"),
        ("tent(lr=0)", "tent"),
        ("tent(lr=-0.01)", "tent"),
        ("tent(steps=0)", "tent"),
        ("lc(forget=0)", "lc forget"),
        ("lc(forget=1.01)", "lc forget"),
        ("lc(stride=0)", "lc stride"),
        ("fda(beta=0.6)", "fda beta"),
        ("fda(beta=-0.01)", "fda beta"),
        ("fda(m=0)", "fda m"),
        ("fda(m=1.2)", "fda m"),
        ("fda(mode=blend)", "fda mode"),
    ],
)
def test_out_of_range(spec: str, what: str) -> None:
    with pytest.raises(ValueError, match=what):
        parse_method(spec)


@pytest.mark.parametrize("spec", ["ema(m=0)", "ema(m=1,alpha=1)", "lc(forget=1)", "fda(beta=0)", "fda(beta=0.5,m=1)"])
def test_range_edges_are_accepted(spec: str) -> None:
    parse_method(spec)


@pytest.mark.parametrize("spec", ["ptbn+ema", "ema+ptbn", "source+ema", "tent+ema(m=0.2)", "lc+source+tent"])
def test_two_norms_cannot_be_combined(spec: str) -> None:
    with pytest.raises(ValueError, match="combines two of"):
        parse_method(spec)


@pytest.mark.parametrize("spec", ["lc+lc", "ema+ema", "fda+ema+fda(m=0.5)", "lc(forget=0.9)+ema+lc"])
def test_repeated_component(spec: str) -> None:
    with pytest.raises(ValueError, match="twice"):
        parse_method(spec)


def test_layers_parameter_of_ema_and_auto() -> None:
    assert parse_method("ema(m=0.1,layers=12)").layers == 12
    assert parse_method("auto(layers=20)+lc").layers == 20
    assert parse_method("auto").layers == parse_method(RECOMMENDED).layers
    with pytest.raises(ValueError, match="layers"):
        parse_method("ema(layers=-1)")

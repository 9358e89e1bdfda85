"""Method spec parsing: components joined by '+', each `name` or `name(key=value,...)`."""
import dataclasses

import pytest

from driftseg.adapters.ema_bn import EMAConfig
from driftseg.adapters.label_calibration import LabelCalibrationConfig
from driftseg.adapters import spec as spec_module
from driftseg.adapters.registry import ALIASES, METHODS
from driftseg.adapters.spec import RECOMMENDED, MethodSpec, method_table, parse_method, resolve_method, serve_refusal
from driftseg.adapters.tent import TentConfig


def ema(spec: str) -> tuple:
    """The network component's name and its (m, alpha)."""
    parsed = parse_method(spec)
    cfg = parsed.config("ema")
    return parsed.network, cfg.m, cfg.alpha


def test_source_is_the_default_spec() -> None:
    spec = parse_method("source")
    assert spec == MethodSpec()
    assert spec.network == "source" and spec.config("lc") is None and spec.config("fda") is None


def test_ptbn_is_ema_with_momentum_one_alpha_zero() -> None:
    spec = parse_method("ptbn")
    assert ema("ptbn") == ("ema", 1.0, 0.0)
    assert spec == parse_method("ema(m=1,alpha=0)")
    assert spec == parse_method("ema(alpha=0.0, m=1.0)")
    assert spec.config("lc") is None and spec.config("fda") is None


def test_ema_with_label_calibration() -> None:
    spec = parse_method("ema(m=0.1,alpha=0.5)+lc")
    assert spec == MethodSpec((("ema", EMAConfig(m=0.1, alpha=0.5)), ("lc", LabelCalibrationConfig())))
    assert isinstance(spec.config("ema").m, float) and isinstance(spec.config("ema").alpha, float)
    assert spec.config("lc").forget == 1.0
    # order of the components and whitespace do not matter
    assert parse_method(" lc + ema( m = 0.1 , alpha = 0.5 ) ") == spec


def test_ema_defaults() -> None:
    assert ema("ema") == ("ema", 0.1, 0.0)
    assert parse_method("ema()") == parse_method("ema")


def test_tent_parameters() -> None:
    spec = parse_method("tent(lr=0.01,steps=2)")
    assert spec == MethodSpec((("tent", TentConfig(lr=0.01, steps=2)),))
    assert type(spec.config("tent").steps) is int
    assert parse_method("tent(lr=1e-4)").config("tent").lr == pytest.approx(1e-4)
    assert parse_method("tent") == MethodSpec((("tent", TentConfig(lr=1e-3, steps=1)),))


def test_fda_with_ema() -> None:
    spec = parse_method("fda(beta=0.05,mode=swap,m=0.2)+ema")
    fda = spec.config("fda")
    assert fda.mode == "swap"
    assert fda.beta == pytest.approx(0.05)
    assert fda.m == pytest.approx(0.2)
    # fda's m is its own, not the ema's
    assert ema("fda(beta=0.05,mode=swap,m=0.2)+ema") == ("ema", 0.1, 0.0)
    assert parse_method("fda").config("fda").mode == "ratio"
    assert parse_method("fda").network == "source"
    # the components run in their stages' order: input, network, output
    assert [name for name, _ in parse_method("lc+ema+fda").parts] == ["fda", "ema", "lc"]


def test_lc_forget() -> None:
    spec = parse_method("lc(forget=0.9)")
    assert spec.config("lc") and spec.config("lc").forget == pytest.approx(0.9)
    assert spec.network == "source"
    assert parse_method("lc(forget=1)").config("lc").forget == 1.0


def test_lc_stride() -> None:
    assert parse_method("lc").config("lc").stride == 2
    assert parse_method("lc(stride=1,forget=0.5)").config("lc").stride == 1


def test_spec_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        parse_method("ema").config("ema").m = 0.5  # type: ignore[misc]


def test_what_backprop_and_export_allow() -> None:
    assert parse_method("tent").backprop and not parse_method("auto").backprop
    assert parse_method("auto").export_refusal() is None
    assert "backprop" in parse_method("tent").export_refusal()
    assert "FFT" in parse_method("auto+fda").export_refusal()


def test_auto_resolves_to_the_recommended_spec_alone() -> None:
    assert resolve_method(" auto ") == RECOMMENDED and parse_method(RECOMMENDED).network == "auto"
    assert resolve_method(" ema(m=0.1)+lc ") == "ema(m=0.1)+lc"
    assert resolve_method("auto(m=0.5)") == "auto(m=0.5)" and resolve_method("auto+fda") == "auto+fda"


def test_the_method_table_names_every_component_and_alias_once() -> None:
    table = {row.name: row for row in method_table()}
    assert list(table) == [*METHODS, *ALIASES]
    assert table["auto"].stands_for == RECOMMENDED and table["ptbn"].stands_for == "ema(m=1,alpha=0)"
    assert table["ema"].stands_for == "" and table["ema"].parameters == {"m": 0.1, "alpha": 0.0, "layers": 0, "stride": 1,
                                                                         "lag": 0}
    assert table["diga"].stage == "network" and table["lc"].stage == "output" and table["fda"].stage == "input"
    backprop = {name for name, row in table.items() if row.backprop}
    assert backprop == {"tent", "cotta"} == {name for name, row in table.items() if not row.served}
    assert {name for name, row in table.items() if not row.exported} == {"tent", "cotta", "fda", "lame"}
    undocumented = [name for name in table if f"\n    {name}" not in spec_module.__doc__]
    assert not undocumented, f"adapters/spec.py's docstring does not describe {undocumented}"


def test_serve_refusal_names_the_served_methods() -> None:
    assert serve_refusal(parse_method("auto")) is None and serve_refusal(parse_method("auto+fda")) is None
    refusal = serve_refusal(parse_method("cotta"))
    assert "cotta adapts by backprop" in refusal
    served = refusal.split("serve a backprop-free method (")[1].rstrip(")").split(", ")
    assert served == [row.name if row.stage != "output" else f"+{row.name}" for row in method_table()
                      if row.name not in ("tent", "cotta")]
    assert "FFT" in serve_refusal(parse_method("auto+fda"), "onnx") and serve_refusal(parse_method("auto"), "onnx") is None


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
        ("lc(stride=-1)", "lc stride"),
        ("fda(beta=0.6)", "fda beta"),
        ("fda(beta=-0.01)", "fda beta"),
        ("fda(m=0)", "fda m"),
        ("fda(m=1.2)", "fda m"),
        ("fda(mode=blend)", "fda mode"),
        ("ema(lag=2)", "lag must be 0"),
        ("ema(m=0.3,lag=1)", r"lag=1 needs m <= 0.25"),
        ("auto(lag=1)", "takes parameters"),
        ("auto(floor=0.8,far=0.5,low=0.5)", "auto far"),
        ("auto(floor=0.8,far=8,low=0.9)", "auto far"),
        ("auto(floor=0.8,reach=1)", "auto reach"),
        ("auto(floor=0.8,far=8,low=0.5,reach=2)", "auto reach"),
    ],
)
def test_out_of_range(spec: str, what: str) -> None:
    with pytest.raises(ValueError, match=what):
        parse_method(spec)


@pytest.mark.parametrize("spec", ["ema(m=0)", "ema(m=1,alpha=1)", "lc(forget=1)", "fda(beta=0)", "fda(beta=0.5,m=1)",
                                  "ema(m=0.25,lag=1)", "auto(floor=0.8,far=1,low=0.8)",
                                  "auto(floor=0.8,far=1,low=0.8,reach=1)"])
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
    assert parse_method("ema(m=0.1,layers=12)").config("ema").layers == 12
    assert parse_method("auto(layers=20)+lc").config("auto").layers == 20
    assert parse_method("auto") == parse_method(RECOMMENDED) and parse_method("auto").config("auto").layers == 0
    with pytest.raises(ValueError, match="layers"):
        parse_method("ema(layers=-1)")


def test_peer_aliases() -> None:
    from driftseg.adapters.diga import MixBNConfig, ProtoConfig

    assert parse_method("norm_alpha") == MethodSpec((("mixbn", MixBNConfig(lam=0.9)),))
    assert parse_method("rbn") == parse_method("ema(m=0.05,alpha=0)")
    assert parse_method("diga") == MethodSpec((("mixbn", MixBNConfig(lam=0.8)), ("proto", ProtoConfig())))
    assert [name for name, _ in parse_method("lc+diga").parts] == ["mixbn", "proto", "lc"]  # lc calibrates DIGA's output
    assert parse_method("lame").network == "source" and parse_method("auto+lame").network == "auto"
    assert parse_method("cotta").backprop and "backprop" in parse_method("cotta").export_refusal()
    with pytest.raises(ValueError, match="takes parameters"):
        parse_method("diga(lam=0.5)")


@pytest.mark.parametrize("spec, match", [
    ("diga+lame", "combines \\['proto', 'lame'\\]"),  # both replace the prediction from the features
    ("diga+proto", "names \\['proto'\\] twice"),
    ("diga+ema", "combines two of the network components"),
    ("tent+lame", "tent does not provide"),
    ("cotta+proto", "combine it with one of \\['adamixbn', 'auto', 'dua', 'ema', 'mixbn', 'source', 'unmixtns'\\]"),
])
def test_feature_readers_need_one_network_that_provides_them(spec, match) -> None:
    with pytest.raises(ValueError, match=match):
        parse_method(spec)


@pytest.mark.parametrize("spec, what", [
    ("mixbn(lam=1.1)", "mixbn lam"), ("proto(conf=2)", "proto conf"), ("proto(tau=0)", "proto tau"),
    ("dua(copies=1)", "dua copies"), ("dua(copies=65)", "dua copies"), ("lame(k=0)", "lame needs"),
    ("lame(lam=-1)", "lame needs"), ("cotta(lr=0)", "cotta lr"), ("cotta(restore=2)", "cotta restore"),
])
def test_peer_parameters_out_of_range(spec, what) -> None:
    with pytest.raises(ValueError, match=what):
        parse_method(spec)

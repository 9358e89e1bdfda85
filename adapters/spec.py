"""Method specs: components joined by '+', each `name` or `name(key=value,...)`.

    source                      frozen model, the checkpoint's BN statistics
    ptbn                        prediction-time BN: each frame's own statistics (ema(m=1,alpha=0))
    ema(m=0.1,alpha=0,layers=0) EMA AdaBN, statistics blended with the source's by alpha; only
                                the first `layers` BN layers adapted, the rest folded (0: all)
    auto(m=0.1,floor=0,switch=2,layers=0)  EMA AdaBN with per-layer alpha from the shift score and
                                restarts at domain switches (adapters/auto.py)
    tent(lr=0.001,steps=1)      TENT, the backprop peer
    lc(forget=1,stride=2)       label calibration with running prototypes, on the network's output
                                averaged over stride x stride pixels
    fda(beta=0.01,mode=ratio,m=0.1)   FDA against the stream's recent spectrum
e.g. "ema(m=0.1,alpha=0.5)+lc". The bare name `auto` is the recommended pipeline, RECOMMENDED.
"""
import re
from dataclasses import dataclass, replace

NORMS = ("source", "ema", "auto", "tent")
RECOMMENDED = "auto(m=0.1,floor=0.2,switch=2,layers=12)+lc"  # chosen by bench/results/methods.json
FDA_MODES = ("swap", "ratio")


@dataclass(frozen=True)
class MethodSpec:
    norm: str = "source"
    momentum: float = 0.1
    alpha: float = 0.0
    layers: int = 0  # BN layers adapted, the first ones; 0: all
    auto_floor: float = 0.0
    auto_switch: float = 2.0
    tent_lr: float = 1e-3
    tent_steps: int = 1
    lc: bool = False
    lc_forget: float = 1.0
    lc_stride: int = 2
    fda_mode: str | None = None
    fda_beta: float = 0.01
    fda_momentum: float = 0.1

    def __post_init__(self):
        checks = [
            (self.norm in NORMS, f"norm must be one of {NORMS}"),
            (0.0 <= self.momentum <= 1.0, "ema m must be in [0, 1]"),
            (0.0 <= self.alpha <= 1.0, "ema alpha must be in [0, 1]"),
            (self.layers >= 0, "layers must be >= 0 (0: all BN layers)"),
            (0.0 <= self.auto_floor <= 1.0, "auto floor must be in [0, 1]"),
            (self.auto_switch > 0, "auto switch must be > 0"),
            (self.tent_lr > 0 and self.tent_steps >= 1, "tent needs lr > 0 and steps >= 1"),
            (0.0 < self.lc_forget <= 1.0, "lc forget must be in (0, 1]"),
            (self.lc_stride >= 1, "lc stride must be >= 1"),
            (self.fda_mode in (None, *FDA_MODES), f"fda mode must be one of {FDA_MODES}"),
            (0.0 <= self.fda_beta <= 0.5, "fda beta must be in [0, 0.5]"),
            (0.0 < self.fda_momentum <= 1.0, "fda m must be in (0, 1]"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


# component -> (fixed fields, {parameter name in the spec: field})
_COMPONENTS = {
    "source": ({"norm": "source"}, {}),
    "ptbn": ({"norm": "ema", "momentum": 1.0, "alpha": 0.0}, {}),
    "ema": ({"norm": "ema"}, {"m": "momentum", "alpha": "alpha", "layers": "layers"}),
    "auto": ({"norm": "auto"}, {"m": "momentum", "floor": "auto_floor", "switch": "auto_switch", "layers": "layers"}),
    "tent": ({"norm": "tent"}, {"lr": "tent_lr", "steps": "tent_steps"}),
    "lc": ({"lc": True}, {"forget": "lc_forget", "stride": "lc_stride"}),
    "fda": ({"fda_mode": "ratio"}, {"beta": "fda_beta", "mode": "fda_mode", "m": "fda_momentum"}),
}
_PART = re.compile(r"^\s*([a-z_]+)\s*(?:\((.*)\))?\s*$")


def _value(text: str, like):
    """`text` converted to the type of the field's default `like`."""
    if like is None or isinstance(like, str):
        return text
    return int(text) if isinstance(like, int) else float(text)


def parse_method(spec: str) -> MethodSpec:
    """Parse a method spec such as "ema(m=0.1,alpha=0.5)+lc"."""
    if spec.strip() == "auto":
        spec = RECOMMENDED
    fields: dict = {}
    seen: set[str] = set()
    for part in spec.split("+"):
        match = _PART.match(part)
        if not match or match.group(1) not in _COMPONENTS:
            raise ValueError(f"unknown method component {part.strip()!r} in {spec!r}; expected one of {sorted(_COMPONENTS)}")
        name, args = match.group(1), match.group(2)
        fixed, params = _COMPONENTS[name]
        if name in seen or ("norm" in fixed and "norm" in fields):
            raise ValueError(f"{spec!r} names {name!r} twice or combines two of source/ptbn/ema/tent")
        seen.add(name)
        fields.update(fixed)
        for arg in filter(None, (a.strip() for a in (args or "").split(","))):
            key, eq, text = arg.partition("=")
            key = key.strip()
            if not eq or key not in params:
                raise ValueError(f"{name} takes parameters {sorted(params)} as key=value, got {arg!r}")
            try:
                fields[params[key]] = _value(text.strip(), getattr(MethodSpec, params[key]))
            except ValueError as e:
                raise ValueError(f"bad value for {name}({key}=...): {text.strip()!r} ({e})") from None
    return replace(MethodSpec(), **fields)

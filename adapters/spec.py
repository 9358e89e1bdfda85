"""Method specs: components joined by '+', each `name` or `name(key=value,...)`.

    source                      frozen model, the checkpoint's BN statistics
    ptbn                        prediction-time BN: each frame's own statistics (ema(m=1,alpha=0))
    ema(m=0.1,alpha=0,layers=0,stride=1,lag=0)  EMA AdaBN, statistics blended with the source's by alpha;
                                only the first `layers` BN layers adapted, the rest folded (0: all); a
                                frame's statistics from every `stride`-th pixel and row; lag=1 (m <= 0.25):
                                a frame normalised with the statistics up to the one before, folded into
                                the convolutions
    auto(m=0.1,floor=0,switch=2,layers=0,stride=1,guard=0)  EMA AdaBN with per-layer alpha from the shift
                                score and restarts at domain switches (adapters/auto.py)
    norm_alpha                  Schneider et al. 2020: 0.9 source + 0.1 frame statistics (mixbn(lam=0.9))
    rbn                         robust-BN-style slow EMA of the statistics (ema(m=0.05))
    mixbn(lam=0.8)              lam * source + (1 - lam) * the frame's BN means and variances (adapters/diga.py)
    adamixbn(m=0.1)             AdaMixBN's distance-weighted mix of source and stream statistics (adapters/adamixbn.py)
    unmixtns(k=16,temp=0.07,m=0.0016)  UnMix-TNS: K statistics components per BN layer (adapters/unmixtns.py)
    dua(copies=16)              DUA: BN statistics updated from augmented copies of each frame (adapters/dua.py)
    tent(lr=0.001,steps=1)      TENT, the backprop peer
    cotta(lr=0.0003,ema=0.999,restore=0.01,conf=0.69)  CoTTA, the backprop ceiling (adapters/cotta.py)
    proto(conf=0.9,rho=0.1,tau=1,hist=0.8,fuse=0.8)    DIGA's prototype module, on the network's features
    diga                        DIGA (mixbn(lam=0.8)+proto)
    lame(k=5,lam=1,steps=100)   LAME: the output smoothed over a kNN graph of the network's features
    lc(forget=1,stride=2)       label calibration with running prototypes, on the network's output
                                averaged over stride x stride pixels
    rdumb(every=100)            RDumb: the stream's whole state reset to the source every 100 frames, e.g.
                                rdumb+ema(m=0.1) (adapters/rdumb.py)
    fda(beta=0.01,mode=ratio,m=0.1)   FDA against the stream's recent spectrum
e.g. "ema(m=0.1,alpha=0.5)+lc". At most one network component (source, ema, auto, mixbn, adamixbn,
unmixtns, dua, tent, cotta; `source` when none is named), and at most one of the components that read the network's
features (proto, lame), on a network that provides them (source, ema, auto, mixbn, adamixbn, unmixtns, dua). The bare name
`auto` is the recommended pipeline, RECOMMENDED. Each component's parameters are its Config dataclass
(adapters/registry.py names the components and the aliases).

This module and adapters/registry.py are the one place that knows the methods: `method_table()` lists
every name with what it stands for and whether it is served and exported (what the docs list),
`resolve_method` says what `auto` stands for, `serve_refusal` why a server cannot run a method.
"""
import dataclasses
import re
from dataclasses import dataclass

from driftseg.adapters.component import NETWORK, OUTPUT, STAGES, Component
from driftseg.adapters.registry import ALIASES, METHODS

# chosen on the 360x480 checkpoint's dev streams (experiments/peers.sh floor, far, reach)
RECOMMENDED = "auto(m=1,floor=0.8,far=8,low=0.5,reach=1,switch=2,layers=0)+lc"
_PART = re.compile(r"^\s*([a-z_]+)\s*(?:\((.*)\))?\s*$")


@dataclass(frozen=True)
class MethodSpec:
    """The components of a method, each with its parsed Config, in the order they run: input
    components, the network component, output components."""

    parts: tuple[tuple[str, object], ...] = (("source", METHODS["source"].Config()),)

    @property
    def network(self) -> str:
        """The network component's name: one of the NETWORK stage's (adapters/registry.py)."""
        return next(name for name, _ in self.parts if METHODS[name].stage == NETWORK)

    def config(self, name: str):
        """The Config of component `name`, or None where the method does not use it."""
        return dict(self.parts).get(name)

    @property
    def classes(self) -> list[type[Component]]:
        return [METHODS[name] for name, _ in self.parts]

    @property
    def backprop(self) -> bool:
        """Adapts by backprop (tent, cotta): float32, one stream per batch, neither compiled, exported nor served."""
        return any(c.backprop for c in self.classes)

    def export_refusal(self) -> str | None:
        """Why the method cannot run inside the ONNX export of the adapted function, or None."""
        reasons = [f"{name}: {METHODS[name].export_refusal_of(config)}" for name, config in self.parts
                   if METHODS[name].export_refusal_of(config)]
        return "; ".join(reasons) or None

    def parameters(self) -> dict[str, dict]:
        """Every component's parameters by name, defaults included."""
        return {name: dataclasses.asdict(config) for name, config in self.parts}


def resolve_method(method: str) -> str:
    """The spec a method string stands for, as snapshots, exported ONNX files and log lines record it:
    the bare `auto` is RECOMMENDED, written out so that a snapshot still names what made it after the
    recommendation changes; any other spec as it is, surrounding spaces dropped."""
    method = method.strip()
    return RECOMMENDED if method == "auto" else method


@dataclass(frozen=True)
class MethodInfo:
    """One name a method spec takes: a component, or an alias for components."""

    name: str
    stands_for: str  # what an alias (and the bare `auto`) expands to; "" for another component
    stage: str  # input, network or output: a component's; an alias's first component's (each alias has a network one)
    backprop: bool  # adapts by backprop (tent, cotta)
    served: bool  # `driftseg serve` runs it (serve_refusal)
    exported: bool  # `driftseg export onnx` and DRIFTSEG_ENGINE=onnx run it (MethodSpec.export_refusal)
    parameters: dict  # a component's parameters and their defaults; {} for an alias


def method_table() -> list[MethodInfo]:
    """Every name a method spec takes, components (in the order they run) then aliases: what the
    docs' table of methods and the refusals' lists of alternatives read."""
    rows = []
    for name in [*METHODS, *ALIASES]:
        spec = parse_method(name)
        alias = ALIASES.get(name, RECOMMENDED if name == "auto" else "")
        stage = METHODS[_PART.match(_expand(name)[0]).group(1)].stage
        parameters = dataclasses.asdict(METHODS[name].Config()) if name in METHODS else {}
        rows.append(MethodInfo(name, alias, stage, spec.backprop, not spec.backprop,
                               spec.export_refusal() is None, parameters))
    return rows


def measures_shift(spec: MethodSpec) -> bool:
    """Whether the method measures a stream's shift score (its network component is auto's)."""
    return spec.network == "auto"


def serve_refusal(spec: MethodSpec, engine: str = "torch") -> str | None:
    """Why a server cannot serve the method on `engine` (torch or onnx: DRIFTSEG_ENGINE), or None."""
    if spec.backprop:
        served = [row.name if row.stage != OUTPUT else f"+{row.name}" for row in method_table() if row.served]
        return (f"{spec.network} adapts by backprop and updates its model in place, so a stream's state cannot be "
                f"snapshotted or rolled back; serve a backprop-free method ({', '.join(served)})")
    refusal = spec.export_refusal()
    if engine == "onnx" and refusal:
        return f"engine onnx cannot run this method ({refusal}): drop that component or use engine torch"
    return None


def _value(text: str, like):
    """`text` converted to the type of the parameter's default `like`."""
    if isinstance(like, str):
        return text
    return int(text) if isinstance(like, int) else float(text)


def _expand(part: str) -> list[str]:
    """The parts an alias stands for; any other part as it is."""
    match = _PART.match(part)
    name = match.group(1) if match else None
    if name not in ALIASES:
        return [part]
    if match.group(2) and match.group(2).strip():
        raise ValueError(f"{name} takes parameters [] as key=value, got {match.group(2).strip()!r} "
                         f"(it is {ALIASES[name]})")
    return ALIASES[name].split("+")


def _parse_part(part: str, spec: str) -> tuple[str, object]:
    match = _PART.match(part)
    name = match.group(1) if match else None
    if name not in METHODS:
        raise ValueError(f"unknown method component {part.strip()!r} in {spec!r}; expected one of "
                         f"{sorted([*METHODS, *ALIASES])}")
    config_class = METHODS[name].Config
    defaults = {f.name: f.default for f in dataclasses.fields(config_class)}
    values = {}
    for arg in filter(None, (a.strip() for a in (match.group(2) or "").split(","))):
        key, eq, text = arg.partition("=")
        key = key.strip()
        if not eq or key not in defaults:
            raise ValueError(f"{name} takes parameters {sorted(defaults)} as key=value, got {arg!r}")
        try:
            values[key] = _value(text.strip(), defaults[key])
        except ValueError as e:
            raise ValueError(f"bad value for {name}({key}=...): {text.strip()!r} ({e})") from None
    return name, config_class(**values)


def parse_method(spec: str) -> MethodSpec:
    """Parse a method spec such as "ema(m=0.1,alpha=0.5)+lc"; ValueError saying what is wrong."""
    spec = resolve_method(spec)
    parts = [_parse_part(p, spec) for part in spec.split("+") for p in _expand(part)]
    written = [_PART.match(part).group(1) for part in spec.split("+")]  # aliases as written
    names = [name for name, _ in parts]
    repeated = sorted({name for name in written if written.count(name) > 1})
    if repeated:
        raise ValueError(f"{spec!r} names {repeated} twice")
    networks = [name for name in names if METHODS[name].stage == NETWORK]
    if len(networks) > 1:
        named = [name for name, c in METHODS.items() if c.stage == NETWORK]
        raise ValueError(f"{spec!r} combines two of the network components {networks}: name one "
                         f"({', '.join(named)})")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"{spec!r} names {repeated} twice (counting what its aliases stand for)")
    if not networks:
        parts.append(("source", METHODS["source"].Config()))
    _check_features(spec, parts)
    order = list(METHODS)
    parts.sort(key=lambda p: (STAGES.index(METHODS[p[0]].stage), order.index(p[0])))
    return MethodSpec(tuple(parts))


def _check_features(spec: str, parts: list[tuple[str, object]]) -> None:
    """ValueError unless at most one component reads the network's features, from a network that
    provides them."""
    readers = [(METHODS[name], METHODS[name].needs_of(config)) for name, config in parts if METHODS[name].needs_of(config)]
    if len(readers) > 1:
        raise ValueError(f"{spec!r} combines {[c.name for c, _ in readers]}, each of which replaces the network's "
                         "prediction from its features: name one")
    network = next(METHODS[name] for name, _ in parts if METHODS[name].stage == NETWORK)
    if readers and not set(readers[0][1]) <= set(network.provides):
        reader, needs = readers[0]
        providers = sorted(c.name for c in METHODS.values() if set(needs) <= set(c.provides))
        raise ValueError(f"{reader.name} reads the network's {list(needs)}, which {network.name} "
                         f"does not provide: combine it with one of {providers}")

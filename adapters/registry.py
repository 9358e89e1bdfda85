"""The adaptation methods by spec name (DESIGN.md: registries by name). A new method is one module
with a Component subclass (adapters/component.py) and one line here."""
from driftseg.adapters.adamixbn import AdaMix
from driftseg.adapters.auto import Auto
from driftseg.adapters.component import Component
from driftseg.adapters.cotta import CoTTA
from driftseg.adapters.diga import MixBN, Proto
from driftseg.adapters.dua import DUA
from driftseg.adapters.ema_bn import EMA
from driftseg.adapters.fda import FDA
from driftseg.adapters.frozen import Source
from driftseg.adapters.label_calibration import LabelCalibration
from driftseg.adapters.lame import LAME
from driftseg.adapters.rdumb import RDumb
from driftseg.adapters.tent import Tent
from driftseg.adapters.unmixtns import UnMixTNS

# in the order components of one stage run: proto and lame replace the network's prediction, label
# calibration then calibrates whatever came before it
METHODS: dict[str, type[Component]] = {
    c.name: c for c in (RDumb, Source, EMA, Auto, MixBN, AdaMix, UnMixTNS, DUA, Tent, CoTTA, Proto, LAME, LabelCalibration,
                        FDA)}
# names that stand for components with fixed parameters
ALIASES = {
    "ptbn": "ema(m=1,alpha=0)",  # prediction-time BN: each frame's own statistics (Nado et al. 2020)
    # Schneider et al. 2020: BN statistics N/(N+n) source + n/(N+n) frame, means and variances alike
    # (their linear mix of variances is mixbn's; ema(m=1,alpha=0.9) would add the mixture's mean term)
    "norm_alpha": "mixbn(lam=0.9)",
    "rbn": "ema(m=0.05)",  # robust-BN-style (RoTTA, Yuan et al. 2023): slow EMA of the statistics from the source's
    "diga": "mixbn(lam=0.8)+proto",  # DIGA (Wang et al. 2023), adapters/diga.py
}


def create_component(name: str, config, ckpt, model, device) -> Component:
    """The component `name` with its parsed `config`, for one checkpoint's network on `device`."""
    if name not in METHODS:
        raise ValueError(f"unknown method component {name!r}; expected one of {sorted(METHODS)}")
    return METHODS[name](config, ckpt, model, device)

"""The adaptation methods by spec name (DESIGN.md: registries by name). A new method is one module
with a Component subclass (adapters/component.py) and one line here."""
from driftseg.adapters.auto import Auto
from driftseg.adapters.component import Component
from driftseg.adapters.ema_bn import EMA
from driftseg.adapters.fda import FDA
from driftseg.adapters.frozen import Source
from driftseg.adapters.label_calibration import LabelCalibration
from driftseg.adapters.tent import Tent

METHODS: dict[str, type[Component]] = {c.name: c for c in (Source, EMA, Auto, Tent, LabelCalibration, FDA)}
# names that stand for a component with fixed parameters
ALIASES = {"ptbn": "ema(m=1,alpha=0)"}  # prediction-time BN: each frame's own statistics (Nado et al. 2020)


def create_component(name: str, config, ckpt, model, device) -> Component:
    """The component `name` with its parsed `config`, for one checkpoint's network on `device`."""
    if name not in METHODS:
        raise ValueError(f"unknown method component {name!r}; expected one of {sorted(METHODS)}")
    return METHODS[name](config, ckpt, model, device)

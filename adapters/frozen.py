"""`source`: the frozen model, the checkpoint's BN statistics folded into the convolutions; the
reference every method is measured against, and what a stream with no network adaptation runs."""
from dataclasses import dataclass

from driftseg.adapters.component import FEATURES, NETWORK, Component, run_network
from driftseg.models.batchnorm import fold_batchnorm


@dataclass(frozen=True)
class SourceConfig:
    pass


class Source(Component):
    name, stage, Config = "source", NETWORK, SourceConfig
    provides = FEATURES

    def __init__(self, config, ckpt, model, device):
        super().__init__(config, ckpt, model, device)
        self.module = fold_batchnorm(model)

    def forward(self, images, batch, out, scratch):
        return run_network(self.module, images, scratch)

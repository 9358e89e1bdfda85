"""RDumb (Press et al., NeurIPS 2023, "RDumb: A simple approach that questions our progress in continual
test-time adaptation"; code oripress/CCC): the stream's whole state is reset to the source every `every`
frames, whatever method it runs. A wrapper over any spec: `rdumb(every=100)+ema(m=0.1)` resets the EMA
statistics, and every other part of the stream's state, before frames every, 2 every, ...

RDumb resets its ETA model every 1000 steps of 64 images, for streams of millions of images; the streams of
this project are hundreds of frames, so the default here is 100 frames. The frame count is the stream's
(`StreamState.frames`, which a reset sets back to 0), so a stream reset by hand (POST /adapt/reset) starts
its count afresh too. The bare `auto` names the recommended pipeline only as a whole spec: inside one, write
what it stands for (`rdumb+auto(m=1,floor=0.8,far=8,low=0.5,switch=2,layers=0)+lc`).
"""
from dataclasses import dataclass

from driftseg.adapters.component import INPUT, Component


@dataclass(frozen=True)
class RDumbConfig:
    every: int = 100  # frames between resets to the source

    def __post_init__(self):
        if self.every < 1:
            raise ValueError(f"rdumb every must be >= 1 frame, got {self.every}")


class RDumb(Component):
    """`rdumb`: no state of its own and nothing in the forward; the pipeline resets a stream whose count
    of frames since its last reset has reached `every`."""

    name, stage, Config = "rdumb", INPUT, RDumbConfig

    def resets(self, state):
        return state.frames >= self.config.every

"""The stages of a /segment request, named once. The request path times each; the metrics
(driftseg_stage_duration_seconds{stage}), the Server-Timing header and the JSON summary's
`timings_ms` show them under these names, in this order."""
from collections.abc import Mapping
from enum import StrEnum


class Stage(StrEnum):
    WAIT = "wait"
    DECODE = "decode"
    MODEL = "model"
    ENCODE = "encode"

    @property
    def description(self) -> str:
        return _DESCRIPTIONS[self]


_DESCRIPTIONS = {
    Stage.WAIT: "waiting for the stream (earlier frames of it, a snapshot read)",
    Stage.DECODE: "decoding the frame (for batched decoding: reading its JPEG header)",
    Stage.MODEL: "the frame's batch in the model thread (batched JPEG decoding, the network, the label maps); "
                 "its wait in the batcher's queue excluded",
    Stage.ENCODE: "encoding the answer (PNG label map, JPEG overlay or class histogram)",
}


def server_timing(seconds: Mapping[Stage, float]) -> str:
    """The Server-Timing header of a request whose stages took `seconds`: `wait;dur=0.05, decode;dur=...` (ms)."""
    return ", ".join(f"{stage};dur={seconds[stage] * 1000:.2f}" for stage in Stage)

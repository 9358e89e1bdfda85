"""The service's one seam to adapters/: the pipeline a server runs, built in one function, and every
read of a method spec's or a stream state's per-method parts (the shift score a frame answers with,
the restarts, what GET /adaptation/state shows). When adapters/pipeline.py changes shape (its
methods, StreamState's parts, how the onnx engine plugs in), this file follows it and the rest of the
service does not. Which methods and engines a server refuses is the registry's to say
(adapters/spec.py: serve_refusal), which the settings ask."""
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from driftseg.adapters.component import StreamState
from driftseg.adapters.engines import create_backend
from driftseg.adapters.onnx_engine import onnx_metadata
from driftseg.adapters.pipeline import Pipeline
from driftseg.adapters.spec import MethodSpec
from driftseg.models.checkpoint import file_sha256, load_checkpoint
from driftseg.service.settings import Settings
from driftseg.service.snapshots import origin_key


@dataclass(frozen=True)
class Served:
    """What a server serves: the pipeline every stream shares, the method it runs, and of the
    checkpoint its class names, class colours and sha256 (which snapshots and exported engines carry)."""

    pipeline: Pipeline
    spec: MethodSpec
    method: str  # the spec as written into snapshots: 'auto' expanded (Settings.method_string)
    class_names: list[str]
    palette: np.ndarray  # [classes, 3] uint8
    fingerprint: str


def load_pipeline(settings: Settings, checkpoint: Path | None = None) -> Served:
    """Load the checkpoint (default: the settings') and build the pipeline on the settings' device, engine
    and precision (the onnx engine: a file exported for this checkpoint and method, or one exported now
    into the state dir)."""
    checkpoint = checkpoint or settings.checkpoint
    ckpt = load_checkpoint(checkpoint)
    spec, method = settings.spec, settings.method_string
    fingerprint = file_sha256(checkpoint)
    onnx_file = settings.onnx_model or settings.state_dir / "onnx" / f"{origin_key(fingerprint, method)}.onnx"
    backend = create_backend("compiled" if settings.compile else settings.engine, onnx_file,
                             onnx_metadata(fingerprint, method))
    pipeline = Pipeline(ckpt, spec, settings.torch_device, backend, settings.precision)
    return Served(pipeline, spec, method, list(ckpt.class_names), np.asarray(ckpt.palette, dtype=np.uint8), fingerprint)


def shift_and_alpha(pipeline: Pipeline, state: StreamState) -> tuple[float | None, float | None]:
    """The stream's shift score and the mean over BN layers of the alpha for its next frame, where the
    method measures them (auto)."""
    return pipeline.shift(state)


def restarts(state: StreamState) -> tuple[int | None, list[int]]:
    """Frames since the automatic mode last restarted the stream from the source, and the frames where it
    did (None and [] for methods without it)."""
    auto = state.parts.get("auto")
    return (auto.since_reset, list(auto.switches)) if auto is not None else (None, [])


def describe_method_state(served: Served, state: StreamState) -> dict:
    """The method's part of GET /adaptation/state (service.schemas.StreamStateSummary): the spec and its
    parameters, shift score and alpha, and what each component shows of the stream (restarts, per-BN-layer
    drift, label calibration, FDA)."""
    score, alpha = shift_and_alpha(served.pipeline, state)
    return {
        "method": {"spec": served.method, "parameters": served.spec.parameters()},
        "shift_score": score, "alpha_mean": alpha, "since_reset": None, "switches": [],
        "layers": [], "label_calibration": None, "fda": None,
        **served.pipeline.describe(state),
    }

"""The service's one seam to adapters/: the pipeline a server runs, built in one function, and every
read of a method spec's or a stream state's per-method parts (which methods and engines a server
refuses, how many frames a method batches, the shift score a frame answers with, what GET
/adaptation/state shows). When adapters/pipeline.py changes shape (its methods, StreamState's
parts, how the onnx engine plugs in), this file follows it and the rest of the service does not.

torch is imported inside the functions that need it: settings.py imports this file for the refusals,
and `driftseg serve --help` should not wait for torch."""
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from driftseg.adapters.spec import MethodSpec

if TYPE_CHECKING:
    from driftseg.adapters.component import StreamState
    from driftseg.adapters.pipeline import Pipeline
    from driftseg.service.settings import Settings


@dataclass(frozen=True)
class Served:
    """What a server serves: the pipeline every stream shares, the method it runs, and of the
    checkpoint its class names, class colours and sha256 (which snapshots and exported engines carry)."""

    pipeline: "Pipeline"
    spec: MethodSpec
    method: str  # the spec as written into snapshots: 'auto' expanded (Settings.method_string)
    class_names: list[str]
    palette: np.ndarray  # [classes, 3] uint8
    fingerprint: str


def load_pipeline(settings: "Settings") -> Served:
    """Load the checkpoint and build the pipeline on the settings' device, engine and precision (the
    onnx engine: a file exported for this checkpoint and method, or one exported now into the state dir)."""
    from driftseg.adapters.backends import create_backend
    from driftseg.adapters.onnx_engine import onnx_metadata
    from driftseg.adapters.pipeline import Pipeline
    from driftseg.models.checkpoint import file_sha256, load_checkpoint
    from driftseg.service.snapshots import origin_key

    ckpt = load_checkpoint(settings.checkpoint)
    spec, method = settings.spec, settings.method_string
    fingerprint = file_sha256(settings.checkpoint)
    onnx_file = settings.onnx_model or settings.state_dir / "onnx" / f"{origin_key(fingerprint, method)}.onnx"
    backend = create_backend("compiled" if settings.compile else settings.engine, onnx_file,
                             onnx_metadata(fingerprint, method))
    pipeline = Pipeline(ckpt, spec, settings.torch_device, backend, settings.precision)
    return Served(pipeline, spec, method, list(ckpt.class_names), np.asarray(ckpt.palette, dtype=np.uint8), fingerprint)


def method_refusal(spec: MethodSpec) -> str | None:
    """Why a server cannot serve this method at all, or None."""
    if spec.backprop:
        return (f"{spec.network} adapts by backprop and updates its model in place, so a stream's state cannot be "
                "snapshotted or rolled back; serve a backprop-free method (auto, ema, ptbn, rbn, norm_alpha, diga, "
                "dua, lame, source, +lc, +fda)")
    return None


def engine_refusal(spec: MethodSpec, engine: str) -> str | None:
    """Why `engine` cannot run this method, or None."""
    refusal = spec.export_refusal()
    if engine == "onnx" and refusal:
        return f"engine onnx cannot run this method ({refusal}): drop that component or use engine torch"
    return None


def shift_and_alpha(pipeline: "Pipeline", state: "StreamState") -> tuple[float | None, float | None]:
    """The stream's shift score and the mean over BN layers of the alpha for its next frame, where the
    method measures them (auto)."""
    return pipeline.shift(state)


def restarts(state: "StreamState") -> tuple[int | None, list[int]]:
    """Frames since the automatic mode last restarted the stream from the source, and the frames where it
    did (None and [] for methods without it)."""
    auto = state.parts.get("auto")
    return (auto.since_reset, list(auto.switches)) if auto is not None else (None, [])


def describe_method_state(served: Served, state: "StreamState") -> dict:
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

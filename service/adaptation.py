"""The service's one seam to adapters/: the pipeline a server runs, built in one function, and every
read of a method spec's or a stream state's per-method parts (which methods and engines a server
refuses, how many frames a method batches, the shift score a frame answers with, what GET
/adaptation/state shows). When adapters/pipeline.py changes shape (its methods, StreamState's
parts, how the onnx engine plugs in), this file follows it and the rest of the service does not.

torch is imported inside the functions that need it: settings.py imports this file for the refusals,
and `driftseg serve --help` should not wait for torch."""
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from driftseg.adapters.spec import MethodSpec

if TYPE_CHECKING:
    from driftseg.adapters.pipeline import Pipeline, StreamState
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
    from driftseg.adapters import onnx_engine
    from driftseg.adapters.pipeline import Pipeline
    from driftseg.models.checkpoint import file_sha256, load_checkpoint
    from driftseg.service.snapshots import origin_key

    ckpt = load_checkpoint(settings.checkpoint)
    spec, method = settings.spec, settings.method_string
    pipeline = Pipeline(ckpt, spec, settings.torch_device, compile=settings.compile, precision=settings.precision)
    fingerprint = file_sha256(settings.checkpoint)
    if settings.engine == "onnx":
        path = settings.onnx_model or settings.state_dir / "onnx" / f"{origin_key(fingerprint, method)}.onnx"
        pipeline.adapt_core = onnx_engine.load_or_export(pipeline, path, onnx_engine.onnx_metadata(fingerprint, method))
    return Served(pipeline, spec, method, list(ckpt.class_names), np.asarray(ckpt.palette, dtype=np.uint8), fingerprint)


def method_refusal(spec: MethodSpec) -> str | None:
    """Why a server cannot serve this method at all, or None."""
    if spec.norm == "tent":
        return ("tent adapts by backprop and updates its model in place, so a stream's state cannot be "
                "snapshotted or rolled back; serve a backprop-free method (auto, ema, ptbn, source, +lc, +fda)")
    return None


def engine_refusal(spec: MethodSpec, engine: str) -> str | None:
    """Why `engine` cannot run this method, or None."""
    if engine == "onnx" and spec.fda_mode is not None:
        return "engine onnx cannot run FDA (its FFT has no ONNX export here): drop +fda from the method or use engine torch"
    return None


def batch_limit(spec: MethodSpec, max_batch: int) -> int:
    """Most frames of different streams in one step: tent adapts one stream at a time, and the
    batcher keeps AdaptedNet to one step at a time."""
    return 1 if spec.norm == "tent" else max_batch


def shift_and_alpha(state: "StreamState") -> tuple[float | None, float | None]:
    """The stream's shift score and the mean over BN layers of the alpha for its next frame (auto only)."""
    if state.auto is None:
        return None, None
    return float(state.auto.score), float(state.auto.alpha.float().mean())


def describe_method_state(served: Served, state: "StreamState") -> dict:
    """The method's part of GET /adaptation/state (service.schemas.StreamStateSummary): the spec and its
    parameters, shift score and alpha, restarts, per-BN-layer drift, label calibration, FDA."""
    from driftseg.adapters.auto import layer_divergence

    score, alpha = shift_and_alpha(state)
    out = {
        "method": {"spec": served.method, "parameters": asdict(served.spec)},
        "shift_score": score, "alpha_mean": alpha,
        "since_reset": state.auto.since_reset if state.auto else None,
        "switches": list(state.auto.switches) if state.auto else [],
        "layers": [], "label_calibration": None, "fda": None,
    }
    pipeline = served.pipeline
    if state.norm is not None:
        adapted, source = pipeline.adapted, pipeline.source_stats
        divergence = layer_divergence(state.norm.stats[None].float(), source, source, adapted.sizes)[0]
        shift = divergence / pipeline.shift.tau if state.auto is not None else None
        for i, (name, channels) in enumerate(zip(adapted.layer_names, adapted.sizes)):
            out["layers"].append({
                "index": i, "name": name, "channels": channels, "divergence": float(divergence[i]),
                "shift": float(shift[i]) if shift is not None else None,
                "alpha": float(state.auto.alpha[i]) if state.auto is not None else served.spec.alpha,
            })
    if state.lc is not None:
        out["label_calibration"] = {"classes": served.class_names, "weight": state.lc.weight.tolist(),
                                    "prototypes": state.lc.prototypes().tolist()}
    if state.fda is not None:
        out["fda"] = {"frames": state.fda.frames, "band": int(state.fda.recent_band.shape[-1])}
    return out

"""Response models: what the JSON answers hold, as they appear in the OpenAPI schema."""
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from driftseg.service.stages import Stage

# the field's name predates the Redis store; it means any state store
STORED = "a snapshot of the stream is in the state store (a folder or Redis, DRIFTSEG_STATE_STORE)"


class ClassCount(BaseModel):
    id: int
    name: str
    pixels: int
    fraction: float


# ms per stage of the request, one field per stage of service/stages.py
Timings = create_model("Timings", **{stage.value: (float, Field(description=f"ms {stage.description}"))
                                     for stage in Stage})


class SegmentSummary(BaseModel):
    stream: str
    frame: int = Field(description="frames folded into the stream's state so far, this one included when adapted")
    adapted: bool
    width: int
    height: int
    shift_score: float | None = Field(description="the stream's shift score after this frame (auto method only; "
                                      "about 1 at the edge of in-domain)")
    alpha_mean: float | None = Field(description="mean over BN layers of the alpha the last frame was normalised with (auto only)")
    classes: list[ClassCount]
    timings_ms: Timings


class MethodInfo(BaseModel):
    spec: str
    parameters: dict


class ScorePoint(BaseModel):
    frame: int
    score: float


class LayerDrift(BaseModel):
    index: int
    name: str
    channels: int
    divergence: float = Field(description="divergence of the stream's BN moments from the source's (adapters/auto.py)")
    shift: float | None = Field(description="divergence in units of the checkpoint's in-domain calibration (auto only)")
    alpha: float = Field(description="weight of the source statistics in this layer's normalisation")


class LabelCalibration(BaseModel):
    classes: list[str]
    weight: list[float]
    prototypes: list[list[float]]


class FDAInfo(BaseModel):
    frames: int
    band: int


class StreamStateSummary(BaseModel):
    stream: str
    checkpoint: str = Field(description="sha256 of the base checkpoint the server serves")
    model: str = Field(description="sha256 of the model serving this stream: the base's, or one of the model store "
                                   "it was bound to (PUT /adaptation/model)")
    previous_models: list[str] = Field(description="the models it was on before, the most recent last "
                                                   "(POST /adaptation/model/rollback returns to it)")
    method: MethodInfo
    frames: int
    last_seen: float = Field(description="unix time")
    in_memory: bool
    on_disk: bool = Field(description=STORED)
    recorded_frames: int = Field(description="frames kept by recording (DRIFTSEG_RECORD; 0 when off)")
    recorded_bytes: int
    shift_score: float | None
    alpha_mean: float | None
    since_reset: int | None
    reach: float | None = Field(None, description="auto: the largest BN layer shift of the stream's last frame, in "
                                "units of tau; with reach=1 every layer's alpha floor falls with it (0 after a restart)")
    switches: list[int] = Field(description="frames at which the stream restarted from the source (auto)")
    shift_history: list[ScorePoint] = Field(description="the last shift scores this server saw for the stream")
    layers: list[LayerDrift]
    label_calibration: LabelCalibration | None
    fda: FDAInfo | None
    guard_gain: float | None = Field(None, description="auto(guard=N): the running information gain of the adapted "
                                     "prediction over the frozen model's; below 0 the stream is served the source "
                                     "statistics (null: no check yet, or no guard)")


class StreamInfo(BaseModel):
    stream: str
    frames: int
    last_seen: float = Field(description="unix time")
    in_memory: bool
    on_disk: bool = Field(description=STORED)


class StreamList(BaseModel):
    streams: list[StreamInfo] = Field(description="a page, most recently seen first")
    next_cursor: str | None = Field(description="pass as cursor= for the next page; null on the last")
    in_memory: int
    on_disk: int = Field(description="streams with a snapshot in the state store (a folder or Redis)")
    max_streams: int


class ModelBinding(BaseModel):
    model: str = Field(description="sha256 of a model in the model store (GET /adaptation/models), or of the base",
                       pattern="^[0-9a-f]{64}$")


class StoredModel(BaseModel):
    sha256: str
    resident: bool = Field(description="held in memory now")
    provenance: dict = Field(description="where it came from: when it was added, from which file, its parent, the "
                                         "job that made it")


class ModelList(BaseModel):
    base: str = Field(description="sha256 of the base checkpoint, which every stream starts on")
    max_models: int = Field(description="models besides the base held in memory at once (DRIFTSEG_MAX_MODELS)")
    models: list[StoredModel] = Field(description="the model store, the most recently added first")


class JobQueued(BaseModel):
    id: str
    status: str = Field(description="queued")


class JobInfo(BaseModel):
    id: str
    stream: str
    parent: str = Field(description="sha256 of the model serving the stream when the job was asked for")
    iters: int
    status: str = Field(description="queued | running | promoted | rejected | failed")
    created: float = Field(description="unix time")
    updated: float = Field(description="unix time")
    progress: float = Field(description="training iterations done / iters")
    message: str
    frames: dict = Field(description="recorded frames it trained on (train) and held back for the gate (held_back)")
    report: dict | None = Field(description="the gate's checks with their figures (service/gate.py), once judged")
    model: str | None = Field(description="sha256 of the candidate once promoted (it is in the model store)")


class RecordingDeleted(BaseModel):
    stream: str
    deleted: int = Field(description="recorded frames deleted (0 where none were kept)")


class ResetResult(BaseModel):
    reset: list[str] = Field(description="streams whose state was dropped, in memory and on disk")


class Health(BaseModel):
    status: str


class Live(BaseModel):
    """GET /v2/health/live (the open inference protocol's server-live answer)."""

    live: bool


class Ready(BaseModel):
    """GET /v2/health/ready (the open inference protocol's server-ready answer)."""

    ready: bool


class Readiness(BaseModel):
    ready: bool
    checkpoint: str | None = None
    method: str | None = None
    device: str | None = None
    engine: Literal["torch", "onnx"] | None = None
    compiled: bool | None = None
    precision: Literal["fp32", "bf16", "fp16"] | None = None
    detail: str | None = None


class FieldError(BaseModel):
    """One field a request failed validation on (FastAPI's own validation, e.g. ?format=gif)."""

    model_config = ConfigDict(extra="allow")  # FastAPI adds `input` and, for some errors, `ctx`
    loc: list[str | int] = Field(description="where: ['query', 'format'], ['header', 'x-stream-id'], ...")
    msg: str
    type: str


class Error(BaseModel):
    """The body of every 4xx and 5xx answer."""

    detail: str | list[FieldError] = Field(description="what went wrong and how to fix it; for a request that "
                                           "fails FastAPI's validation of its parameters, the fields at fault")


class Unready(Error):
    """GET /readyz and /v2/health/ready while the model is not loaded or the server shuts down."""

    ready: Literal[False] = False

"""The service's settings: one pydantic-settings class, read from `driftseg serve` flags (kebab-case:
--max-streams), DRIFTSEG_* environment variables and keyword arguments, in that order of precedence,
validated once at start-up. `driftseg serve --help` lists every setting with its description,
default and environment variable."""
from argparse import ArgumentParser
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, CliSettingsSource, SettingsConfigDict

from driftseg.adapters.spec import MethodSpec, measures_shift, parse_method, resolve_method, serve_refusal
from driftseg.models.checkpoint import DEFAULT_CHECKPOINT, read_checkpoint_file
from driftseg.service.jobs import MIN_FRAMES

ENV_PREFIX = "DRIFTSEG_"
PROG = "driftseg serve"
SECRETS = {"api_key"}  # settings whose values error messages never repeat
LogLevel = Literal["critical", "error", "warning", "info", "debug"]


def flag(name: str) -> str:
    """The command-line flag of a setting: max_streams -> --max-streams."""
    return "--" + name.replace("_", "-")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    checkpoint: Path = Field(DEFAULT_CHECKPOINT, description="the checkpoint file to serve; the default is the one "
                             "the package ships")
    method: str = Field("auto", description="adaptation method spec (adapters/spec.py); 'auto' is the recommended one")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda where torch sees a GPU, else cpu")
    host: str = Field("127.0.0.1", description="the address to listen on (0.0.0.0: every interface)")
    port: int = Field(8000, ge=0, le=65535, description="the TCP port to listen on")
    log_level: LogLevel = Field("info", description="the least severe log lines shown, the service's and uvicorn's")
    engine: Literal["torch", "onnx"] = Field("torch", description="what runs the adapted function: torch, or "
                                             "onnxruntime on a file exported by `driftseg export onnx`")
    decode: Literal["auto", "pil", "batched"] = Field("auto", description="how JPEG frames are decoded: batched "
                                                      "(torchvision, one call per batch: nvJPEG on a GPU), pil (each "
                                                      "request on its own, in parallel threads); auto: batched on a GPU, "
                                                      "pil on the CPU. Other formats always go through PIL")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="torch engine: the network under autocast "
                                                       "to bf16 or fp16 (`driftseg bench precision` measures the labels "
                                                       "it changes); states stay float32")
    compile: bool = Field(False, description="torch engine: torch.compile the adapted function, replayed as CUDA "
                          "graphs on a GPU, batches padded to a power of two; start-up compiles every padded "
                          "size up to max_batch (minutes)")
    onnx_model: Path | None = Field(None, description="the exported file for engine onnx; default: exported at "
                                    "start-up into the state dir, one file per checkpoint and method")
    max_streams: int = Field(64, ge=1, description="stream states held in memory; the least recently used is snapshotted and evicted")
    state_dir: Path = Field(Path("~/.cache/driftseg/state"), description="where stream snapshots are kept")
    state_store: str | None = Field(None, description="where stream snapshots live: file:///DIR (default: the state "
                                    "dir) or redis://[:password@]host:port/db, shared by replicas")
    state_ttl: float = Field(30 * 24 * 3600.0, ge=0, description="seconds a stream may go unseen before its snapshot "
                             "is deleted (in Redis, the key's expiry); 0: kept until reset")
    max_stored_streams: int = Field(10000, ge=1, description="stream snapshots kept in the state store; past it the "
                                    "least recently seen are deleted (with Redis: of the streams this server knows)")
    store_retry_seconds: float = Field(5.0, gt=0, description="while the state store is down, how often to try it again")
    snapshot_every: int = Field(100, ge=0, description="snapshot a stream every N adapted frames; 0: only on eviction and shutdown")
    max_pending: int = Field(32, ge=1, description="/segment requests in flight at once (waiting for their stream, "
                             "decoding, queued for the model); beyond it a request is answered 503 with Retry-After")
    max_connections: int = Field(512, ge=1, description="open HTTP connections (and requests in progress) beyond "
                                 "which a new request is answered 503; with the read deadlines below it bounds the "
                                 "file descriptors clients can hold")
    header_timeout: float = Field(10.0, gt=0, description="seconds from a connection's opening, or a request's first "
                                  "byte, to its last header; past it the connection is closed (with a 408 if part of "
                                  "a request came)")
    body_timeout: float = Field(60.0, gt=0, description="seconds from a request's headers to the end of its body; past "
                                "it the client gets a 408 and the connection is closed")
    max_batch: int = Field(8, ge=1, description="most frames (of different streams) in one batch through the network")
    max_batch_delay_ms: float = Field(2.0, ge=0, description="how long the first frame of a batch waits for others to join")
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1, description="largest request body of /segment")
    max_image_pixels: int = Field(4096 * 4096, ge=1, description="largest decoded image, width x height")
    metrics_stream_cap: int = Field(32, ge=0, description="streams with their own driftseg_shift_score series; the rest go under stream=\"_other\"")
    api_key: SecretStr | None = Field(None, description="when set, the routes that change a stream's state or "
                                      "footage (PUT /adaptation/state, POST /adapt/reset, PUT /adaptation/model, POST "
                                      "/adaptation/model/rollback, DELETE /adaptation/recording) need header X-API-Key "
                                      "equal to it; prefer the environment variable: other users of the machine can "
                                      "read a process's command line")
    api_key_everywhere: bool = Field(False, description="also require X-API-Key on POST /segment and GET "
                                     "/adaptation/*; /healthz, /readyz and /metrics stay open")
    model_store: Path | None = Field(None, description="the folder of models streams can be bound to, each named by "
                                     "its sha256 (`driftseg models add`); shared by replicas at scale; default: "
                                     "<state dir>/models")
    max_models: int = Field(4, ge=1, description="models besides the base held in memory at once; the least "
                            "recently used is dropped (and loaded again when a stream needs it)")
    source_data: Path | None = Field(None, description="the labelled source data, a folder in the project's data layout "
                                     "(images/, labels/, splits.json): adaptation jobs train on it beside a stream's "
                                     "recorded frames and the gate validates on it; without it jobs are refused")
    adapt_iters: int = Field(300, ge=1, description="training iterations of an adaptation job (300: about a quarter "
                             "of an hour on two CPU cores at the default checkpoint's size)")
    job_queue: str = Field("embedded", description="where adaptation jobs run: embedded (in this server, one at a "
                           "time, niced) or redis://host:port/db, a Redis through which `driftseg worker` processes on "
                           "other machines take them (RQ)")
    jobs_dir: Path | None = Field(None, description="adaptation jobs' records and folders (the frames they took, their "
                                  "candidates, logs); shared with the workers under a redis job queue; default: "
                                  "<state dir>/jobs")
    service_url: str | None = Field(None, description="driftseg worker only: the service's URL (the router's, at "
                                    "scale) through which a worker binds a stream to the model its job promoted")
    worker_metrics_port: int = Field(9101, ge=0, le=65535, description="driftseg worker only: the port of its "
                                     "Prometheus metrics (0: none)")
    auto_adapt: bool = Field(False, description="start an adaptation job for a stream by itself once it has recorded "
                             "auto_adapt_frames frames since its last job (with record=drifted: frames posted while "
                             "it had drifted); needs recording and the source data")
    auto_adapt_frames: int = Field(200, ge=MIN_FRAMES, description="recorded frames since a stream's last job that start the "
                                   "next one under auto_adapt")
    job_threads: int = Field(1, ge=1, description="CPU threads of an adaptation job's processes, which run at the "
                             "lowest priority so that serving keeps its latency")
    record: Literal["off", "drifted", "all"] = Field("off", description="keep each stream's recent frames as posted "
                                                    "(camera footage: off by default), for adaptation jobs: all of "
                                                    "them, or those of a stream whose shift score says it has left the "
                                                    "source domain (drifted; method auto)")
    record_dir: Path | None = Field(None, description="where recorded frames are kept, a folder per stream "
                                    "(<stream>.frames); default: <state dir>/recordings")
    record_max_frames: int = Field(500, ge=1, description="recorded frames kept per stream; past it the oldest are deleted")
    record_max_bytes: int = Field(200 * 1024 * 1024, ge=1, description="bytes of recorded frames kept per stream; "
                                  "past it the oldest are deleted")
    require_stream_id: bool = Field(False, description="answer 422 to a stream request that names no stream "
                                    "(header X-Stream-Id or ?stream=) instead of adapting the shared stream "
                                    "'default' (on in the Docker image)")

    @field_validator("checkpoint")
    @classmethod
    def _checkpoint_exists(cls, path: Path) -> Path:
        path = path.expanduser()
        try:  # the tensors mapped, not read: the server loads the file once it starts
            read_checkpoint_file(path, mmap=True)
        except (OSError, ValueError) as e:
            raise ValueError(f"{e}: pass --checkpoint FILE or set {ENV_PREFIX}CHECKPOINT") from None
        return path

    @field_validator("method")
    @classmethod
    def _method_parses(cls, spec: str) -> str:
        refusal = serve_refusal(parse_method(spec))  # parse_method raises ValueError saying what is wrong
        if refusal:
            raise ValueError(refusal)
        return spec.strip()

    @field_validator("state_store")
    @classmethod
    def _store_url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("file:///", "redis://", "rediss://")):
            raise ValueError(f"state store {url!r} is neither file:///DIR nor redis://host:port/db")
        return url

    @field_validator("job_queue")
    @classmethod
    def _queue_url(cls, queue: str) -> str:
        if queue != "embedded" and not queue.startswith(("redis://", "rediss://")):
            raise ValueError(f"job queue {queue!r} is neither embedded nor redis://host:port/db")
        return queue

    @field_validator("state_dir", "onnx_model", "record_dir", "model_store", "source_data", "jobs_dir")
    @classmethod
    def _expand(cls, path: Path | None) -> Path | None:
        return path.expanduser() if path is not None else None

    @field_validator("api_key")
    @classmethod
    def _key_not_empty(cls, key: SecretStr | None) -> SecretStr | None:
        if key is None:
            return key
        value = key.get_secret_value()
        if not value.strip():
            raise ValueError(f"the API key is empty: unset {ENV_PREFIX}API_KEY to turn access control off, or set a key")
        if not all("!" <= c <= "~" for c in value):
            raise ValueError("the API key has spaces, control or non-ASCII characters, which do not survive an HTTP "
                             "header: use printable ASCII (e.g. python -c 'import secrets; print(secrets.token_urlsafe())')")
        return key

    @model_validator(mode="after")
    def _everywhere_needs_a_key(self) -> "Settings":
        if self.api_key_everywhere and self.api_key is None:
            raise ValueError(f"{ENV_PREFIX}API_KEY_EVERYWHERE is set but {ENV_PREFIX}API_KEY is not: every route "
                             "would stay open; set the key too")
        return self

    @model_validator(mode="after")
    def _engine_takes_the_method(self) -> "Settings":
        refusal = serve_refusal(self.spec, self.engine)
        if refusal:
            raise ValueError(f"{refusal} ({ENV_PREFIX}METHOD, {ENV_PREFIX}ENGINE)")
        if self.onnx_model is not None and self.engine != "onnx":
            raise ValueError(f"{ENV_PREFIX}ONNX_MODEL is set but {ENV_PREFIX}ENGINE is not onnx")
        if self.precision != "fp32" and self.engine != "torch":
            raise ValueError(f"{ENV_PREFIX}PRECISION applies to the torch engine; the onnx engine runs the exported "
                             "float32 graph")
        if self.compile and self.engine != "torch":
            raise ValueError(f"{ENV_PREFIX}COMPILE compiles the torch engine; with {ENV_PREFIX}ENGINE=onnx "
                             "onnxruntime optimises the graph itself")
        return self

    @model_validator(mode="after")
    def _drifted_needs_a_shift_score(self) -> "Settings":
        if self.record == "drifted" and not measures_shift(self.spec):
            raise ValueError(f"{ENV_PREFIX}RECORD=drifted records while the shift score of method auto says a stream "
                             f"has drifted; method {self.method!r} measures none: serve auto, or record all")
        return self

    @model_validator(mode="after")
    def _auto_adapt_can_run_jobs(self) -> "Settings":
        if self.auto_adapt and (self.record == "off" or (self.source_data is None and self.job_queue == "embedded")):
            raise ValueError(f"{ENV_PREFIX}AUTO_ADAPT trains on a stream's recorded frames with the labelled source "
                             f"data: set {ENV_PREFIX}RECORD to drifted or all and {ENV_PREFIX}SOURCE_DATA too")
        return self

    @model_validator(mode="after")
    def _device_available(self) -> "Settings":
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device 'cuda' asked for but torch sees no CUDA device: set {ENV_PREFIX}DEVICE=cpu or auto")
        return self

    @property
    def spec(self) -> MethodSpec:
        return parse_method(self.method)

    @property
    def method_string(self) -> str:
        """The method spec written into snapshots: 'auto' expanded, so a snapshot still names what made
        it after the recommended pipeline changes."""
        return resolve_method(self.method)

    @property
    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    @property
    def jobs_folder(self) -> Path:
        """Adaptation jobs' records and folders: DRIFTSEG_JOBS_DIR, else <state dir>/jobs."""
        return self.jobs_dir if self.jobs_dir is not None else self.state_dir / "jobs"

    @property
    def models_dir(self) -> Path:
        """The model store: DRIFTSEG_MODEL_STORE, else <state dir>/models."""
        return self.model_store if self.model_store is not None else self.state_dir / "models"

    @property
    def binding_refusal(self) -> str | None:
        """Why streams of this server cannot be bound to other models than the base, or None."""
        if self.engine != "torch" or self.compile:
            return (f"binding a stream to another model needs the eager torch engine ({ENV_PREFIX}ENGINE=torch, "
                    f"{ENV_PREFIX}COMPILE=false): the compiled and ONNX engines hold one model's graph")
        return None

    @property
    def recordings(self) -> Path:
        """Where recorded frames are kept: DRIFTSEG_RECORD_DIR, else <state dir>/recordings."""
        return self.record_dir if self.record_dir is not None else self.state_dir / "recordings"


def command_line(args: list[str]) -> CliSettingsSource:
    """The settings source of a `driftseg serve` command line: a kebab-case flag per setting
    (--max-streams 8, --compile / --no-compile), --help listing them all; an unknown flag or a value
    outside a setting's choices exits with status 2 and the usage, as argparse does."""
    source = CliSettingsSource(Settings, cli_prog_name=PROG, cli_kebab_case=True, cli_implicit_flags=True,
                               cli_show_env_vars=True, cli_hide_none_type=True, add_argument_method=_add_argument)
    return source(args=args)


def _add_argument(parser: ArgumentParser, *names: str, **kwargs):
    """ArgumentParser.add_argument with the setting's name as the placeholder of its value (--port PORT),
    as argparse writes it, where pydantic-settings would show the Python type (--port int, --api-key
    SecretStr); choices stay listed ({torch,onnx}) and on/off flags take no value."""
    metavar = kwargs.get("metavar")
    if metavar and not metavar.startswith("{") and kwargs.get("dest"):
        kwargs["metavar"] = kwargs["dest"].upper()
    return parser.add_argument(*names, **kwargs)


def load_settings(args: list[str] | None = None, **overrides) -> Settings:
    """Settings from a `driftseg serve` command line `args` (flags win), the environment and
    `overrides`, or ValueError naming each bad setting by its environment variable and flag and
    saying what it should be."""
    try:
        if args is None:
            return Settings(**overrides)
        return Settings(_cli_settings_source=command_line(args), **overrides)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            name = ".".join(str(part) for part in err["loc"]) or "settings"
            where = f"{ENV_PREFIX}{name.upper()} or {flag(name)}" if err["loc"] else "settings"
            message = err["msg"].removeprefix("Value error, ")
            shown = err["loc"] and err["loc"][0] not in SECRETS
            lines.append(f"  {where}: {message}" + (f" (got {err['input']!r})" if shown else ""))
        raise ValueError("invalid driftseg settings:\n" + "\n".join(lines)) from None

"""The HTTP service (`driftseg serve`).

    settings.py   one pydantic-settings class, DRIFTSEG_* environment variables
    app.py        create_app(settings): routers, metrics middleware, lifespan (load, warm up, flush)
    engine.py     the lifecycle of one loaded model: load, warm up, start, stop; wires the parts below
    adaptation.py the seam to adapters/: the pipeline built in one function, every read of a method's state
    segmenter.py  the request path of /segment: admission -> stream lock -> decode -> batch -> encode -> commit
    admission.py  at most DRIFTSEG_MAX_PENDING requests in flight, else 503 with Retry-After
    formats.py    what /segment answers (Segmented): png | overlay | json, chosen, encoded, sent with its headers
    stages.py     the request's stage names (wait, decode, model, encode), defined once
    states.py     the state routes' operations: describe, export, import, reset, list, bind a model, roll back
    model_store.py the model store (checkpoints by sha256) and the models resident in memory
    recorder.py   recording: each stream's recent frames as posted, for adaptation jobs
    jobs.py       adaptation jobs: started for a stream (by request or by itself), the frames they take, records
    job_runner.py what a job does: self-training -> gate.py (WiSE-FT if need be) -> promoted to serve it, or not
    job_queues.py where jobs run: in the server, or on `driftseg worker` machines through Redis (RQ)
    batcher.py    cross-stream micro-batching: frames of different streams through the network together
    registry.py   streams held in memory (LRU, per-stream locks), snapshotted to the state store
    store.py      the SnapshotStore protocol and open_store (a folder, or Redis shared by replicas)
    snapshots.py  the stream-state snapshot format (and StoredSnapshot, what a store lists) and the folder store
    redis_store.py the Redis store
    imaging.py    decode frames, encode label maps and overlays
    body.py       size-limited request bodies, raw or multipart images
    metrics.py    Prometheus metrics and middleware
    deps.py       what routes get (Annotated dependencies): settings, segmenter, states, API key, stream id
    routes/       one APIRouter per resource: segment, state, streams, models, jobs, health
    cli.py        `driftseg serve`
"""

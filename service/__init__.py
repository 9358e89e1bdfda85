"""The HTTP service (`driftseg serve`).

    settings.py   one pydantic-settings class, DRIFTSEG_* environment variables
    app.py        create_app(settings): routers, metrics middleware, lifespan (load, warm up, flush)
    engine.py     the pipeline, the stream registry and the request path (decode -> batch -> encode)
    batcher.py    cross-stream micro-batching: frames of different streams through the network together
    registry.py   streams held in memory (LRU, per-stream locks), snapshotted to the state dir
    snapshots.py  the stream-state snapshot format and the folder of snapshots
    imaging.py    decode frames, encode label maps and overlays
    body.py       size-limited request bodies, raw or multipart images
    metrics.py    Prometheus metrics and middleware
    routes/       one APIRouter per resource: segment, state, streams, health
    cli.py        `driftseg serve`
"""

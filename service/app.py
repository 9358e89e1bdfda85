"""The FastAPI app: settings, metrics, the routers, and a lifespan that loads and warms up the model,
lists the snapshots in the state dir, and on shutdown snapshots every stream whose state changed."""
import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import compile_path
from starlette.responses import Response
from fastapi_offline import FastAPIOffline

from driftseg import __version__
from driftseg.service.engine import Engine
from driftseg.service.errors import ServiceError
from driftseg.service.metrics import Metrics, MetricsMiddleware
from driftseg.service.openapi import secure_where_needed
from driftseg.service.routes import health, jobs, models, segment, state, streams
from driftseg.service.settings import Settings, load_settings

log = logging.getLogger("driftseg.service")


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """The methods the schema lists for the paths matching `path` (included routers are not flat
    Route objects to ask, and the schema is what clients read)."""
    return sorted({method.upper() for template, operations in app.openapi()["paths"].items()
                   if compile_path(template)[0].match(path) for method in operations})


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings if settings is not None else load_settings()
    metrics = Metrics(settings.metrics_stream_cap, settings.max_pending)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # the one thread that runs the network, from loading on (why: service/batcher.py)
        model_thread = ThreadPoolExecutor(1, thread_name_prefix="driftseg-model")
        try:
            engine = await asyncio.get_running_loop().run_in_executor(
                model_thread, Engine.load, settings, metrics, model_thread)
            await engine.start()
        except Exception as e:
            log.error("driftseg cannot start: %s", e)
            model_thread.shutdown(wait=False)
            raise
        app.state.engine = engine
        engine.ready = True
        log.info("driftseg ready: %s on %s, method %s, %d stream snapshot(s) in %s", settings.checkpoint,
                 engine.device, engine.method, engine.states.counts()[1], engine.store.location)
        if settings.api_key is None:
            log.info("DRIFTSEG_API_KEY is not set: every route is open")
        else:
            log.info("X-API-Key required on %s", "every stream route" if settings.api_key_everywhere
                     else "the routes that change a stream's state, model or recording")
        try:
            yield
        finally:
            engine.ready = False  # /readyz turns 503 while the streams are flushed
            written = await engine.stop()
            model_thread.shutdown()
            log.info("driftseg stopped: %d stream snapshot(s) written to %s", written, engine.store.location)

    # /docs and /redoc from files served by this app, not a CDN, so that they work offline: the
    # fastapi-offline package ships swagger-ui-dist 5 and ReDoc and serves them (swagger-ui-bundle, the
    # other maintained package of the files, ships Swagger UI 4, which cannot render FastAPI's OpenAPI 3.1)
    app = FastAPIOffline(title="driftseg", version=__version__, lifespan=lifespan,
                         description="Semantic segmentation of camera streams that adapts per stream without backprop.")
    app.state.settings, app.state.metrics, app.state.engine = settings, metrics, None
    metrics.watch(lambda: app.state.engine)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Starlette's 405 names the methods of the first route on the path only (Allow: GET on
        # /adaptation/state, which takes PUT too): every route's on the path, as RFC 9110 asks
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(app, request.url.path))
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, exc: ClientDisconnect) -> Response:
        # a client that hangs up mid-body (or is cut off by DRIFTSEG_BODY_TIMEOUT) is not a server fault:
        # one line, not uvicorn's "Exception in ASGI application" traceback. 499 (nginx's "client closed
        # request") is what the metrics count; nobody is left to receive it.
        client = "%s:%d" % tuple(request.client) if request.client else "a client"
        log.info("%s: disconnected before its request body of %s %s arrived", client, request.method, request.url.path)
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        # answered in the error model too (service/openapi.py); Starlette then re-raises it to be logged
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}): the server log has the traceback"},
                            status_code=500)

    for router in (segment.router, state.router, streams.router, models.router, jobs.router, health.router):
        app.include_router(router)
    full_schema = app.openapi
    app.openapi = lambda: secure_where_needed(full_schema(), settings.api_key is not None, settings.api_key_everywhere)
    return app

"""Liveness, readiness and metrics: /healthz and /readyz, their open inference protocol (v2,
KServe and Triton) aliases /v2/health/live and /v2/health/ready, and /metrics for Prometheus."""
from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from driftseg.service.deps import LoadedEngine, MetricsDep
from driftseg.service.openapi import errors
from driftseg.service.schemas import Health, Live, Readiness, Ready, Unready

router = APIRouter(tags=["operations"])

NOT_LOADED = "the model is not loaded yet, or the server is shutting down"
_UNREADY = errors({503: (f"{NOT_LOADED}: not ready", "model not loaded")}, model=Unready, retry_after=False)


def _unready() -> JSONResponse:
    return JSONResponse(Unready(detail=NOT_LOADED).model_dump(), status_code=503)


@router.get("/healthz", operation_id="healthz", response_model=Health, responses=errors({}))
async def healthz() -> Health:
    """The process is up and its event loop answers."""
    return Health(status="ok")


@router.get("/readyz", operation_id="readyz", response_model=Readiness, responses=_UNREADY)
async def readyz(engine: LoadedEngine):
    """200 once the model is loaded and warmed up (with `detail` saying so when the state store is
    down); 503 before that and while shutting down."""
    if engine is None or not engine.ready:
        return _unready()
    return Readiness(**engine.readiness())


@router.get("/v2/health/live", operation_id="v2_health_live", response_model=Live, responses=errors({}))
async def v2_health_live() -> Live:
    """The open inference protocol's server-live check: 200 while the process answers (as /healthz)."""
    return Live(live=True)


@router.get("/v2/health/ready", operation_id="v2_health_ready", response_model=Ready, responses=_UNREADY)
async def v2_health_ready(engine: LoadedEngine):
    """The open inference protocol's server-ready check: 200 once the model is loaded and warmed up, 503
    before that and while shutting down (as /readyz; the protocol reads any answer but 200 as not ready)."""
    if engine is None or not engine.ready:
        return _unready()
    return Ready(ready=True)


@router.get("/metrics", operation_id="metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}}}, **errors({})})
async def metrics(metrics: MetricsDep) -> Response:
    """Prometheus exposition (service/metrics.py lists the series)."""
    data, content_type = metrics.render()
    return Response(data, media_type=content_type)

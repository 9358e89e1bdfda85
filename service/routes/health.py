"""Liveness, readiness and metrics."""
from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from driftseg.service.deps import LoadedEngine, MetricsDep
from driftseg.service.schemas import Health, Readiness

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is up and its event loop answers."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(engine: LoadedEngine):
    """200 once the model is loaded and warmed up (with `detail` saying so when the state store is
    down); 503 before that and while shutting down."""
    if engine is None or not engine.ready:
        body = Readiness(ready=False, detail="the model is not loaded yet, or the server is shutting down")
        return JSONResponse(body.model_dump(), status_code=503)
    return Readiness(**engine.readiness())


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(metrics: MetricsDep) -> Response:
    """Prometheus exposition (service/metrics.py lists the series)."""
    data, content_type = metrics.render()
    return Response(data, media_type=content_type)

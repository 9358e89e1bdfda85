"""The streams a server holds."""
from fastapi import APIRouter

from driftseg.service.deps import ReadAccess, StatesDep
from driftseg.service.openapi import KEY_EVERYWHERE, NOT_READY, errors
from driftseg.service.schemas import StreamList

router = APIRouter(tags=["streams"])


@router.get("/adaptation/streams", operation_id="list_streams", response_model=StreamList,
            responses=errors({401: (KEY_EVERYWHERE, "key missing", "key wrong"), 503: (NOT_READY, "not ready")}))
async def list_streams(_access: ReadAccess, states: StatesDep) -> StreamList:
    """Streams held in memory or as snapshots in the state store, most recently seen first."""
    return StreamList(**states.listing())

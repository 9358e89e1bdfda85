"""The streams a server holds."""
from fastapi import APIRouter

from driftseg.service.deps import ReadAccess, StatesDep
from driftseg.service.schemas import StreamList

router = APIRouter(tags=["streams"])


@router.get("/adaptation/streams", response_model=StreamList,
            responses={401: {"description": "X-API-Key missing or wrong (only where DRIFTSEG_API_KEY_EVERYWHERE is set)"}})
async def list_streams(_access: ReadAccess, states: StatesDep) -> StreamList:
    """Streams held in memory or as snapshots in the state store, most recently seen first."""
    return StreamList(**states.listing())

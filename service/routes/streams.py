"""The streams a server holds."""
from fastapi import APIRouter

from driftseg.service.deps import EngineDep, ReadAccess
from driftseg.service.schemas import StreamList

router = APIRouter(tags=["streams"])


@router.get("/adaptation/streams", response_model=StreamList,
            responses={401: {"description": "X-API-Key missing or wrong (only where DRIFTSEG_API_KEY_EVERYWHERE is set)"}})
async def list_streams(_access: ReadAccess, engine: EngineDep) -> StreamList:
    """Streams held in memory or as snapshots in the state dir, most recently seen first."""
    rows = engine.streams()
    in_memory, stored = engine.registry.counts()
    return StreamList(streams=rows, in_memory=in_memory, on_disk=stored, max_streams=engine.settings.max_streams)

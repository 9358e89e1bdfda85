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
    return StreamList(streams=rows, in_memory=len(engine.registry.entries), on_disk=len(engine.registry.on_disk),
                      max_streams=engine.settings.max_streams)

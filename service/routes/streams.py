"""The streams a server holds."""
from typing import Annotated

from fastapi import APIRouter, Query

from driftseg.service.deps import ReadAccess, StatesDep
from driftseg.service.openapi import KEY_EVERYWHERE, NOT_READY, errors
from driftseg.service.schemas import StreamList
from driftseg.service.states import CURSOR, MAX_PAGE

router = APIRouter(tags=["streams"])


@router.get("/adaptation/streams", operation_id="list_streams", response_model=StreamList,
            responses=errors({401: (KEY_EVERYWHERE, "key missing", "key wrong"),
                              422: ("an invalid limit or cursor", "invalid parameter"),
                              503: (NOT_READY, "not ready")}))
async def list_streams(
    _access: ReadAccess,
    states: StatesDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="streams per page")] = 100,
    cursor: Annotated[str | None, Query(pattern=CURSOR.pattern, description="next_cursor of the previous page")] = None,
) -> StreamList:
    """Streams held in memory or as snapshots in the state store, most recently seen first, `limit` a page;
    `next_cursor` (null on the last page) fetches the next."""
    return StreamList(**states.listing(limit, cursor))

"""Which model serves a stream: bind it to a model of the model store, roll the binding back, list the store
(service/model_store.py)."""
from fastapi import APIRouter

from driftseg.service.deps import ReadAccess, StatesDep, StreamId, WriteAccess
from driftseg.service.openapi import KEY, KEY_EVERYWHERE, NOT_READY, errors
from driftseg.service.schemas import ModelBinding, ModelList, StreamStateSummary

router = APIRouter(tags=["models"])

_STREAM_ERRORS = (422, ("an invalid stream id, or no stream named where the server requires one",
                        "invalid stream id", "stream not named"))


@router.put("/adaptation/model", operation_id="bind_stream_model", response_model=StreamStateSummary,
            responses=errors({400: ("the body cannot be parsed as JSON", "body not json"),
                              401: (KEY, "key missing", "key wrong"),
                              404: ("the model is not in the model store", "model not stored"),
                              409: ("the model cannot serve beside the base (another architecture, classes or input "
                                    "size), or this server's engine serves one model only", "model of another architecture"),
                              422: ("an invalid stream id or model id, or no stream named where the server requires "
                                    "one", "invalid stream id", "not a model id", "stream not named"),
                              503: (NOT_READY, "not ready")}))
async def bind_model(_access: WriteAccess, states: StatesDep, stream: StreamId, binding: ModelBinding) -> dict:
    """Serve the stream with a model of the model store from its next frame on, starting from that model's
    source state; the model it was on is remembered for rollback. The binding is part of the stream's
    snapshot: it survives a restart, an eviction and a move to another replica. Binding the model already
    serving the stream changes nothing."""
    return await states.bind(stream, binding.model)


@router.post("/adaptation/model/rollback", operation_id="rollback_stream_model", response_model=StreamStateSummary,
             responses=errors({401: (KEY, "key missing", "key wrong"),
                               404: ("the stream is not held", "stream not held"),
                               409: ("the stream was never bound to another model", "nothing to roll back"),
                               _STREAM_ERRORS[0]: _STREAM_ERRORS[1],
                               503: (NOT_READY, "not ready")}))
async def rollback_model(_access: WriteAccess, states: StatesDep, stream: StreamId) -> dict:
    """Serve the stream with the model it was on before its last binding, from that model's source state."""
    return await states.rollback(stream)


@router.get("/adaptation/models", operation_id="list_models", response_model=ModelList,
            responses=errors({401: (KEY_EVERYWHERE, "key missing", "key wrong"), 503: (NOT_READY, "not ready")}))
async def list_models(_access: ReadAccess, states: StatesDep) -> ModelList:
    """The base model and the model store, with each model's provenance and whether it is in memory."""
    return ModelList(**states.model_list())

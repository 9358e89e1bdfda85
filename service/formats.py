"""What POST /segment answers, by format: `png` (the label map, one class index per pixel), `overlay`
(the frame blended with the class colours, a JPEG) or `json` (pixels per class, the shift score and
the stage timings): which format a request asks for, the encoding of each (run in a worker thread)
and the HTTP answer with its headers, from the answered frame (`Segmented`, which the request path,
service/segmenter.py, fills)."""
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
from fastapi import Response
from fastapi.responses import JSONResponse

from driftseg.service import imaging
from driftseg.service.schemas import ClassCount, SegmentSummary, Timings
from driftseg.service.stages import Stage, server_timing

Format = Literal["png", "overlay", "json"]
FORMATS: tuple[str, ...] = get_args(Format)
ANSWER_TYPES: dict[str, str] = {"png": "image/png", "overlay": "image/jpeg", "json": "application/json"}
_BY_MEDIA_TYPE = {media_type: fmt for fmt, media_type in ANSWER_TYPES.items()}


@dataclass
class Segmented:
    """One answered frame: `body` for png and overlay, `counts` (pixels per class) for json."""

    stream: str
    fmt: str
    frame: int  # frames folded into the stream's state so far, this one included when adapted
    adapted: bool
    width: int
    height: int
    shift_score: float | None
    alpha_mean: float | None
    seconds: dict[Stage, float]  # every stage of service/stages.py
    body: bytes | None = None
    counts: np.ndarray | None = None


def choose_format(fmt: str | None, accept: str | None) -> str:
    """?format= wins; else the first media type of Accept that has a format; else png."""
    if fmt is not None:
        return fmt
    for item in (accept or "").split(","):
        kind = item.split(";")[0].strip().lower()
        if kind in _BY_MEDIA_TYPE:
            return _BY_MEDIA_TYPE[kind]
    return "png"


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")


def needs_pixels(fmt: str) -> bool:
    """Whether the answer needs the frame's own pixels on the host (an overlay blends them), so that
    its frame is decoded in the request's thread even where the batcher decodes JPEGs."""
    return fmt == "overlay"


def encode(fmt: str, rgb: np.ndarray | None, labels: np.ndarray, palette: np.ndarray,
           num_classes: int) -> bytes | np.ndarray:
    """The answer's body for png and overlay; for json the pixels per class (the summary is made once
    the timings are known, by `answer`)."""
    if fmt == "png":
        return imaging.encode_labels(labels)
    if fmt == "overlay":
        return imaging.encode_overlay(rgb, labels, palette)
    return imaging.histogram(labels, num_classes)


def headers(r: Segmented) -> dict[str, str]:
    """The headers of every /segment answer (documented in service/openapi.py)."""
    out = {"X-Stream-Id": r.stream, "X-Frame-Index": str(r.frame), "Server-Timing": server_timing(r.seconds)}
    if r.shift_score is not None:
        out["X-Shift-Score"] = f"{r.shift_score:.4f}"
    return out


def answer(r: Segmented, class_names: list[str]) -> Response:
    if r.fmt != "json":
        return Response(r.body, media_type=ANSWER_TYPES[r.fmt], headers=headers(r))
    total = max(int(r.counts.sum()), 1)
    summary = SegmentSummary(
        stream=r.stream, frame=r.frame, adapted=r.adapted, width=r.width, height=r.height,
        shift_score=r.shift_score, alpha_mean=r.alpha_mean,
        classes=[ClassCount(id=i, name=name, pixels=int(n), fraction=int(n) / total)
                 for i, (name, n) in enumerate(zip(class_names, r.counts))],
        timings_ms=Timings(**{stage: seconds * 1000 for stage, seconds in r.seconds.items()}),
    )
    return JSONResponse(summary.model_dump(mode="json"), headers=headers(r))

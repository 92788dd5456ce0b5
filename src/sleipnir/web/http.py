"""What every JSON route shares: the response, the error, reading a bounded body, the
state of the app."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from .state import WebState

_encoder = msgspec.json.Encoder()


def json_response(
    data: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A JSON response encoded with msgspec."""
    return Response(
        _encoder.encode(data), status_code, headers=headers, media_type="application/json"
    )


class ApiError(Exception):
    """A 4xx/5xx answer with a message that says what is wrong."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def _state(request: Request) -> WebState:
    state: WebState = request.app.state.web
    return state


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or 413 as soon as it is known to be over ``limit`` bytes.

    A declared Content-Length over the limit is refused before anything is read;
    otherwise the body is read chunk by chunk and reading stops at the first
    chunk that crosses the limit.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise ApiError(400, "Content-Length is not a number") from None
        if size > limit:
            raise ApiError(413, f"request body is {size} bytes, over the limit of {limit} bytes")
    chunks = []
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > limit:
            raise ApiError(413, f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _require_json(request: Request) -> None:
    # Only JSON is accepted: a cross-site form or a "simple" fetch cannot send
    # application/json without a CORS preflight, which this server never grants.
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind != "application/json":
        raise ApiError(415, "send the body as Content-Type: application/json")


def _limit(request: Request, default: int = 100) -> int:
    raw = request.query_params.get("limit", str(default))
    try:
        limit = int(raw)
    except ValueError:
        raise ApiError(400, f"limit must be an integer, not {raw!r}") from None
    if not 1 <= limit <= 10_000:
        raise ApiError(400, "limit must be between 1 and 10000")
    return limit

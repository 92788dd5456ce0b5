"""The dead letters' routes: list and search, retry and delete by selection or one by one."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from ..bounded import cap_text
from ..brokers.base import DeadLetter
from .http import ApiError, _limit, _require_json, _state, json_response, read_body
from .jobs_api import _body_fields
from .state import WebState


def dead_view(letter: DeadLetter) -> dict[str, Any]:
    """A dead letter as the API shows it."""
    fields = _body_fields(letter)
    return {
        "id": letter.id,
        "queue": letter.queue,
        "task": fields.get("task"),
        "args": fields.get("args"),
        "kwargs": fields.get("kwargs"),
        "attempt": letter.attempt,
        "failed_at": letter.failed_at,
        "reason": cap_text(letter.reason),
    }


DEAD_SCAN_LIMIT = 10_000
"""A text search looks through at most this many dead letters, the oldest (of its queue)."""


def dead_matching(web: WebState, queue: str | None, q: str, limit: int) -> list[dict[str, Any]]:
    """The dead letters a filter shows, oldest first, at most ``limit`` of them.

    ``queue``: of that queue only (``None``: every queue). ``q``: whose id, task
    or reason contains it, case-insensitive (``""``: any); a search looks through
    the oldest :data:`DEAD_SCAN_LIMIT` dead letters. The dashboard's page and bulk
    actions and the API's list and bulk routes all filter here, so they agree.
    """
    needle = q.strip().lower()
    scan = max(limit, DEAD_SCAN_LIMIT) if needle else limit
    views = [dead_view(d) for d in web.app.broker.dead_letters(queue, scan)]
    if needle:
        views = [
            v
            for v in views
            if needle in v["id"].lower()
            or needle in (v["task"] or "").lower()
            or needle in v["reason"].lower()
        ]
    return views[:limit]


async def get_dead(request: Request) -> Response:
    """Dead letters, oldest first, optionally of one queue and matching a text."""
    web = _state(request)
    queue = request.query_params.get("queue") or None
    q = request.query_params.get("q", "")
    limit = _limit(request)
    views = await run_in_threadpool(dead_matching, web, queue, q, limit)
    return json_response({"dead": views})


class _Selection(msgspec.Struct, forbid_unknown_fields=True):
    ids: list[str] | None = None
    all: bool = False
    queue: str | None = None
    q: str | None = None
    expect: int | None = None


def _chosen(web: WebState, sel: _Selection) -> list[str] | None:
    """The ids a selection acts on; ``None`` for every dead letter (``all`` unfiltered).

    A filtered ``all`` is turned into ids here, once: what is acted on is what
    matched at this read, never a dead letter that arrived after it. ``expect``
    guards that read: a different count acts on nothing (409).
    """
    if sel.ids is not None:
        return sel.ids
    queue, q = (sel.queue or None), (sel.q or "").strip()
    if queue is None and not q and sel.expect is None:
        return None  # every dead letter, as before filters existed
    ids = [v["id"] for v in dead_matching(web, queue, q, DEAD_SCAN_LIMIT)]
    if sel.expect is not None and len(ids) != sel.expect:
        raise ApiError(
            409,
            f"{len(ids)} dead letter(s) match now, not {sel.expect} as expected: nothing "
            "was done; look again and retry with the new count, or send the ids",
        )
    return ids


async def _selection(request: Request, web: WebState) -> _Selection:
    _require_json(request)
    body = await read_body(request, web.max_body_bytes)
    try:
        sel = msgspec.json.decode(body, type=_Selection)
    except msgspec.ValidationError as exc:
        raise ApiError(422, f"invalid selection: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"malformed JSON: {exc}") from None
    if sel.all == (sel.ids is not None):
        raise ApiError(422, 'give either "ids": [...] or "all": true')
    if sel.ids is not None and (sel.queue, sel.q, sel.expect) != (None, None, None):
        raise ApiError(422, '"queue", "q" and "expect" go with "all": true, not with "ids"')
    if sel.expect is not None and sel.expect < 0:
        raise ApiError(422, '"expect" is a count, 0 or more')
    return sel


async def post_dead_retry(request: Request) -> Response:
    """Put dead letters back on their queues: ``{"ids": [...]}``, or ``{"all": true}`` with
    an optional filter (``queue``, ``q``) and ``expect``."""
    web = _state(request)
    sel = await _selection(request, web)

    def retry() -> tuple[list[str], list[str]]:
        ids = _chosen(web, sel)
        if ids is not None and not ids:
            return [], []  # a filter that matches nothing must not become "every one"
        moved = web.app.retry_dead(ids)
        return moved, sorted(set(ids or ()) - set(moved))

    moved, missing = await run_in_threadpool(retry)
    return json_response({"retried": moved, "not_found": missing})


async def post_dead_delete(request: Request) -> Response:
    """Delete dead letters: ``{"ids": [...]}``, or ``{"all": true}`` with an optional filter
    (``queue``, ``q``) and ``expect``."""
    web = _state(request)
    sel = await _selection(request, web)

    def delete() -> int:
        ids = _chosen(web, sel)
        if ids is not None and not ids:
            return 0  # a filter that matches nothing must not become "every one"
        return web.app.broker.delete_dead(ids)

    return json_response({"deleted": await run_in_threadpool(delete)})


async def delete_dead_one(request: Request) -> Response:
    """Delete one dead letter; 404 when there is no such dead letter."""
    web = _state(request)
    job_id = request.path_params["job_id"]
    deleted = await run_in_threadpool(web.app.broker.delete_dead, [job_id])
    if not deleted:
        raise ApiError(404, f"no dead letter {job_id}")
    return Response(status_code=204)

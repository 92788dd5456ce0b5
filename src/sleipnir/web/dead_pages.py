"""The dead letters' pages: the list with its filter, the confirmation of a bulk action,
the action.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from . import api, dead_api
from .pages import _form, _render, _state

DEAD_PAGE_LIMIT = 1000
"""The dead-letters page shows at most this many (the oldest that match its filter)."""


def _count_param(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name, "")
    return int(raw) if raw.isdigit() else None


def _dead_filter(params: Any) -> tuple[str | None, str]:
    """The queue and the search text a query string or form names (``None``/``""``: any)."""
    queue = (params.get("queue") or "").strip() or None
    return queue, (params.get("q") or "").strip()


def _dead_url(queue: str | None, q: str, **extra: Any) -> str:
    """``/dead`` with the filter (and ``extra``) in its query string."""
    params = {**({"queue": queue} if queue else {}), **({"q": q} if q else {}), **extra}
    return f"/dead?{urlencode(params)}" if params else "/dead"


def _bulk_question(action: str, count: int, queue: str | None, q: str) -> str:
    """What the confirmation asks, e.g. ``Retry 3 dead letters matching 'billing'?``."""
    verb = "Retry" if action == "retry" else "Delete"
    noun = "dead letter" if count == 1 else "dead letters"
    where = "".join([f" matching '{q}'" if q else "", f" in queue '{queue}'" if queue else ""])
    every = "" if where or count == 1 else "all "
    return f"{verb} {every}{count} {noun}{where}?"


async def dead_page(request: Request) -> Response:
    web = _state(request)
    queue, search = _dead_filter(request.query_params)
    views = await run_in_threadpool(dead_api.dead_matching, web, queue, search, DEAD_PAGE_LIMIT)
    message = None
    if (retried := _count_param(request, "retried")) is not None:
        message = f"{retried} job(s) back on their queues"
    elif (deleted := _count_param(request, "deleted")) is not None:
        message = f"{deleted} dead letter(s) deleted"
    elif request.query_params.get("none"):
        message = "nothing selected"
    return _render(
        web, "dead.html", page="dead", letters=views, queue=queue or "", q=search,
        message=message, limit=DEAD_PAGE_LIMIT,
    )  # fmt: skip


async def dead_confirm(request: Request) -> Response:
    """Ask before a bulk action, naming how many dead letters it acts on (no JavaScript).

    The page lists the dead letters the filter matches now, and its form posts
    their ids: confirming acts on exactly those, never on a dead letter that
    arrived (or came to match) after the page was drawn.
    """
    web = _state(request)
    action = request.query_params.get("action", "")
    if action not in ("retry", "delete"):
        raise api.ApiError(404, f"no action {action!r} on dead letters")
    queue, search = _dead_filter(request.query_params)
    views = await run_in_threadpool(dead_api.dead_matching, web, queue, search, DEAD_PAGE_LIMIT)
    return _render(
        web, "dead_confirm.html", page="dead", action=action, letters=views,
        queue=queue or "", q=search, limit=DEAD_PAGE_LIMIT, back=_dead_url(queue, search),
        question=_bulk_question(action, len(views), queue, search),
    )  # fmt: skip


async def dead_action(request: Request) -> Response:
    """Retry or delete the dead letters a form names by id, then send the browser back to
    the list with its filter (POST, redirect, GET: reloading does not repeat the action).

    Only ids are acted on. A form that asks for "all" (a page from before the
    confirmation step) is sent to the confirmation page of its filter instead.
    """
    web = _state(request)
    form = await _form(request, web)
    action = request.path_params["action"]
    if action not in ("retry", "delete"):
        raise api.ApiError(404, f"no action {action!r} on dead letters")
    queue, search = _dead_filter({k: form.get_one(k) for k in ("queue", "q")})
    ids = form.get("id", [])
    if form.get_one("all") == "1" and not ids:
        params = {"action": action, "queue": queue or "", "q": search}
        return RedirectResponse(f"/dead/confirm?{urlencode(params)}", 303)
    if not ids:
        return RedirectResponse(_dead_url(queue, search, none=1), 303)
    if action == "retry":
        moved = await run_in_threadpool(web.app.retry_dead, ids)
        return RedirectResponse(_dead_url(queue, search, retried=len(moved)), 303)
    deleted = await run_in_threadpool(web.app.broker.delete_dead, ids)
    return RedirectResponse(_dead_url(queue, search, deleted=deleted), 303)

"""The JSON API: enqueue jobs (202 Accepted), ask about them or cancel them, see queues,
periodic jobs, workers (with the jobs they run) and dead letters.

Every handler reads only the broker, result-store and monitor contracts, so the
API answers the same on every backend. Blocking calls to the broker run on
Starlette's thread pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import tracing
from ..bounded import cap_text
from ..brokers.base import BrokerJobState, DeadLetter, Envelope
from ..context import read_progress
from ..errors import (
    BrokerError,
    EncodeError,
    InvalidArgumentsError,
    PayloadTooLargeError,
    SleipnirError,
    UnknownTaskError,
)
from ..job import decode_job, decode_value, encode_job, not_exact_json
from ..monitor import Heartbeat, merged_tasks, read_beats
from ..results import Capability, JobState
from ..views import schedule_views
from .batcher import KeyReusedError
from .openapi import openapi_document
from .state import WebState, job_created_at

__all__ = ["ApiError", "json_response", "routes"]

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


class JobRequest(msgspec.Struct, forbid_unknown_fields=True):
    """The body of ``POST /api/jobs``."""

    task: str
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    queue: str | None = None
    delay: float | None = None
    priority: int | None = None


_job_request = msgspec.json.Decoder(JobRequest)


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


def _decode_request(body: bytes) -> JobRequest:
    try:
        return _job_request.decode(body)
    except msgspec.ValidationError as exc:
        why = _not_exact(body)  # a number out of range ("1e400") is one, for msgspec
        if why is None:
            raise ApiError(422, f"invalid job request: {exc}") from None
        raise ApiError(400, f"malformed JSON: {why} ({exc})") from None
    except msgspec.DecodeError as exc:
        why = _not_exact(body)
        message = f"malformed JSON: {why} ({exc})" if why else f"malformed JSON: {exc}"
        raise ApiError(400, message) from None


def _not_exact(body: bytes) -> str | None:
    """Where a body that msgspec refused holds a lone surrogate (``"\\ud800"``), NaN, or
    a number out of a float's range, which msgspec's message does not say clearly.

    Python's json module reads all three, so it is asked on this error path only.
    """
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if isinstance(data, dict):
        reason = not_exact_json(data.get("args"), "argument args") or not_exact_json(
            data.get("kwargs"), "argument kwargs"
        )
        if reason is not None:
            return reason
    return not_exact_json(data, "the body")


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not 1 <= len(key) <= 255 or not key.isprintable():
        raise ApiError(400, "Idempotency-Key must be 1 to 255 printable characters")
    return key


async def post_job(request: Request) -> Response:
    """Enqueue one job; 202 with its id and where to ask about it, once it is durable."""
    web = _state(request)
    app = web.app
    _require_json(request)
    key = _idempotency_key(request)
    body = await read_body(request, web.max_body_bytes)
    req = _decode_request(body)
    try:
        task = app.get_task(req.task)
    except UnknownTaskError as exc:
        raise ApiError(422, str(exc)) from None
    if req.delay is not None and not (math.isfinite(req.delay) and req.delay >= 0):
        raise ApiError(422, "delay must be a finite number of seconds >= 0")
    try:
        job = task.build(
            req.args, req.kwargs, delay=req.delay, priority=req.priority, queue=req.queue or None
        )
    except (InvalidArgumentsError, ValueError) as exc:
        raise ApiError(422, str(exc)) from None
    trace_context = tracing.from_http(request.headers)
    if trace_context:  # the run's span joins the caller's trace (sleipnir.tracing)
        job = msgspec.structs.replace(job, headers={**job.headers, **trace_context})

    try:
        envelope = Envelope(
            id=job.id,
            queue=job.queue,
            body=encode_job(job, app.max_payload_bytes),
            priority=job.priority,
            eta_at=job.eta_at,
        )
    except PayloadTooLargeError as exc:
        raise ApiError(413, str(exc)) from None
    except EncodeError as exc:
        raise ApiError(422, str(exc)) from None
    # The Idempotency-Key and a unique task's key are claimed as task.enqueue does
    # (sleipnir.keys): the same key with the same call from Python or HTTP is one job.
    claims = task.claims_for([job], key, web.idempotency_window if key is not None else None)
    try:
        job_id, replayed = await asyncio.wrap_future(
            web.batcher.submit(envelope, claims[0] if claims else None)
        )
    except KeyReusedError:
        raise ApiError(
            422, "this Idempotency-Key was used with a different task or arguments"
        ) from None
    if not replayed:
        web.count_enqueued(job.task, job.queue)
    location = f"/api/jobs/{job_id}"
    headers = {"Location": location}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return json_response({"id": job_id, "status_url": location}, 202, headers)


def job_view(web: WebState, job_id: str) -> dict[str, Any] | None:
    """Everything known of a job, or ``None`` when neither store knows it."""
    app = web.app
    state = app.status(job_id)
    record = app.results.get(job_id)
    info = app.broker.job_info(job_id)
    if state is JobState.UNKNOWN and record is None and info is None:
        return None
    view: dict[str, Any] = {
        "id": job_id,
        "state": state.value,
        "task": record.task if record else None,
        "queue": record.queue if record else (info.queue if info else None),
        "attempts": info.attempt if info else (record.attempt if record else 0),
        "created_at": job_created_at(job_id),
        "started_at": record.started_at if record else None,
        "finished_at": record.finished_at if record and record.state.finished else None,
        "result": None,
        "error": None,
        "args": None,
        "kwargs": None,
        "progress": _progress(web, job_id),
    }
    if record is not None and record.state is JobState.SUCCEEDED and record.value is not None:
        try:
            view["result"] = decode_value(record.value)
        except msgspec.DecodeError:
            view["result"] = record.value.decode(errors="replace")
    if state in (JobState.FAILED, JobState.RETRYING):
        error = (record.error if record else None) or (info.last_error if info else None)
        view["error"] = None if error is None else cap_text(error)
    if info is not None and info.state is BrokerJobState.DEAD:
        dead = _find_dead(web, job_id, info.queue)
        if dead is not None:
            view.update(_body_fields(dead))
    return view


def _progress(web: WebState, job_id: str) -> dict[str, Any] | None:
    if not web.app.results.keeps(Capability.KEYS):
        return None  # this result store keeps no keys, so no progress either
    found = read_progress(web.app.results, [job_id]).get(job_id)
    return None if found is None else {"done": found[0], "total": found[1]}


def _find_dead(web: WebState, job_id: str, queue: str) -> DeadLetter | None:
    for letter in web.app.broker.dead_letters(queue, limit=10_000):
        if letter.id == job_id:
            return letter
    return None


def _body_fields(letter: DeadLetter) -> dict[str, Any]:
    try:
        job = decode_job(letter.body)
    except SleipnirError:
        return {"task": None}
    return {"task": job.task, "args": job.args, "kwargs": job.kwargs}


async def get_job(request: Request) -> Response:
    """A job's state, attempts, result or error, and timestamps."""
    web = _state(request)
    job_id = request.path_params["job_id"]
    view = await run_in_threadpool(job_view, web, job_id)
    if view is None:
        raise ApiError(404, f"no job {job_id} (never enqueued here, or its record expired)")
    return json_response(view)


def cancel_job(web: WebState, job_id: str) -> None:
    """Ask for a job's cancellation; ApiError 404 (unknown) or 409 (already finished)."""
    app = web.app
    record = app.results.get(job_id)
    info = app.broker.job_info(job_id)
    if record is None and info is None:
        raise ApiError(404, f"no job {job_id} (never enqueued here, or its record expired)")
    if record is not None and record.state.finished:
        raise ApiError(
            409, f"job {job_id} already finished ({record.state.value}): nothing to cancel"
        )
    if info is not None and info.state is BrokerJobState.DEAD:
        raise ApiError(409, f"job {job_id} already finished (failed): it is a dead letter")
    if not app.job(job_id).cancel():
        raise ApiError(409, f"job {job_id} finished meanwhile: nothing to cancel")


async def post_job_cancel(request: Request) -> Response:
    """Cancel a job: a queued job never runs, a running one is stopped; 202 once asked."""
    web = _state(request)
    _require_json(request)  # as every JSON POST: no cross-site form can send it
    job_id = request.path_params["job_id"]
    await run_in_threadpool(cancel_job, web, job_id)
    return json_response({"id": job_id, "status": JobState.CANCELLED.value}, 202)


def queue_views(web: WebState) -> list[dict[str, Any]]:
    """Every queue's counts, the age of its oldest ready job and when its next scheduled
    job comes due (``None`` where the backend cannot tell)."""
    now = web.app.clock.time()
    return [
        {
            "queue": s.queue,
            "ready": s.ready,
            "scheduled": s.scheduled,
            "running": s.running,
            "dead": s.dead,
            "oldest_ready_at": s.oldest_ready_at,
            "oldest_ready_age": None
            if s.oldest_ready_at is None
            else max(0.0, now - s.oldest_ready_at),
            "next_scheduled_at": s.next_scheduled_at,
            "next_scheduled_in": None
            if s.next_scheduled_at is None
            else max(0.0, s.next_scheduled_at - now),
        }
        for s in web.stats()
    ]


async def get_queues(request: Request) -> Response:
    """Per queue: ready, scheduled, running and dead jobs, the oldest ready job's age and
    when the next scheduled job comes due."""
    return json_response({"queues": await run_in_threadpool(queue_views, _state(request))})


def worker_views(web: WebState) -> list[Heartbeat]:
    """The live workers' latest beats."""
    return read_beats(web.app.results)


def workers_with_running(web: WebState) -> list[dict[str, Any]]:
    """The live workers' latest beats, each running job with its progress (one store call)."""
    beats = read_beats(web.app.results)
    progress = (
        read_progress(web.app.results, [j.id for b in beats for j in b.running])
        if web.app.results.keeps(Capability.KEYS)
        else {}
    )
    now = web.app.clock.time()
    rows = []
    for beat in beats:
        row: dict[str, Any] = msgspec.to_builtins(beat)
        row["running"] = [
            {
                **msgspec.to_builtins(job),
                "running_for": max(0.0, now - job.started_at),
                "progress": None
                if (p := progress.get(job.id)) is None
                else {"done": p[0], "total": p[1]},
            }
            for job in beat.running
        ]
        rows.append(row)
    return rows


async def get_workers(request: Request) -> Response:
    """The live workers, from their latest heartbeats, with the jobs they run."""
    rows = await run_in_threadpool(workers_with_running, _state(request))
    return json_response({"workers": rows})


async def get_schedules(request: Request) -> Response:
    """The periodic tasks: schedule, next run, and whether the last tick fired (and where)."""
    web = _state(request)
    views = await run_in_threadpool(schedule_views, web.app)
    return json_response({"schedules": [v.as_dict() for v in views]})


async def get_hosts(request: Request) -> Response:
    """Per host: its latest figures (CPU steal, load, memory) and its workers."""
    beats = await run_in_threadpool(worker_views, _state(request))
    hosts: dict[str, dict[str, Any]] = {}
    for beat in sorted(beats, key=lambda b: b.at):
        host = hosts.setdefault(beat.host, {"host": beat.host, "workers": [], "figures": None})
        host["workers"].append(beat.worker_id)
        if beat.host_figures is not None:
            host["figures"] = beat.host_figures
    return json_response({"hosts": [hosts[h] for h in sorted(hosts)]})


async def get_tasks(request: Request) -> Response:
    """Per task and queue, the live workers' counts and wait and run time quantiles."""
    beats = await run_in_threadpool(worker_views, _state(request))
    out = []
    for f in merged_tasks(beats):
        out.append(
            {
                "task": f.task,
                "queue": f.queue,
                "succeeded": f.succeeded,
                "failed": f.failed,
                "retried": f.retried,
                "cancelled": f.cancelled,
                "wait_p50": f.wait.quantile(0.5),
                "wait_p95": f.wait.quantile(0.95),
                "run_p50": f.duration.quantile(0.5),
                "run_p95": f.duration.quantile(0.95),
            }
        )
    return json_response({"tasks": out})


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


def _limit(request: Request, default: int = 100) -> int:
    raw = request.query_params.get("limit", str(default))
    try:
        limit = int(raw)
    except ValueError:
        raise ApiError(400, f"limit must be an integer, not {raw!r}") from None
    if not 1 <= limit <= 10_000:
        raise ApiError(400, "limit must be between 1 and 10000")
    return limit


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


async def get_openapi(request: Request) -> Response:
    """The OpenAPI document of this API."""
    return json_response(openapi_document(_state(request)))


async def get_metrics(request: Request) -> Response:
    """Prometheus text exposition."""
    from ..monitor import prometheus_text

    web = _state(request)

    def render() -> bytes:
        with web.lock:
            enqueued = dict(web.enqueued)
        web.stats()  # keeps the oldest-ready history going while only Prometheus looks
        return prometheus_text(web.app.broker, web.app.results, web.app.clock, enqueued=enqueued)

    try:
        text = await run_in_threadpool(render)
    except BrokerError as exc:
        raise ApiError(503, f"broker unreachable: {exc}", {"Retry-After": "5"}) from None
    return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")


async def healthz(request: Request) -> Response:
    """Liveness for load balancers and probes: 200 while the server runs. No token needed."""
    return json_response({"status": "ok"})


def routes() -> list[Route]:
    """The API's routes."""
    return [
        Route("/api/jobs", post_job, methods=["POST"]),
        Route("/api/jobs/{job_id}", get_job, methods=["GET"]),
        Route("/api/jobs/{job_id}/cancel", post_job_cancel, methods=["POST"]),
        Route("/api/queues", get_queues, methods=["GET"]),
        Route("/api/workers", get_workers, methods=["GET"]),
        Route("/api/hosts", get_hosts, methods=["GET"]),
        Route("/api/tasks", get_tasks, methods=["GET"]),
        Route("/api/schedules", get_schedules, methods=["GET"]),
        Route("/api/dead", get_dead, methods=["GET"]),
        Route("/api/dead/retry", post_dead_retry, methods=["POST"]),
        Route("/api/dead/delete", post_dead_delete, methods=["POST"]),
        Route("/api/dead/{job_id}", delete_dead_one, methods=["DELETE"]),
        Route("/api/openapi.json", get_openapi, methods=["GET"]),
        Route("/metrics", get_metrics, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]

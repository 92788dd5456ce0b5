"""The jobs' routes: ``POST /api/jobs`` (202), a job's view, its cancel."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from .. import tracing
from ..bounded import cap_text
from ..brokers.base import BrokerJobState, DeadLetter, Envelope
from ..context import read_progress
from ..errors import (
    EncodeError,
    InvalidArgumentsError,
    PayloadTooLargeError,
    SleipnirError,
    UnknownTaskError,
)
from ..job import decode_job, decode_value, encode_job, not_exact_json
from ..results import Capability, JobState
from .batcher import KeyReusedError
from .http import ApiError, _require_json, _state, json_response, read_body
from .state import WebState, job_created_at


class JobRequest(msgspec.Struct, forbid_unknown_fields=True):
    """The body of ``POST /api/jobs``."""

    task: str
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    queue: str | None = None
    delay: float | None = None
    priority: int | None = None


_job_request = msgspec.json.Decoder(JobRequest)


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
        raise ApiError(404, web.app.broker.not_held(job_id))
    return json_response(view)


def cancel_job(web: WebState, job_id: str) -> None:
    """Ask for a job's cancellation; ApiError 404 (unknown) or 409 (already finished)."""
    app = web.app
    record = app.results.get(job_id)
    info = app.broker.job_info(job_id)
    if record is None and info is None:
        raise ApiError(404, web.app.broker.not_held(job_id))
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

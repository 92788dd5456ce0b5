"""The JSON API: enqueue jobs (202 Accepted), ask about them or cancel them, see queues,
periodic jobs, workers (with the jobs they run) and dead letters.

Every handler reads only the broker, result-store and monitor contracts, so the
API answers the same on every backend. Blocking calls to the broker run on
Starlette's thread pool, never on the event loop.
"""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..context import read_progress
from ..errors import (
    BrokerError,
)
from ..monitor import Heartbeat, merged_tasks, read_beats
from ..results import Capability
from ..views import schedule_views
from .dead_api import (
    delete_dead_one,
    get_dead,
    post_dead_delete,
    post_dead_retry,
)
from .http import ApiError, _state, json_response
from .jobs_api import (
    get_job,
    post_job,
    post_job_cancel,
)
from .openapi import openapi_document
from .state import WebState

__all__ = ["ApiError", "json_response", "routes"]


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

"""The dashboard: server-rendered pages with SVG plots drawn here, no JavaScript needed.

Pages: overview (throughput and failures over time, oldest ready job per queue,
periodic jobs, running jobs with their progress and a cancel button), queues, job
search and detail (cancel), dead letters (retry, delete), workers (grouped by host
and parent process), hosts (CPU steal plotted and flagged when sustained).
Like the API, it reads only the broker, result-store and monitor contracts.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

from markupsafe import Markup
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from ..monitor import (
    Heartbeat,
    HistoryPoint,
    Sample,
    merged_tasks,
    read_beats,
    read_history,
    steal_is_sustained,
    throughput_series,
)
from ..results import Capability
from ..views import format_span, running_views, schedule_views
from . import api, jobs_api
from .dead_pages import (
    _count_param,
    dead_action,
    dead_confirm,
    dead_page,
)
from .pages import (
    _env,
    _form,
    _pct,
    _progress,
    _render,
    _seconds,
    _state,
    _when,
    error_page,
    forget_session,
    login_page,
    read_form,
)
from .sessions import SESSION_COOKIE
from .state import WebState
from .svg import line_chart

__all__ = ["error_page", "forget_session", "login_page", "routes"]


STEAL_THRESHOLD = 0.01
"""A host is flagged when every sample of the last STEAL_WINDOW seconds shows this much steal."""
STEAL_WINDOW = 300.0


_env.filters.update(when=_when, seconds=_seconds, pct=_pct, span=format_span, progress=_progress)


# -- pages ------------------------------------------------------------------------------


def _queue_series(web: WebState, since: float) -> dict[str, list[tuple[float, float]]]:
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    with web.lock:
        samples = list(web.queue_history)
    for sample in samples:
        if sample.at < since:
            continue
        for s in sample.stats:
            age = 0.0 if s.oldest_ready_at is None else max(0.0, sample.at - s.oldest_ready_at)
            series[s.queue].append((sample.at, age))
    return dict(series)


def _overview(web: WebState) -> dict[str, Any]:
    now = web.app.clock.time()
    since = now - web.history_window
    queues = api.queue_views(web)
    beats, history, note = _monitoring(web, since)
    throughput = throughput_series(history, since, now, 60.0)
    return {
        "queues": queues,
        "schedules": schedule_views(web.app, now),
        "running": running_views(web.app, beats, now, {q["queue"]: q["running"] for q in queues}),
        "workers": [b for b in beats if not b.stopping],
        "tasks": merged_tasks(beats),
        "totals": {k: sum(q[k] for q in queues) for k in ("ready", "scheduled", "running", "dead")},
        "done_last_minute": sum(v for _, v in throughput["succeeded"][-2:]),
        "monitor_note": note,
        "throughput_chart": Markup(
            line_chart(throughput, since=since, until=now, title="Jobs per minute (UTC)")
        ),
        "oldest_chart": Markup(
            line_chart(
                _queue_series(web, since),
                since=since,
                until=now,
                title="Oldest ready job per queue, seconds waiting (UTC)",
                unit="s",
            )
        ),
    }


def _monitoring(web: WebState, since: float) -> tuple[list[Heartbeat], list[HistoryPoint], str]:
    """Beats and history; an empty view with a note where the store keeps no heartbeats."""
    lacks = web.app.results.lacks(Capability.BEATS)
    if lacks is not None:
        return [], [], f"no monitoring on this result store: {lacks}"
    return read_beats(web.app.results), read_history(web.app.results, since), ""


async def overview(request: Request) -> Response:
    web = _state(request)
    data = await run_in_threadpool(_overview, web)
    return _render(
        web, "overview.html", page="overview", refresh=10, message=_cancel_message(request),
        **data,
    )  # fmt: skip


async def queues_page(request: Request) -> Response:
    web = _state(request)
    queues = await run_in_threadpool(api.queue_views, web)
    purged = _count_param(request, "purged")
    message = None
    if purged is not None:
        message = (
            f"{purged} ready or scheduled job(s) of {request.query_params.get('queue')} deleted"
        )
    return _render(web, "queues.html", page="queues", queues=queues, message=message)


async def purge_queue(request: Request) -> Response:
    web = _state(request)
    await _form(request, web)
    name = request.path_params["queue"]
    purged = await run_in_threadpool(web.app.broker.purge, name)
    return RedirectResponse(f"/queues?{urlencode({'purged': purged, 'queue': name})}", 303)


async def jobs_page(request: Request) -> Response:
    web = _state(request)
    job_id = request.query_params.get("id", "").strip()
    if job_id:
        return RedirectResponse(f"/jobs/{job_id}", 303)
    return _render(web, "job.html", page="jobs", job=None, query="", timeline=[])


def _timeline(job: dict[str, Any]) -> list[tuple[float | None, str]]:
    events: list[tuple[float | None, str]] = [(job["created_at"], "enqueued")]
    attempts = job["attempts"]
    if job["started_at"] is not None:
        events.append((job["started_at"], f"attempt {attempts} started"))
    if job["finished_at"] is not None:
        events.append((job["finished_at"], f"attempt {attempts} ended: {job['state']}"))
    elif job["state"] == "retrying":
        events.append((None, f"attempt {attempts} failed; waiting for its retry"))
    elif job["state"] == "running":
        events.append((None, f"attempt {attempts} running"))
    return events


async def job_page(request: Request) -> Response:
    web = _state(request)
    job_id = request.path_params["job_id"]
    job = await run_in_threadpool(jobs_api.job_view, web, job_id)
    if job is None:
        return _render(
            web, "job.html", 404, page="jobs", job=None, query=job_id, timeline=[],
        )  # fmt: skip
    return _render(
        web, "job.html", page="jobs", job=job, query=job_id, timeline=_timeline(job),
        message=_cancel_message(request),
    )  # fmt: skip


def _cancel_message(request: Request) -> str | None:
    if job_id := request.query_params.get("cancelled"):
        return f"cancellation of {job_id} asked for; the worker stops it shortly"
    if job_id := request.query_params.get("finished"):
        return f"{job_id} had already finished: nothing to cancel"
    return None


async def cancel_job(request: Request) -> Response:
    """Cancel a job, then send the browser back where the button was (POST, redirect, GET)."""
    web = _state(request)
    form = await _form(request, web)
    job_id = request.path_params["job_id"]
    back = (form.get_one("next") or "/").split("?", 1)[0]
    if not back.startswith("/") or back.startswith("//"):
        back = "/"
    try:
        await run_in_threadpool(jobs_api.cancel_job, web, job_id)
    except api.ApiError as exc:
        if exc.status != 409:
            raise
        return RedirectResponse(f"{back}?{urlencode({'finished': job_id})}", 303)
    return RedirectResponse(f"{back}?{urlencode({'cancelled': job_id})}", 303)


def _workers(web: WebState) -> dict[str, Any]:
    beats, _, note = _monitoring(web, web.app.clock.time())
    groups: dict[tuple[str, int], list[Heartbeat]] = defaultdict(list)
    for beat in beats:
        groups[(beat.host, beat.ppid)].append(beat)
    return {"groups": sorted(groups.items()), "monitor_note": note}


async def workers_page(request: Request) -> Response:
    web = _state(request)
    data = await run_in_threadpool(_workers, web)
    return _render(web, "workers.html", page="workers", refresh=10, **data)


def _per_host(history: Sequence[HistoryPoint], bucket: float) -> dict[str, list[Sample]]:
    """Each host's samples, one per ``bucket`` seconds (several workers share a host)."""
    by_host: dict[str, dict[int, Sample]] = defaultdict(dict)
    for point in history:
        s = point.sample
        by_host[s.host][int(s.at // bucket)] = s  # the latest of the bucket
    return {h: [b[k] for k in sorted(b)] for h, b in sorted(by_host.items())}


def _hosts(web: WebState) -> dict[str, Any]:
    now = web.app.clock.time()
    since = now - web.history_window
    beats, history, note = _monitoring(web, since)
    per_host = _per_host(history, 5.0)
    latest = {b.host: b for b in sorted(beats, key=lambda b: b.at)}
    hosts = []
    for host in sorted(set(per_host) | set(latest)):
        samples = per_host.get(host, [])
        beat = latest.get(host)
        hosts.append(
            {
                "host": host,
                "figures": beat.host_figures if beat else None,
                "workers": sum(1 for b in beats if b.host == host and not b.stopping),
                "flagged": steal_is_sustained(
                    samples, now, window=STEAL_WINDOW, threshold=STEAL_THRESHOLD
                ),
                "chart": Markup(
                    line_chart(
                        {
                            name: [
                                (s.at, v) for s in samples if (v := getattr(s, field)) is not None
                            ]
                            for name, field in (
                                ("steal", "cpu_steal"),
                                ("iowait", "cpu_iowait"),
                                ("user", "cpu_user"),
                            )
                        },
                        since=since,
                        until=now,
                        title=f"{host}: CPU time shares (UTC)",
                        unit="%",
                        threshold=STEAL_THRESHOLD,
                    )
                ),
            }
        )
    return {"hosts": hosts, "monitor_note": note, "window": STEAL_WINDOW}


async def hosts_page(request: Request) -> Response:
    web = _state(request)
    data = await run_in_threadpool(_hosts, web)
    return _render(web, "hosts.html", page="hosts", refresh=10, **data)


async def login(request: Request) -> Response:
    web = _state(request)
    if not web.token:
        return RedirectResponse("/", 303)
    if request.method == "GET":
        return login_page(web, next_path=request.query_params.get("next", "/"))
    form = await read_form(request, 4096)
    given = form.get_one("token")
    next_path = form.get_one("next") or "/"
    if not next_path.startswith("/") or next_path.startswith("//"):
        next_path = "/"
    if given is None or not web.token_ok(given):
        return _render(
            web, "login.html", 401, page="login", next_path=next_path, error="wrong token"
        )
    response = RedirectResponse(next_path, 303)
    response.set_cookie(
        SESSION_COOKIE,
        web.sessions.issue(),
        max_age=math.ceil(web.session_lifetime),
        httponly=True,
        samesite="strict",
        # Known only when this server itself speaks TLS: behind a proxy that ends
        # TLS, the scheme here is http and the proxy should add Secure.
        secure=request.url.scheme == "https",
    )
    return response


async def logout(request: Request) -> Response:
    """End the session on the server (its cookie is refused from now on, wherever it is
    replayed), then make the browser forget it."""
    web = _state(request)
    await _form(request, web)
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie is not None:
        await run_in_threadpool(web.sessions.revoke, cookie)
    response = RedirectResponse("/login", 303)
    forget_session(response, request.url.scheme == "https")
    return response


def routes() -> list[Route]:
    """The dashboard's routes."""
    return [
        Route("/", overview, methods=["GET"]),
        Route("/queues", queues_page, methods=["GET"]),
        Route("/queues/{queue}/purge", purge_queue, methods=["POST"]),
        Route("/jobs", jobs_page, methods=["GET"]),
        Route("/jobs/{job_id}", job_page, methods=["GET"]),
        Route("/jobs/{job_id}/cancel", cancel_job, methods=["POST"]),
        Route("/dead", dead_page, methods=["GET"]),
        Route("/dead/confirm", dead_confirm, methods=["GET"]),
        Route("/dead/{action:str}", dead_action, methods=["POST"]),
        Route("/workers", workers_page, methods=["GET"]),
        Route("/hosts", hosts_page, methods=["GET"]),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
    ]

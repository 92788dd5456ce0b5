"""The HTTP API through a real server and client: every status code it promises."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.routing import Route

from sleipnir import ConfigurationError
from sleipnir.brokers.base import BrokerJobState
from sleipnir.monitor import RunningJob, TaskFigures
from sleipnir.schedule import Scheduler
from sleipnir.testing import FakeClock
from sleipnir.web import check_bind, create_app
from sleipnir.web.openapi import openapi_document

from .conftest import TOKEN, Server, build_app, run_server, store_beat

JSON = {"content-type": "application/json"}


def ready(server: Server) -> int:
    """Jobs waiting in every queue (ready or scheduled)."""
    return sum(s.ready + s.scheduled for s in server.app.broker.stats())


# -- POST /api/jobs -----------------------------------------------------------------------


def test_post_answers_202_with_location_once_the_job_is_stored(server: Server) -> None:
    r = server.client.post("/api/jobs", json={"task": "add", "args": [2], "kwargs": {"b": 3}})
    assert r.status_code == 202
    job_id = r.json()["id"]
    assert r.headers["location"] == f"/api/jobs/{job_id}" == r.json()["status_url"]
    info = server.app.broker.job_info(job_id)
    assert info is not None and info.state is BrokerJobState.READY
    assert server.client.get(f"/api/jobs/{job_id}").json()["state"] == "queued"

    server.work()
    job = server.client.get(r.headers["location"]).json()
    assert job["state"] == "succeeded"
    assert job["result"] == 5
    assert job["attempts"] == 1
    assert job["task"] == "add"
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]


def test_post_honours_queue_delay_and_priority(server: Server) -> None:
    r = server.client.post(
        "/api/jobs", json={"task": "echo", "args": [1], "queue": "bulk", "delay": 600}
    )
    assert r.status_code == 202
    info = server.app.broker.job_info(r.json()["id"])
    assert info is not None
    assert (info.queue, info.state) == ("bulk", BrokerJobState.SCHEDULED)
    r = server.client.post("/api/jobs", json={"task": "echo", "priority": 7})
    assert r.status_code == 202


def test_same_idempotency_key_gives_the_same_job(server: Server) -> None:
    body = {"task": "add", "args": [1, 2]}
    first = server.client.post("/api/jobs", json=body, headers={"Idempotency-Key": "order-17"})
    second = server.client.post("/api/jobs", json=body, headers={"Idempotency-Key": "order-17"})
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert second.headers["idempotent-replayed"] == "true"
    assert ready(server) == 1
    other = server.client.post("/api/jobs", json=body, headers={"Idempotency-Key": "order-18"})
    assert other.json()["id"] != first.json()["id"]
    assert ready(server) == 2


def test_concurrent_posts_with_one_key_make_one_job(server: Server) -> None:
    body = {"task": "add", "args": [4, 5]}

    def post(_: int) -> httpx.Response:
        return server.client.post("/api/jobs", json=body, headers={"Idempotency-Key": "k-conc"})

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post, range(16)))
    assert {r.status_code for r in answers} == {202}
    assert len({r.json()["id"] for r in answers}) == 1
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in answers) == 15
    assert ready(server) == 1


def test_many_concurrent_posts_are_each_stored_once(server: Server) -> None:
    def post(i: int) -> httpx.Response:
        return server.client.post("/api/jobs", json={"task": "echo", "args": [i]})

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(post, range(100)))
    assert {r.status_code for r in answers} == {202}
    ids = {r.json()["id"] for r in answers}
    assert len(ids) == 100
    assert ready(server) == 100
    server.work()
    values = sorted(server.client.get(f"/api/jobs/{i}").json()["result"] for i in ids)
    assert values == list(range(100))


def test_an_idempotency_key_reused_with_another_call_is_422(server: Server) -> None:
    headers = {"Idempotency-Key": "k1"}
    assert server.client.post("/api/jobs", json={"task": "echo"}, headers=headers).is_success
    r = server.client.post("/api/jobs", json={"task": "echo", "args": [2]}, headers=headers)
    assert r.status_code == 422
    assert "different task or arguments" in r.json()["error"]
    assert ready(server) == 1


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b'{"task": "add", "args": [1, 2]', 400, "malformed JSON"),
        (b"not json", 400, "malformed JSON"),
        (b'{"task": "nope"}', 422, "unknown task 'nope'"),
        (b'{"task": "add", "args": [1]}', 422, "arguments do not fit add"),
        (b'{"task": "add", "args": [1, 2], "kw": {}}', 422, "unknown field"),
        (b'{"task": "add", "args": "12"}', 422, "Expected `array`"),
        (b'{"task": "echo", "priority": 1000}', 422, "priority must be between"),
        (b'{"task": "echo", "delay": -1}', 422, "delay must be"),
        (b"[1, 2]", 422, "Expected `object`"),
    ],
)
def test_bad_input_gets_a_4xx_that_says_what_is_wrong_and_stores_nothing(
    server: Server, body: bytes, status: int, says: str
) -> None:
    r = server.client.post("/api/jobs", content=body, headers=JSON)
    assert r.status_code == status, r.text
    assert says in r.json()["error"]
    assert ready(server) == 0


def test_a_body_that_is_not_json_content_is_415(server: Server) -> None:
    r = server.client.post(
        "/api/jobs", content=b'{"task": "echo"}', headers={"content-type": "text/plain"}
    )
    assert r.status_code == 415
    assert ready(server) == 0


def test_a_declared_body_over_the_limit_is_413(tmp_path: Path) -> None:
    for server in run_server(build_app(f"sqlite:///{tmp_path}/j.db"), max_body_bytes=1000):
        big = {"task": "echo", "args": ["x" * 2000]}
        r = server.client.post("/api/jobs", json=big)
        assert r.status_code == 413
        assert "over the limit of 1000 bytes" in r.json()["error"]
        assert ready(server) == 0


def test_a_chunked_body_over_the_limit_is_413(tmp_path: Path) -> None:
    for server in run_server(build_app(f"sqlite:///{tmp_path}/j.db"), max_body_bytes=1000):

        def chunks() -> Iterator[bytes]:
            yield b'{"task": "echo", "args": ["'
            for _ in range(100):
                yield b"x" * 100
            yield b'"]}'

        r = server.client.post("/api/jobs", content=chunks(), headers=JSON)
        assert r.status_code == 413
        assert ready(server) == 0


def test_the_body_is_read_no_further_than_the_limit(tmp_path: Path) -> None:
    """At the ASGI level: count what the app pulls from a body of 100 chunks of 1 KiB."""
    app = build_app(f"sqlite:///{tmp_path}/j.db")
    asgi = create_app(app, max_body_bytes=4096)
    pulled = []
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        pulled.append(1024)
        return {"type": "http.request", "body": b"x" * 1024, "more_body": len(pulled) < 100}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/jobs",
        "raw_path": b"/api/jobs",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    asyncio.run(asgi(scope, receive, send))
    app.close()
    assert sent[0]["status"] == 413
    assert sum(pulled) <= 4096 + 1024


def test_an_encoded_job_over_the_payload_limit_is_413(tmp_path: Path) -> None:
    app = build_app(f"sqlite:///{tmp_path}/j.db")
    app.max_payload_bytes = 500
    for server in run_server(app, max_body_bytes=10_000):
        r = server.client.post("/api/jobs", json={"task": "echo", "args": ["y" * 1000]})
        assert r.status_code == 413
        assert "over the limit of 500 bytes" in r.json()["error"]
        assert ready(server) == 0


def test_an_unreachable_broker_gives_503_with_retry_after_never_202() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = build_app(f"redis://127.0.0.1:{port}/0?socket_connect_timeout=0.2")
    for server in run_server(app):
        r = server.client.post("/api/jobs", json={"task": "echo"})
        assert r.status_code == 503
        assert r.headers["retry-after"] == "5"
        assert "unreachable" in r.json()["error"]
        with_key = server.client.post(
            "/api/jobs", json={"task": "echo"}, headers={"Idempotency-Key": "x"}
        )
        assert with_key.status_code == 503
        assert server.client.get("/api/queues").status_code == 503
        assert server.client.get("/").status_code == 503
        assert server.client.get("/healthz").status_code == 200


# -- authentication and cross-site requests --------------------------------------------------


def test_every_route_but_healthz_needs_the_token(server: Server) -> None:
    anonymous = server.anonymous()
    wrong = server.anonymous(headers={"Authorization": "Bearer nope"})
    for client in (anonymous, wrong):
        r = client.post("/api/jobs", json={"task": "echo"})
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Bearer")
        for path in ("/api/queues", "/api/workers", "/api/dead", "/metrics", "/api/openapi.json"):
            assert client.get(path).status_code == 401, path
        page = client.get("/dead")
        assert page.status_code == 401
        assert 'name="token"' in page.text  # the login form
        assert client.get("/healthz").status_code == 200
    assert ready(server) == 0


def test_login_sets_a_session_cookie_for_the_dashboard(server: Server) -> None:
    browser = server.anonymous()
    bad = browser.post("/login", data={"token": "nope", "next": "/queues"})
    assert bad.status_code == 401
    r = browser.post("/login", data={"token": TOKEN, "next": "/queues"})
    assert r.status_code == 303
    assert r.headers["location"] == "/queues"
    assert "httponly" in r.headers["set-cookie"].lower()
    assert browser.get("/queues").status_code == 200
    assert browser.get("/api/queues").status_code == 200


def test_non_loopback_bind_without_a_token_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="SLEIPNIR_API_TOKEN"):
        check_bind("0.0.0.0", None)
    with pytest.raises(ConfigurationError):
        check_bind("192.0.2.10", "")
    check_bind("0.0.0.0", TOKEN)
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    check_bind("localhost", None)


def test_without_a_token_only_loopback_host_names_are_served(open_server: Server) -> None:
    client = open_server.client
    assert client.get("/api/queues").status_code == 200
    rebinding = client.get("/api/queues", headers={"Host": "evil.example:8000"})
    assert rebinding.status_code == 403


def test_dashboard_forms_refuse_cross_site_posts(server: Server) -> None:
    server.client.post("/api/jobs", json={"task": "refuse", "args": ["no"]})
    server.work()
    [dead] = server.app.broker.dead_letters()
    page = server.client.get("/dead").text
    csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    no_token = server.client.post("/dead/retry", data={"id": dead.id})
    assert no_token.status_code == 403
    cross_site = server.client.post(
        "/dead/retry",
        data={"id": dead.id, "csrf": csrf},
        headers={"Origin": "https://evil.example"},
    )
    assert cross_site.status_code == 403
    fetch_cross = server.client.post(
        "/dead/retry", data={"id": dead.id, "csrf": csrf}, headers={"Sec-Fetch-Site": "cross-site"}
    )
    assert fetch_cross.status_code == 403
    assert len(server.app.broker.dead_letters()) == 1
    same_site = server.client.post(
        "/dead/retry",
        data={"id": dead.id, "csrf": csrf},
        headers={"Origin": server.url},
        follow_redirects=True,
    )
    assert same_site.status_code == 200
    assert "1 job(s) back on their queues" in same_site.text
    assert server.app.broker.dead_letters() == []


# -- reading --------------------------------------------------------------------------------


def test_unknown_job_is_404(server: Server) -> None:
    r = server.client.get("/api/jobs/06H3FZZYDFRSNXZGX8W83BEWRR")
    assert r.status_code == 404
    assert "no job" in r.json()["error"]


def test_queues_workers_hosts_and_tasks(server: Server) -> None:
    for i in range(3):
        server.client.post("/api/jobs", json={"task": "add", "args": [i, i]})
    server.client.post("/api/jobs", json={"task": "refuse", "args": ["because"]})
    queues = {q["queue"]: q for q in server.client.get("/api/queues").json()["queues"]}
    assert (queues["default"]["ready"], queues["mail"]["ready"]) == (3, 1)
    assert queues["default"]["oldest_ready_age"] >= 0
    worker = server.work()
    queues = {q["queue"]: q for q in server.client.get("/api/queues").json()["queues"]}
    assert (queues["default"]["ready"], queues["mail"]["dead"]) == (0, 1)
    [beat] = server.client.get("/api/workers").json()["workers"]
    assert beat["worker_id"] == worker.id
    assert (beat["succeeded"], beat["failed"], beat["stopping"]) == (3, 1, True)
    assert beat["host_figures"]["cpu_count"] >= 1
    assert beat["ppid"] == os.getppid() and beat["parent"]  # the process that runs pytest
    [host] = server.client.get("/api/hosts").json()["hosts"]
    assert host["workers"] == [worker.id]
    assert 0.0 <= host["figures"]["cpu_steal"] <= 1.0
    tasks = {t["task"]: t for t in server.client.get("/api/tasks").json()["tasks"]}
    assert (tasks["add"]["succeeded"], tasks["refuse"]["failed"]) == (3, 1)
    assert tasks["add"]["run_p50"] is not None


def test_dead_letters_list_retry_and_delete(server: Server) -> None:
    ids = [
        server.client.post("/api/jobs", json={"task": "refuse", "args": [f"r{i}"]}).json()["id"]
        for i in range(3)
    ]
    server.work()
    dead = server.client.get("/api/dead").json()["dead"]
    assert sorted(d["id"] for d in dead) == sorted(ids)
    assert dead[0]["task"] == "refuse" and "Fail: r" in dead[0]["reason"]
    assert server.client.get("/api/dead", params={"queue": "default"}).json()["dead"] == []
    assert server.client.get("/api/dead", params={"limit": "x"}).status_code == 400

    job = server.client.get(f"/api/jobs/{ids[0]}").json()
    assert (job["state"], job["args"]) == ("failed", ["r0"])
    assert "Fail: r0" in job["error"]

    r = server.client.post("/api/dead/retry", json={"ids": [ids[0], "nope"]})
    assert r.json() == {"retried": [ids[0]], "not_found": ["nope"]}
    assert server.client.get(f"/api/jobs/{ids[0]}").json()["state"] == "queued"
    assert server.client.delete(f"/api/dead/{ids[1]}").status_code == 204
    assert server.client.delete(f"/api/dead/{ids[1]}").status_code == 404
    assert server.client.post("/api/dead/delete", json={"all": True}).json() == {"deleted": 1}
    assert server.client.post("/api/dead/delete", json={}).status_code == 422
    assert server.client.post("/api/dead/delete", content=b"{", headers=JSON).status_code == 400
    assert server.app.broker.dead_letters() == []


def test_metrics_are_prometheus_text_in_base_units(server: Server) -> None:
    for i in range(4):
        server.client.post("/api/jobs", json={"task": "add", "args": [i, 1]})
    server.client.post("/api/jobs", json={"task": "refuse", "args": ["x"]})
    server.client.post("/api/jobs", json={"task": "echo", "delay": 3600})
    worker = server.work()
    r = server.client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }
    w = ("worker", worker.id)
    assert samples[("sleipnir_jobs_enqueued_total", (("queue", "default"), ("task", "add")))] == 4
    key = (("queue", "default"), ("task", "add"), w)
    assert samples[("sleipnir_jobs_succeeded_total", key)] == 4
    assert samples[("sleipnir_job_duration_seconds_count", key)] == 4
    assert samples[("sleipnir_job_queue_wait_seconds_count", key)] == 4
    inf = tuple(sorted([*key, ("le", "+Inf")]))
    assert samples[("sleipnir_job_duration_seconds_bucket", inf)] == 4
    fail_key = (("queue", "mail"), ("task", "refuse"), w)
    assert samples[("sleipnir_jobs_failed_total", fail_key)] == 1
    assert samples[("sleipnir_queue_depth", (("queue", "default"), ("state", "scheduled")))] == 1
    assert samples[("sleipnir_queue_depth", (("queue", "mail"), ("state", "dead")))] == 1
    assert ("sleipnir_queue_oldest_ready_age_seconds", (("queue", "default"),)) in samples
    host = worker.id.split(":", 1)[0]
    assert 0.0 <= samples[("sleipnir_host_cpu_steal_ratio", (("host", host),))] <= 1.0
    assert samples[("sleipnir_broker_up", ())] == 1


def test_healthz_answers_without_a_token(server: Server) -> None:
    r = server.anonymous().get("/healthz")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})


def test_queues_say_when_the_next_scheduled_job_comes_due(server: Server) -> None:
    before = server.app.clock.time()
    for delay in (900, 600):
        r = server.client.post("/api/jobs", json={"task": "add", "args": [1, 2], "delay": delay})
        assert r.status_code == 202
    server.client.post("/api/jobs", json={"task": "refuse", "args": ["now"]})
    queues = {q["queue"]: q for q in server.client.get("/api/queues").json()["queues"]}
    after = server.app.clock.time()
    default, mail = queues["default"], queues["mail"]
    assert before + 600 <= default["next_scheduled_at"] <= after + 600
    due_at = default["next_scheduled_at"]
    assert due_at - after <= default["next_scheduled_in"] <= due_at - before
    assert (mail["next_scheduled_at"], mail["next_scheduled_in"]) == (None, None)
    schema = server.client.get("/api/openapi.json").json()["components"]["schemas"]["Queue"]
    assert set(schema["properties"]) == set(default)


def test_the_openapi_document_lists_exactly_the_routes(server: Server) -> None:
    doc = server.client.get("/api/openapi.json").json()
    assert doc == json.loads(json.dumps(openapi_document(None) | {"components": doc["components"]}))
    assert doc["components"]["schemas"]["JobRequest"]["properties"]["task"]["enum"] == [
        "add",
        "echo",
        "refuse",
    ]
    served = {
        (route.path, method.lower())
        for route in create_app(server.app).routes
        if isinstance(route, Route) and (route.path.startswith("/api/") or route.path in
                                         ("/metrics", "/healthz"))
        for method in route.methods or ()
        if method != "HEAD"
    }  # fmt: skip
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert served == documented
    post_codes = set(doc["paths"]["/api/jobs"]["post"]["responses"])
    assert post_codes == {"202", "400", "401", "413", "415", "422", "503"}
    cancel_codes = set(doc["paths"]["/api/jobs/{job_id}/cancel"]["post"]["responses"])
    assert cancel_codes == {"202", "401", "404", "409", "415", "503"}
    assert "cancelled" in doc["components"]["schemas"]["Job"]["properties"]["state"]["enum"]


# -- cancel, progress, periodic and running jobs ---------------------------------------------


def test_a_queued_job_is_cancelled_and_never_runs(server: Server) -> None:
    job_id = server.client.post("/api/jobs", json={"task": "add", "args": [1, 2]}).json()["id"]
    r = server.client.post(f"/api/jobs/{job_id}/cancel", headers=JSON)
    assert (r.status_code, r.json()) == (202, {"id": job_id, "status": "cancelled"})
    assert server.client.get(f"/api/jobs/{job_id}").json()["state"] == "cancelled"
    again = server.client.post(f"/api/jobs/{job_id}/cancel", json={})
    assert again.status_code == 202  # asked again before a worker settled it: still asked
    worker = server.work()
    assert worker.stats.succeeded == 0
    record = server.app.results.get(job_id)
    assert record is not None and record.state == "cancelled"
    late = server.client.post(f"/api/jobs/{job_id}/cancel", headers=JSON)
    assert late.status_code == 409
    assert late.json()["error"] == f"job {job_id} already finished (cancelled): nothing to cancel"


def test_a_finished_job_cannot_be_cancelled_and_an_unknown_one_is_404(server: Server) -> None:
    done = server.client.post("/api/jobs", json={"task": "add", "args": [1, 2]}).json()["id"]
    dead = server.client.post("/api/jobs", json={"task": "refuse", "args": ["no"]}).json()["id"]
    server.work()
    r = server.client.post(f"/api/jobs/{done}/cancel", headers=JSON)
    assert r.status_code == 409 and "already finished (succeeded)" in r.json()["error"]
    r = server.client.post(f"/api/jobs/{dead}/cancel", headers=JSON)
    assert r.status_code == 409 and "already finished (failed)" in r.json()["error"]
    assert server.client.get(f"/api/jobs/{done}").json()["state"] == "succeeded"
    unknown = server.client.post("/api/jobs/06H3FZZYDFRSNXZGX8W83BEWRR/cancel", headers=JSON)
    assert unknown.status_code == 404 and "no job" in unknown.json()["error"]


def test_cancel_needs_the_token_json_and_a_same_site_request(server: Server) -> None:
    job_id = server.client.post("/api/jobs", json={"task": "add", "args": [1, 2]}).json()["id"]
    path = f"/api/jobs/{job_id}/cancel"
    assert server.anonymous().post(path, headers=JSON).status_code == 401
    assert server.client.post(path, data={"x": "1"}).status_code == 415  # a form: refused
    cross = server.client.post(path, headers={**JSON, "Origin": "https://evil.example"})
    assert cross.status_code == 403
    assert server.client.get(f"/api/jobs/{job_id}").json()["state"] == "queued"


def test_a_job_shows_the_progress_it_reported(server: Server) -> None:
    job_id = server.client.post("/api/jobs", json={"task": "add", "args": [1, 2]}).json()["id"]
    assert server.client.get(f"/api/jobs/{job_id}").json()["progress"] is None
    now = server.app.clock.time()
    server.app.results.set_key(f"progress:{job_id}", b"[40,100]", now + 60)
    job = server.client.get(f"/api/jobs/{job_id}").json()
    assert job["progress"] == {"done": 40, "total": 100}


def test_workers_name_the_jobs_they_run_with_their_progress(server: Server) -> None:
    now = server.app.clock.time()
    store_beat(
        server.app,
        running=[
            RunningJob(id="J1", task="add", queue="default", attempt=1, started_at=now - 30),
            RunningJob(id="J2", task="echo", queue="default", attempt=3, started_at=now - 2),
        ],
    )
    server.app.results.set_key("progress:J1", b"[3,4]", now + 60)
    [worker] = server.client.get("/api/workers").json()["workers"]
    assert worker["worker_id"] == "host-b:7:abcdef" and worker["busy"] == 2
    one, two = worker["running"]
    assert (one["id"], one["task"], one["attempt"]) == ("J1", "add", 1)
    assert one["progress"] == {"done": 3, "total": 4}
    assert 29 <= one["running_for"] <= 60
    assert (two["id"], two["attempt"], two["progress"]) == ("J2", 3, None)


def test_cancelled_jobs_are_counted_per_task_and_exported(server: Server) -> None:
    store_beat(server.app, tasks=[TaskFigures(task="add", queue="default", succeeded=5,
                                              cancelled=2)])  # fmt: skip
    tasks = {t["task"]: t for t in server.client.get("/api/tasks").json()["tasks"]}
    assert (tasks["add"]["succeeded"], tasks["add"]["cancelled"]) == (5, 2)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(server.client.get("/metrics").text)
        for s in family.samples
    }
    key = (("queue", "default"), ("task", "add"), ("worker", "host-b:7:abcdef"))
    assert samples[("sleipnir_jobs_cancelled_total", key)] == 2
    assert samples[("sleipnir_jobs_succeeded_total", key)] == 5


def test_schedules_say_when_they_run_next_and_who_fired_the_last_tick(
    periodic_server: Server,
) -> None:
    def schedules() -> dict[str, dict[str, Any]]:
        rows = periodic_server.client.get("/api/schedules").json()["schedules"]
        return {s["task"]: s for s in rows}

    before = schedules()
    assert list(before) == ["hourly", "report", "sweep"]
    assert before["sweep"] == {
        "task": "sweep",
        "queue": "default",
        "schedule": "every 300s",
        "catch_up": 300.0,
        "next_run_at": 1_700_000_100.0,
        "next_run_in": 100.0,
        "last_tick_at": 1_699_999_800.0,
        "last_tick": "pending",
        "fired_by": None,
    }
    report = before["report"]
    assert report["schedule"] == "cron '0 6 * * *' (Europe/Oslo)"
    assert report["next_run_at"] == 1_700_024_400.0  # 2023-11-15 05:00 UTC
    assert report["last_tick"] == "expired"  # a day-old tick: its claim is no longer kept

    assert len(Scheduler(periodic_server.app, owner="host-a:4242").run_pending()) == 1
    fired = schedules()["sweep"]
    assert (fired["last_tick"], fired["fired_by"]) == ("fired", "host-a:4242")

    clock = periodic_server.app.clock
    assert isinstance(clock, FakeClock)
    clock.advance(3000)  # 23:03:20, and no scheduler ran: the 23:00 tick is past its window
    after = schedules()
    assert (after["hourly"]["last_tick_at"], after["hourly"]["last_tick"]) == (
        1_700_002_800.0, "missed"
    )  # fmt: skip
    assert (after["sweep"]["last_tick_at"], after["sweep"]["last_tick"]) == (
        1_700_002_800.0, "pending"
    )  # fmt: skip


def test_a_callers_traceparent_travels_with_the_job(server: Server) -> None:
    from sleipnir.job import decode_job

    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    sent = server.client.post(
        "/api/jobs",
        json={"task": "echo"},
        headers={"traceparent": parent, "tracestate": "vendor=1", "baggage": "tenant=7"},
    )
    plain = server.client.post("/api/jobs", json={"task": "echo"}, headers={"traceparent": "bad"})
    assert sent.status_code == plain.status_code == 202
    reserved = {r.id: decode_job(r.body) for r in server.app.broker.reserve(["default"], 10, 30)}
    assert reserved[sent.json()["id"]].headers == {
        "traceparent": parent,
        "tracestate": "vendor=1",
        "baggage": "tenant=7",
    }
    assert reserved[plain.json()["id"]].headers == {}  # a malformed one is ignored

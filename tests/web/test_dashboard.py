"""Dashboard pages over HTTP, the SVG plots, and the ``web`` and ``top`` commands."""

from __future__ import annotations

import re
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner

from sleipnir.cli import main
from sleipnir.monitor import Heartbeat, HostFigures, RunningJob, TaskFigures, sample_of
from sleipnir.results import WorkerBeat
from sleipnir.web.state import job_created_at
from sleipnir.web.svg import line_chart

from .conftest import Server, store_beat


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match is not None
    return match.group(1)


def test_every_page_renders_what_the_stores_hold(server: Server) -> None:
    ok = server.client.post("/api/jobs", json={"task": "add", "args": [20, 22]}).json()["id"]
    server.client.post("/api/jobs", json={"task": "refuse", "args": ["nope"]})
    worker = server.work()
    server.client.post("/api/jobs", json={"task": "echo", "queue": "<b>evil</b>"})

    overview = server.client.get("/")
    assert overview.status_code == 200
    assert overview.text.count("<svg") == 2
    assert "&lt;b&gt;evil&lt;/b&gt;" in overview.text and "<b>evil</b>" not in overview.text
    assert re.search(r'data-queue="mail">.*?data-count="dead"><a[^>]*>1</a>', overview.text, re.S)

    workers = server.client.get("/workers").text
    assert worker.id in workers and "stopped" in workers

    hosts = server.client.get("/hosts").text
    assert worker.id.split(":", 1)[0] in hosts and "CPU time shares" in hosts

    job = server.client.get(f"/jobs/{ok}").text
    assert 'id="job-state">succeeded' in job and "<code>42</code>" in job
    assert "attempt 1 started" in job
    missing = server.client.get("/jobs/06H3FZZYDFRSNXZGX8W83BEWRR")
    assert missing.status_code == 404
    found = server.client.get("/jobs", params={"id": ok}, follow_redirects=False)
    assert (found.status_code, found.headers["location"]) == (303, f"/jobs/{ok}")

    dead = server.client.get("/dead", params={"q": "nope"}).text
    assert "Fail: nope" in dead
    assert "No dead letters that match" in server.client.get("/dead", params={"q": "zzz"}).text


def test_the_queue_table_shows_when_the_next_scheduled_job_comes_due(server: Server) -> None:
    server.client.post("/api/jobs", json={"task": "add", "args": [1, 2], "delay": 600})
    server.client.post("/api/jobs", json={"task": "refuse", "args": ["now"]})
    for page in ("/", "/queues"):
        html = server.client.get(page).text
        assert '<th class="num">next scheduled</th>' in html
        assert re.search(
            r'data-queue="default">.*?data-time="next_scheduled">in (9m [0-5]\ds|10m 00s)<',
            html,
            re.S,
        ), html
        assert re.search(r'data-queue="mail">.*?data-time="next_scheduled">-<', html, re.S), html


def test_dead_letters_are_deleted_from_the_page(server: Server) -> None:
    for why in ("a", "b"):
        server.client.post("/api/jobs", json={"task": "refuse", "args": [why]})
    server.work()
    csrf = csrf_of(server.client.get("/dead").text)
    # A bulk form from before the confirmation step is sent to the confirmation.
    r = server.client.post("/dead/delete", data={"csrf": csrf, "all": "1"})
    assert (r.status_code, r.headers["location"]) == (303, "/dead/confirm?action=delete&queue=&q=")
    confirm = server.client.get(r.headers["location"]).text
    assert "Delete all 2 dead letters?" in confirm
    ids = re.findall(r'name="id" value="([^"]+)"', confirm)
    r = server.client.post("/dead/delete", data={"csrf": csrf, "id": ids})
    assert (r.status_code, r.headers["location"]) == (303, "/dead?deleted=2")
    r = server.client.get(r.headers["location"])
    assert "2 dead letter(s) deleted" in r.text
    assert server.app.broker.dead_letters() == []
    assert server.client.post("/dead/explode", data={"csrf": csrf}).status_code == 404


def test_a_queue_is_purged_from_the_page(server: Server) -> None:
    for i in range(3):
        server.client.post("/api/jobs", json={"task": "add", "args": [i, i]})
    csrf = csrf_of(server.client.get("/queues").text)
    r = server.client.post("/queues/default/purge", data={"csrf": csrf}, follow_redirects=True)
    assert "3 ready or scheduled job(s) of default deleted" in r.text
    assert [s.ready for s in server.app.broker.stats()] == [0]


def test_line_chart_scales_escapes_and_says_when_empty() -> None:
    svg = line_chart(
        {"<q>": [(0.0, 0.0), (50.0, 3.0), (100.0, 7.0)]}, since=0, until=100, title="t & u"
    )
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert "&lt;q&gt;" in svg and "<q>" not in svg and "t &amp; u" in svg
    assert ">10<" in svg  # the y axis ends at a round number above the largest value
    assert "<polyline" in svg
    empty = line_chart({}, since=0, until=100, title="none")
    assert "no data yet" in empty and "<polyline" not in empty


def test_job_ids_tell_when_they_were_made() -> None:
    import time

    from sleipnir.job import new_job_id

    before = time.time()
    created = job_created_at(new_job_id())
    assert created is not None and before - 0.002 <= created <= time.time() + 0.002
    assert job_created_at("not-an-id!") is None


# -- the commands ---------------------------------------------------------------------------

TOP_MODULE = """
from sleipnir import App
app = App(broker="sqlite:///{db}")

@app.task
def noop() -> None:
    return None
"""


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = f"sleipnir_web_cli_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text(TOP_MODULE.format(db=tmp_path / "j.db"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield name
    loaded = sys.modules.pop(name, None)
    if loaded is not None:
        loaded.app.close()


def test_top_once_shows_queues_workers_and_hosts(module: str) -> None:
    import importlib
    import random

    from sleipnir import Worker

    app = importlib.import_module(module).app
    for _ in range(3):
        app.tasks["noop"].delay()
    worker = Worker(app, burst=True, rng=random.Random(0))
    worker.run()
    app.tasks["noop"].delay()
    result = CliRunner().invoke(main, ["top", module, "--once"], catch_exceptions=False)
    assert result.exit_code == 0
    out = result.output
    assert "queues" in out and "workers" in out and "hosts" in out
    row = next(line for line in out.splitlines() if "│ default" in line)
    assert row.split("│")[2].strip() == "1"  # one ready job
    assert worker.id[:12] in out
    assert "noop" in out


def test_web_refuses_a_public_address_without_a_token(
    module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SLEIPNIR_API_TOKEN", raising=False)
    result = CliRunner().invoke(main, ["web", module, "--host", "0.0.0.0"])
    assert result.exit_code == 1
    assert "refusing to listen on 0.0.0.0 without SLEIPNIR_API_TOKEN" in result.output


def _store_beats(server: Server, host: str, steal: float, now: float) -> None:
    """Five minutes of beats of one worker on ``host`` with the given CPU steal."""
    worker_id = f"{host}:100:abcdef"
    for i in range(11):
        at = now - 300 + 30 * i
        beat = Heartbeat(
            worker_id=worker_id, host=host, pid=100, ppid=1, queues=["default"],
            concurrency=4, busy=1, held=1, started_at=now - 400, at=at, succeeded=10 * i,
            host_figures=HostFigures(cpu_count=2, cpu_steal=steal, cpu_user=0.5),
        )  # fmt: skip
        server.app.results.beat(
            WorkerBeat(
                worker_id=worker_id,
                at=at,
                expires_at=at + 15,
                body=msgspec.json.encode(beat),
                sample=msgspec.json.encode(sample_of(beat)),
            ),
            keep=3600,
        )


def test_a_host_with_sustained_steal_is_flagged(server: Server) -> None:
    now = time.time()
    _store_beats(server, "oversold", 0.2, now)
    _store_beats(server, "calm", 0.0, now)
    page = server.client.get("/hosts").text
    sections = {chunk.split("<", 1)[0].strip(): chunk for chunk in page.split("<h2>")[1:]}
    assert "CPU steal sustained" in sections["oversold"]
    assert "CPU steal sustained" not in sections["calm"]
    assert "steal 20.0%" in sections["oversold"]
    metrics = server.client.get("/metrics").text
    assert 'sleipnir_host_cpu_steal_ratio{host="oversold"} 0.2' in metrics
    assert 'sleipnir_host_cpu_steal_ratio{host="calm"} 0.0' in metrics
    # The overview's throughput plot comes from the same history: 10 jobs per 30 s.
    assert "<polyline" in server.client.get("/").text


# -- periodic and running jobs, cancel ----------------------------------------------------------


def row_of(html: str, table: str, attribute: str, value: str) -> str:
    """The HTML of the row of ``table`` whose ``attribute`` is ``value``."""
    body = html.split(f'<table id="{table}">', 1)[1].split("</table>", 1)[0]
    match = re.search(rf'<tr {attribute}="{re.escape(value)}">(.*?)</tr>', body, re.S)
    assert match is not None, f"no row {value} in the {table} table"
    return match.group(1)


def test_the_overview_shows_periodic_jobs_and_when_they_run(periodic_server: Server) -> None:
    from sleipnir.schedule import Scheduler

    Scheduler(periodic_server.app, owner="host-a:4242").run_pending()
    page = periodic_server.client.get("/").text
    assert "<h2>Periodic jobs</h2>" in page
    sweep = row_of(page, "periodic", "data-task", "sweep")
    assert "<code>every 300s</code>" in sweep
    assert '2023-11-14 22:15:00 <span class="muted">in 1m 40s</span>' in sweep
    assert "2023-11-14 22:10:00" in sweep and ">fired by host-a:4242</td>" in sweep
    report = row_of(page, "periodic", "data-task", "report")
    assert "cron &#39;0 6 * * *&#39; (Europe/Oslo)" in report
    assert re.search(r'data-fired="expired" title="too old to tell[^"]*">\?</td>', report)


def test_an_app_without_periodic_jobs_shows_no_periodic_panel(server: Server) -> None:
    page = server.client.get("/").text
    assert "Periodic jobs" not in page and 'id="periodic"' not in page
    running = page.split('<table id="running">', 1)[1].split("</table>", 1)[0]
    assert "no job running" in running


def test_running_jobs_show_progress_and_are_cancelled_from_the_overview(server: Server) -> None:
    now = server.app.clock.time()
    ids = [
        server.client.post("/api/jobs", json={"task": "echo", "args": [i]}).json()["id"]
        for i in range(2)
    ]
    held = server.app.broker.reserve(["default"], 2, lease=600)  # a worker runs both
    assert len(held) == 2
    store_beat(
        server.app,
        running=[
            RunningJob(id=ids[0], task="echo", queue="default", attempt=1, started_at=now - 250),
            RunningJob(id=ids[1], task="echo", queue="default", attempt=2, started_at=now - 5),
        ],
        tasks=[TaskFigures(task="echo", queue="default", succeeded=7, cancelled=3)],
    )
    server.app.results.set_key(f"progress:{ids[0]}", b"[40,100]", now + 60)
    page = server.client.get("/").text
    first = row_of(page, "running", "data-job", ids[0])
    assert '<progress max="100" value="40.0"></progress>' in first
    assert "<span data-progress>40/100 (40%)</span>" in first and "4m 10s" in first
    second = row_of(page, "running", "data-job", ids[1])
    assert "<progress" not in second and "<span data-progress>-</span>" in second
    assert re.search(r"<td>echo</td><td>default</td><td class=\"num\">7</td>.*?"
                     r"<td class=\"num\">3</td>", page, re.S)  # fmt: skip
    server.app.broker.release(held)  # that worker gave them back: both are queued again

    csrf = csrf_of(page)
    path = f"/jobs/{ids[0]}/cancel"
    assert server.client.post(path, data={"next": "/"}).status_code == 403  # no CSRF token
    assert server.app.status(ids[0]) == "queued"
    r = server.client.post(path, data={"csrf": csrf, "next": "/"})
    assert (r.status_code, r.headers["location"]) == (303, f"/?cancelled={ids[0]}")
    assert server.app.status(ids[0]) == "cancelled"
    assert server.app.status(ids[1]) == "queued"
    shown = server.client.get(r.headers["location"]).text
    assert f"cancellation of {ids[0]} asked for" in shown

    server.work()  # settles the cancelled job without running it, runs the other one
    r = server.client.post(path, data={"csrf": csrf, "next": "//evil.example/"})
    assert (r.status_code, r.headers["location"]) == (303, f"/?finished={ids[0]}")
    assert (
        "had already finished: nothing to cancel" in server.client.get(r.headers["location"]).text
    )
    missing = server.client.post("/jobs/06H3FZZYDFRSNXZGX8W83BEWRR/cancel", data={"csrf": csrf})
    assert missing.status_code == 404


def test_a_job_page_shows_progress_and_cancels_the_job(server: Server) -> None:
    job_id = server.client.post("/api/jobs", json={"task": "echo"}).json()["id"]
    now = server.app.clock.time()
    server.app.results.set_key(f"progress:{job_id}", b"[3,4]", now + 60)
    page = server.client.get(f"/jobs/{job_id}").text
    assert '<progress max="4" value="3"></progress> 3/4 (75%)' in page
    assert f'action="/jobs/{job_id}/cancel"' in page
    r = server.client.post(
        f"/jobs/{job_id}/cancel",
        data={"csrf": csrf_of(page), "next": f"/jobs/{job_id}"},
        follow_redirects=True,
    )
    assert r.status_code == 200 and str(r.url).endswith(f"/jobs/{job_id}?cancelled={job_id}")
    assert 'id="job-state">cancelled' in r.text
    assert f'action="/jobs/{job_id}/cancel"' not in r.text  # nothing left to cancel


def test_top_counts_cancelled_jobs_per_task(module: str) -> None:
    import importlib

    app = importlib.import_module(module).app
    figures = TaskFigures(task="noop", queue="default", succeeded=4)
    store_beat(app, tasks=[figures])

    def top() -> dict[str, str]:
        wide = {"COLUMNS": "160"}
        result = CliRunner().invoke(main, ["top", module, "--once"], env=wide)
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        header = next(line for line in lines if "┃ task" in line).split("┃")
        row = next(line for line in lines if "│ noop" in line).split("│")
        return {h.strip(): c.strip() for h, c in zip(header, row, strict=True)}

    assert top()["ok"] == "4" and "cancelled" not in top()  # no room taken while there are none
    figures.cancelled = 2
    store_beat(app, tasks=[figures])
    assert (top()["ok"], top()["cancelled"]) == ("4", "2")

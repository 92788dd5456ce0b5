"""Tasks with ``isolate=True``: each job in a process of its own, killed at its limit.

(Real processes, so here rather than with the unit tests; the tasks' sleeps are the
work that overruns, not waits for an event.)

The tasks live in a module written into tmp_path (the job's process imports it),
on a SQLite file both processes open; a burst worker runs in this process.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sleipnir import App, ConfigurationError, JobCancelledError, JobFailedError, Worker

pytestmark = pytest.mark.integration

MODULE = """
import os
import time
from pathlib import Path

from sleipnir import App, Context, Fail

HERE = Path(__file__).resolve().parent
app = App(broker="sqlite:///{db}")


@app.task(isolate=True, timeout=30.0)
def where() -> int:
    return os.getpid()


@app.task(isolate=True, timeout=2.0, retries=1, backoff=0.0, max_backoff=0.0)
def overrun(ctx: Context) -> str:
    if ctx.attempt == 2:
        return "second attempt"
    (HERE / "overrun.pid").write_text(str(os.getpid()))
    time.sleep(60)  # the work that runs over; the worker kills it at 2 s
    return "never"


@app.task(isolate=True, retries=0)
def boom() -> None:
    raise ValueError("bad input in the child")


@app.task(isolate=True, retries=0)
def refuse() -> None:
    raise Fail("out of stock")


@app.task(isolate=True)
def report(ctx: Context, parts: int) -> dict:
    for i in range(1, parts + 1):
        ctx.progress(i, parts)
    return {{"parts": parts, "printed": print("a line for the worker's log") is None}}


@app.task(isolate=True, retries=3)
def ratio(ctx: Context) -> dict:
    (HERE / f"ratio.{{ctx.attempt}}").write_text("ran")
    return {{"ratio": float("nan")}}


@app.task(retries=0)
def plain_where() -> int:
    return os.getpid()


@app.task(retries=0)
async def async_where() -> int:
    return os.getpid()


@app.task(retries=0)
def crash_count(ctx: Context) -> str | None:
    from sleipnir.worker import apart_key

    (raw,) = app.results.get_keys([apart_key(ctx.job_id)])
    return None if raw is None else raw.decode()


@app.task(isolate=True)
def forever() -> None:
    (HERE / "forever.pid").write_text(str(os.getpid()))
    while True:
        time.sleep(0.05)
"""


@pytest.fixture
def iso(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    name = f"sleipnir_iso_{uuid.uuid4().hex[:12]}"
    (tmp_path / f"{name}.py").write_text(MODULE.format(db=tmp_path / "jobs.db"))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    yield module
    module.app.close()
    sys.modules.pop(name, None)


def drain(app: App, **options: Any) -> Worker:
    worker = Worker(app, burst=True, concurrency=2, heartbeat=None, **options)
    assert worker.run() == 0
    return worker


def gone(pid: int) -> bool:
    """Not running (a zombie no one reaped yet runs nothing either)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_each_job_runs_in_a_process_of_its_own(iso: Any) -> None:
    handles = [iso.where.delay() for _ in range(2)]
    drain(iso.app)
    pids = [h.result(timeout=1.0) for h in handles]
    assert os.getpid() not in pids
    assert len(set(pids)) == 2


def test_a_run_over_its_limit_is_killed_and_retried(iso: Any, tmp_path: Path) -> None:
    handle = iso.overrun.delay()
    started = time.monotonic()
    drain(iso.app)
    assert time.monotonic() - started < 30.0  # not the 60 s the first run wanted
    first = int((tmp_path / "overrun.pid").read_text())
    assert gone(first)
    drain(iso.app)
    assert handle.result(timeout=1.0) == "second attempt"
    record = handle.record()
    assert record is not None and record.attempt == 2


def test_its_error_fail_progress_and_value_come_back(iso: Any) -> None:
    broken, refused, report = iso.boom.delay(), iso.refuse.delay(), iso.report.delay(4)
    drain(iso.app)
    with pytest.raises(JobFailedError, match="ValueError: bad input in the child"):
        broken.result(timeout=1.0)
    record = broken.record()
    assert record is not None and record.error is not None
    assert 'raise ValueError("bad input in the child")' in record.error  # the child's traceback
    with pytest.raises(JobFailedError, match="Fail: out of stock"):
        refused.result(timeout=1.0)
    assert report.result(timeout=1.0) == {"parts": 4, "printed": True}
    assert report.progress() == (4, 4)


def test_a_value_json_cannot_carry_fails_the_job_without_retry(iso: Any, tmp_path: Path) -> None:
    handle = iso.ratio.delay()
    drain(iso.app)
    with pytest.raises(JobFailedError, match=r"result\['ratio'\] is NaN; NaN is not valid JSON"):
        handle.result(timeout=1.0)
    assert sorted(p.name for p in tmp_path.glob("ratio.*")) == ["ratio.1"]  # ran once


def test_cancelling_a_running_isolated_job_kills_its_process(
    iso: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sleipnir.worker.features import cancel as cancel_module

    monkeypatch.setattr(cancel_module, "CANCEL_CHECK_EVERY", 0.05)
    handle = iso.forever.delay()
    worker = threading.Thread(target=drain, args=(iso.app,))
    worker.start()
    pid_file = tmp_path / "forever.pid"
    deadline = time.monotonic() + 30.0
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "the job's process never started"
        threading.Event().wait(0.02)
    assert handle.cancel() is True
    worker.join(timeout=30.0)
    assert not worker.is_alive()
    with pytest.raises(JobCancelledError):
        handle.result(timeout=1.0)
    assert gone(int(pid_file.read_text()))


def test_isolate_is_refused_for_async_tasks() -> None:
    app = App(broker="memory://")
    with pytest.raises(ConfigurationError, match="isolate=True is for sync tasks"):

        @app.task(isolate=True)
        async def work() -> None: ...


def test_a_worker_that_cannot_find_the_apps_module_says_so() -> None:
    app = App(broker="memory://")  # defined here, in no importable module's namespace

    @app.task(isolate=True)
    def work() -> None: ...

    with pytest.raises(ConfigurationError, match="module was not found"):
        Worker(app, burst=True, heartbeat=None).run()


def test_jobs_back_from_a_lost_lease_run_in_a_process_of_their_own(iso: Any) -> None:
    """Sync and ``async def`` alike; with retries=0 they still run: the lost lease cost no try."""
    handles = [iso.plain_where.delay(), iso.async_where.delay()]
    held = iso.app.broker.reserve(["default"], 2, lease=0.05)  # a worker that then died
    assert len(held) == 2
    deadline = time.monotonic() + 10.0
    while any(
        (info := iso.app.broker.job_info(h.id)) is None or info.state.value != "ready"
        for h in handles
    ):
        assert time.monotonic() < deadline, "the leases never ran out"
        threading.Event().wait(0.02)
    drain(iso.app)
    pids = [h.result(timeout=1.0) for h in handles]
    assert os.getpid() not in pids
    for h in handles:
        record = h.record()
        assert record is not None and (record.state, record.attempt) == ("succeeded", 2)


def test_a_worker_death_during_a_run_in_a_process_of_its_own_is_not_counted_against_the_job(
    iso: Any,
) -> None:
    """Only runs alone count toward MAX_CRASHES: from a process of its own the job cannot
    take its worker down, so its worker dying meanwhile (a kill from outside, a lost host)
    says nothing about it."""
    from sleipnir.worker import MAX_CRASHES, apart_key

    handle = iso.crash_count.delay()
    seeded = f"{MAX_CRASHES - 1}/0"  # its worker died twice while it ran alone before
    iso.app.results.set_key(apart_key(handle.id), seeded.encode(), time.time() + 60)
    iso.app.broker.reserve(["default"], 1, lease=0.05)  # a worker that then died
    deadline = time.monotonic() + 10.0
    while (info := iso.app.broker.job_info(handle.id)) is None or info.state.value != "ready":
        assert time.monotonic() < deadline, "the lease never ran out"
        threading.Event().wait(0.02)
    drain(iso.app)
    assert handle.result(timeout=1.0) == seeded  # not raised to MAX_CRASHES by this run
    assert iso.app.results.get_keys([apart_key(handle.id)]) == [None]  # an outcome: dropped


def test_a_job_with_no_lost_lease_runs_in_the_worker_itself(iso: Any) -> None:
    """Not back from a lost lease: the same task runs on the worker's own thread."""
    handle = iso.plain_where.delay()
    drain(iso.app)
    assert handle.result(timeout=1.0) == os.getpid()

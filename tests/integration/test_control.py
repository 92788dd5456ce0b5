"""Cancel, progress, limits, chains and groups on every real broker, end to end.

A worker runs in a thread of the test process against the real server, on the
wall clock; the store and broker contracts under these features are checked in
``tests/contract`` (on the fake clock where the backend has it).
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sleipnir import App, Context, JobCancelledError, Worker, chain, group
from sleipnir.worker.features import cancel as cancel_module

from ..conftest import require_server
from .conftest import shared_pg_url, shared_redis_url, wait_until

pytestmark = pytest.mark.integration


@contextlib.contextmanager
def _amqp_app(tmp_path: Path) -> Iterator[App]:
    require_server("RabbitMQ", "127.0.0.1", 5672)
    from sleipnir.brokers.amqp import AMQPBroker

    url = f"amqp://guest:guest@127.0.0.1:5672/%2F?prefix=sleipnir-it-{uuid.uuid4().hex[:12]}"
    app = App(broker=url, results=f"sqlite://{tmp_path / 'results.db'}")
    try:
        yield app
    finally:
        app.close()
        cleaner = AMQPBroker(url)
        try:
            cleaner.delete_queues()
        finally:
            cleaner.close()


@pytest.fixture(params=["sqlite", "redis", "postgres", "amqp"])
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[App]:
    kind: str = request.param
    with contextlib.ExitStack() as stack:
        if kind == "amqp":
            yield stack.enter_context(_amqp_app(tmp_path))
            return
        if kind == "sqlite":
            url = f"sqlite://{tmp_path / 'jobs.db'}"
        elif kind == "redis":
            url = stack.enter_context(shared_redis_url())
        else:
            url = stack.enter_context(shared_pg_url())
        app = App(broker=url)
        stack.callback(app.close)
        yield app


@contextlib.contextmanager
def running_worker(app: App, concurrency: int = 4) -> Iterator[Worker]:
    worker = Worker(app, concurrency=concurrency, heartbeat=None, scheduler=False)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(timeout=30.0)
        assert not thread.is_alive(), "the worker did not stop"


@pytest.fixture(autouse=True)
def quick_cancel_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cancel_module, "CANCEL_CHECK_EVERY", 0.05)


def test_cancel_a_queued_and_a_running_job(app: App) -> None:
    ran: list[str] = []
    started = threading.Event()

    @app.task
    def long_job(ctx: Context, name: str) -> str:
        ran.append(name)
        started.set()
        for step in range(600):
            ctx.progress(step, 600)
            if ctx.wait(0.05):
                break
        ctx.check_cancelled()
        return "finished"

    queued = long_job.enqueue(("queued",), delay=3600.0)
    assert queued.cancel() is True
    with running_worker(app):
        running = long_job.delay("running")
        assert started.wait(30.0)
        wait_until(lambda: running.progress() is not None, 30.0, "no progress reported")
        assert running.cancel() is True
        with pytest.raises(JobCancelledError):
            running.result(timeout=30.0)
    assert ran == ["running"]
    assert queued.status() == "cancelled"
    record = running.record()
    assert record is not None and record.state == "cancelled"


def test_a_chain_and_a_group_with_its_callback(app: App) -> None:
    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    @app.task
    def total(values: list[int]) -> int:
        return sum(values)

    with running_worker(app):
        steps = chain(add.s(1, 2), add.s(3), add.s(4)).delay()
        fan = group((add.s(i, 1) for i in range(6)), callback=total.s()).delay()
        assert steps.result(timeout=30.0) == 10
        assert fan.results(timeout=30.0) == [1, 2, 3, 4, 5, 6]
        assert fan.callback is not None
        assert fan.callback.result(timeout=30.0) == 21


def test_limits_hold_and_waiting_uses_no_retry(app: App) -> None:
    lock = threading.Lock()
    running: list[int] = []
    most = [0]
    starts: list[float] = []

    @app.task(concurrency=1, retries=0)
    def exclusive(n: int) -> None:
        with lock:
            running.append(n)
            most[0] = max(most[0], len(running))
        threading.Event().wait(0.02)  # hold the slot a moment: the others must wait
        with lock:
            running.remove(n)

    @app.task(rate_limit="3/2s", retries=0)
    def limited(n: int) -> None:
        starts.append(time.monotonic())

    with running_worker(app):
        handles = exclusive.map([(i,) for i in range(4)]) + limited.map([(i,) for i in range(4)])
        records: list[Any] = []

        def all_done() -> bool:
            records[:] = [h.record() for h in handles]
            return all(r is not None and r.state.finished for r in records)

        wait_until(all_done, 60.0, "limited jobs did not all finish")
    assert [r.state for r in records] == ["succeeded"] * 8
    assert all(r.attempt == 1 for r in records)  # retries=0: a counted wait would have failed
    assert most[0] == 1
    starts.sort()
    assert starts[3] - starts[0] >= 1.9  # the fourth run waited for the 2 s window

"""The worker's side of supervision: recycling, the title, the link to the supervisor."""

from __future__ import annotations

import json
import socket

import pytest

from sleipnir import App, Worker
from sleipnir.brokers.base import BrokerJobState
from sleipnir.supervisor.child import WorkerMonitor, resident_memory_mb

from ..integration.conftest import wait_until


def test_max_jobs_recycles_after_settling(app: App) -> None:
    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    handles = add.map([(i, i) for i in range(10)])
    worker = Worker(app, concurrency=1, prefetch=1, max_jobs=3)
    assert worker.run() == 0  # not burst: it returned because it recycled itself
    done = [h for h in handles if h.status() == "succeeded"]
    assert len(done) == 3
    assert worker.stats.succeeded == 3
    for h in handles:
        if h not in done:  # the rest wait for the next process, attempt not counted
            info = app.broker.job_info(h.id)
            assert info is not None
            assert info.state is BrokerJobState.READY
            assert info.attempt == 0


def test_max_jobs_must_be_positive(app: App) -> None:
    with pytest.raises(ValueError, match="max_jobs"):
        Worker(app, max_jobs=0)


def test_memory_limit_stops_the_worker_gracefully(app: App) -> None:
    worker = Worker(app, concurrency=2)
    assert resident_memory_mb() > 1.0
    monitor = WorkerMonitor(worker, "proj:app", max_memory_mb=1.0)
    monitor.start()
    try:
        assert worker.stopping
        assert monitor.recycled
    finally:
        monitor.close()


def test_memory_under_the_limit_changes_nothing(app: App) -> None:
    worker = Worker(app, concurrency=2)
    monitor = WorkerMonitor(worker, "proj:app", max_memory_mb=1e9)
    monitor.start()
    try:
        assert not worker.stopping
    finally:
        monitor.close()


def test_link_reports_ready_and_obeys_stop(app: App) -> None:
    worker = Worker(app, concurrency=3)
    parent, child = socket.socketpair()
    monitor = WorkerMonitor(
        worker, "proj:app", supervisor_fd=child.detach(), name="w7", interval=0.05
    )
    monitor.start()
    try:
        parent.settimeout(10)
        lines = parent.makefile("r")
        first = json.loads(lines.readline())
        assert first["ready"] is True
        assert first["concurrency"] == 3
        report = json.loads(lines.readline())
        assert report == {"done": 0, "busy": 0, "concurrency": 3}
        assert not worker.stopping
        parent.sendall(b"stop\n")
        wait_until(lambda: worker.stopping, 5, "the worker did not stop")
    finally:
        monitor.close()
        parent.close()

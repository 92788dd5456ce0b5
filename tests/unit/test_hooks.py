"""Hooks (sleipnir.hooks): when each event runs, in which thread, and that a hook that
raises harms nothing."""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Sequence
from typing import Any

import pytest

from sleipnir import App, Hook, JobRun, Outcome, Retry, Worker
from sleipnir.job import Job
from sleipnir.results import JobState

from .conftest import drain


class Recorder(Hook):
    """Writes down every event it sees, with what it was told."""

    def __init__(self, name: str = "r", log: list[tuple[Any, ...]] | None = None) -> None:
        self.name = name
        self.log: list[tuple[Any, ...]] = [] if log is None else log

    def before_enqueue(self, jobs: Sequence[Job]) -> None:
        self.log.append((self.name, "before_enqueue", [j.id for j in jobs]))

    def after_enqueue(self, jobs: Sequence[Job]) -> None:
        self.log.append((self.name, "after_enqueue", [j.id for j in jobs]))

    def after_worker_start(self, worker: Worker) -> None:
        self.log.append((self.name, "after_worker_start", worker.held))

    def before_run(self, job: JobRun) -> None:
        self.log.append((self.name, "before_run", job.id, threading.get_ident()))

    def after_run(self, job: JobRun, outcome: Outcome) -> None:
        self.log.append(
            (self.name, "after_run", job.id, threading.get_ident(), outcome.state, outcome.error)
        )

    def after_settle(self, job: JobRun, outcome: Outcome) -> None:
        self.log.append((self.name, "after_settle", job.id, outcome.state))

    def before_worker_stop(self, worker: Worker) -> None:
        self.log.append((self.name, "before_worker_stop", worker.busy))

    def after_worker_stop(self, worker: Worker) -> None:
        self.log.append((self.name, "after_worker_stop", worker.held))


def events(log: list[tuple[Any, ...]]) -> list[str]:
    return [entry[1] for entry in log]


def test_one_job_meets_the_events_in_order_and_the_job_is_described(app: App) -> None:
    seen: dict[str, Any] = {}

    class Describe(Hook):
        def before_run(self, job: JobRun) -> None:
            seen.update(
                id=job.id,
                task=job.task,
                queue=job.queue,
                attempt=job.attempt,
                args=job.args,
                kwargs=job.kwargs,
            )

    rec = Recorder()
    app.add_hook(rec)
    app.add_hook(Describe())

    @app.task(queue="mail")
    def send(to: str, *, subject: str) -> str:
        return f"{to}: {subject}"

    handle = send.delay("ann", subject="hi")
    drain(app)
    assert events(rec.log) == [
        "before_enqueue",
        "after_enqueue",
        "after_worker_start",
        "before_run",
        "after_run",
        "after_settle",
        "before_worker_stop",
        "after_worker_stop",
    ]
    assert rec.log[0][2] == rec.log[1][2] == [handle.id]
    assert seen == {
        "id": handle.id,
        "task": "send",
        "queue": "mail",
        "attempt": 1,
        "args": ["ann"],
        "kwargs": {"subject": "hi"},
    }
    assert rec.log[4][4:] == (JobState.SUCCEEDED, None)


def test_hooks_run_in_the_order_given(clock: Any) -> None:
    log: list[tuple[Any, ...]] = []
    app = App("memory://", clock=clock, hooks=[Recorder("a", log), Recorder("b", log)])
    app.add_hook(Recorder("c", log))

    @app.task
    def noop() -> None: ...

    noop.delay()
    drain(app)
    runs = [entry[0] for entry in log if entry[1] == "before_run"]
    settles = [entry[0] for entry in log if entry[1] == "after_settle"]
    assert runs == settles == ["a", "b", "c"]


def test_run_hooks_run_in_the_thread_that_runs_the_task(app: App) -> None:
    rec = Recorder()
    app.add_hook(rec)
    threads: dict[str, int] = {}

    @app.task
    def sync_task() -> None:
        threads["sync"] = threading.get_ident()

    @app.task
    async def async_task() -> None:
        threads["async"] = threading.get_ident()

    sync_id, async_id = sync_task.delay().id, async_task.delay().id
    drain(app)
    for job_id, kind in ((sync_id, "sync"), (async_id, "async")):
        before = next(e for e in rec.log if e[1] == "before_run" and e[2] == job_id)
        after = next(e for e in rec.log if e[1] == "after_run" and e[2] == job_id)
        assert before[3] == after[3] == threads[kind]
    assert threads["sync"] != threading.get_ident()  # a pool thread, not the control thread
    assert threads["sync"] != threads["async"]


def test_outcome_states_as_hooks_see_them(app: App) -> None:
    rec = Recorder()
    app.add_hook(rec)

    @app.task(retries=1, backoff=0.01)
    def flaky() -> None:
        raise Retry("again")

    @app.task(retries=0)
    def broken() -> None:
        raise ValueError("no")

    @app.task
    def fine() -> int:
        return 1

    ids = {flaky.delay().id: "flaky", broken.delay().id: "broken", fine.delay().id: "fine"}
    drain(app)
    app.clock.advance(1.0)  # type: ignore[attr-defined]
    drain(app)
    settled = [(ids[e[2]], e[3]) for e in rec.log if e[1] == "after_settle"]
    assert sorted(settled) == [
        ("broken", "failed"),
        ("fine", "succeeded"),
        ("flaky", "failed"),
        ("flaky", "retrying"),
    ]
    errors = {ids[e[2]]: e[5] for e in rec.log if e[1] == "after_run" and e[4] == "failed"}
    assert errors["broken"].startswith("ValueError: no")


def test_a_cancelled_job_is_settled_as_cancelled(app: App) -> None:
    rec = Recorder()
    app.add_hook(rec)

    @app.task
    def work() -> None: ...

    handle = work.delay()
    handle.cancel()
    drain(app)
    assert [e[3] for e in rec.log if e[1] == "after_settle"] == [JobState.CANCELLED]
    assert "before_run" not in events(rec.log)


def test_after_settle_comes_once_the_outcome_is_stored_and_the_job_acked(app: App) -> None:
    seen: list[tuple[Any, Any]] = []

    class Check(Hook):
        def after_settle(self, job: JobRun, outcome: Outcome) -> None:
            record = app.results.get(job.id)
            seen.append((record.state if record else None, app.broker.job_info(job.id)))

    app.add_hook(Check())

    @app.task
    def work() -> int:
        return 2

    work.delay()
    drain(app)
    assert seen == [(JobState.SUCCEEDED, None)]


class Exploding(Hook):
    """Raises in every event."""

    def before_enqueue(self, jobs: Sequence[Job]) -> None:
        raise RuntimeError("before_enqueue")

    def after_enqueue(self, jobs: Sequence[Job]) -> None:
        raise RuntimeError("after_enqueue")

    def after_worker_start(self, worker: Worker) -> None:
        raise RuntimeError("after_worker_start")

    def before_start(self, worker: Worker, job: JobRun) -> float | None:
        raise RuntimeError("before_start")

    def before_run(self, job: JobRun) -> None:
        raise RuntimeError("before_run")

    def after_run(self, job: JobRun, outcome: Outcome) -> None:
        raise RuntimeError("after_run")

    def on_tick(self, worker: Worker) -> None:
        raise RuntimeError("on_tick")

    def before_ack(self, worker: Worker, outcomes: Sequence[Outcome]) -> None:
        raise RuntimeError("before_ack")

    def after_settle(self, job: JobRun, outcome: Outcome) -> None:
        raise SystemExit(3)

    def before_worker_stop(self, worker: Worker) -> None:
        raise RuntimeError("before_worker_stop")


def test_a_hook_that_raises_is_logged_and_harms_no_job(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    rec = Recorder()
    app.add_hook(Exploding())
    app.add_hook(rec)  # hooks after the one that raised still run

    @app.task
    def work(n: int) -> int:
        return n * 2

    with caplog.at_level(logging.ERROR, "sleipnir.hooks"):
        handles = [work.delay(n) for n in range(3)]
        worker = drain(app)
    assert [h.result(timeout=1.0) for h in handles] == [0, 2, 4]
    assert worker.stats.succeeded == 3
    assert events(rec.log).count("after_settle") == 3
    for event in ("before_enqueue", "before_run", "after_run", "before_ack", "after_settle"):
        assert f"hook Exploding raised in {event} (ignored)" in caplog.text
    assert "hook Exploding raised in after_worker_start (ignored)" in caplog.text


def test_a_hook_that_raises_in_the_control_thread_never_stops_a_running_worker(
    app: App,
) -> None:
    app.add_hook(Exploding())
    done = threading.Event()

    @app.task
    def work() -> None:
        done.set()

    worker = Worker(app, concurrency=1, rng=random.Random(0), heartbeat=None)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        work.delay()
        assert done.wait(10.0)
    finally:
        worker.stop()
        thread.join(10.0)
    assert not thread.is_alive()
    assert worker.stats.succeeded == 1


def test_before_start_may_hold_a_job_back_without_using_a_try(app: App) -> None:
    held_back: list[str] = []

    class NotYet(Hook):
        def before_start(self, worker: Worker, job: JobRun) -> float | None:
            if not held_back:
                held_back.append(job.id)
                return worker.app.clock.time() + 30.0
            return None

    app.add_hook(NotYet())
    runs: list[int] = []

    @app.task(retries=0)
    def work() -> None:
        runs.append(1)

    handle = work.delay()
    drain(app)
    assert (runs, handle.status()) == ([], "scheduled")
    app.clock.advance(31.0)  # type: ignore[attr-defined]
    drain(app)
    assert runs == [1]
    assert handle.status() == "succeeded"  # retries=0, yet the hold used no try


def test_a_per_task_timer(app: App) -> None:
    """The docs' example: time each run, keyed by task, with ``job.extras``."""
    times: dict[str, list[float]] = {}

    class Timer(Hook):
        def before_run(self, job: JobRun) -> None:
            job.extras["timer"] = app.clock.time()

        def after_run(self, job: JobRun, outcome: Outcome) -> None:
            start = job.extras.pop("timer")
            times.setdefault(job.task, []).append(app.clock.time() - start)

    app.add_hook(Timer())

    @app.task
    def slow() -> None:
        app.clock.advance(2.5)  # type: ignore[attr-defined]

    slow.delay()
    drain(app, concurrency=1)
    assert times == {"slow": [2.5]}

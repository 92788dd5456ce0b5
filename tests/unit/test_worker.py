from __future__ import annotations

import random

import pytest

from sleipnir import App, Fail, JobFailedError, JobState, Retry, Worker
from sleipnir.brokers.base import Envelope
from sleipnir.job import Job, encode_job, new_job_id
from sleipnir.testing import FakeClock
from sleipnir.worker import CRASH_ALLOWANCE, backoff_delay

from .conftest import drain


def test_a_job_runs_and_its_result_is_stored(app: App) -> None:
    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    handle = add.delay(2, b=3)
    assert handle.status() == "queued"
    worker = drain(app)
    assert handle.status() == "succeeded"
    assert handle.result(timeout=1.0) == 5
    assert worker.stats.succeeded == 1
    assert app.broker.stats()[0].ready == 0


def test_async_tasks_run_on_the_workers_event_loop(app: App) -> None:
    @app.task
    async def double(x: int) -> int:
        return x * 2

    handle = double.delay(21)
    drain(app)
    assert handle.result(timeout=1.0) == 42


def test_a_failing_job_is_retried_with_backoff_then_fails(app: App, clock: FakeClock) -> None:
    attempts: list[int] = []

    @app.task(retries=2, backoff=10.0)
    def flaky() -> None:
        attempts.append(len(attempts) + 1)
        raise ValueError("upstream down")

    handle = flaky.delay()
    drain(app)
    assert handle.status() == "retrying"
    clock.advance(4.9)  # the first retry waits between 5 s and 10 s
    drain(app)
    assert attempts == [1]
    clock.advance(5.2)
    drain(app)
    assert attempts == [1, 2]
    clock.advance(20.1)  # the second waits between 10 s and 20 s
    drain(app)
    assert attempts == [1, 2, 3]
    assert handle.status() == "failed"
    with pytest.raises(JobFailedError, match="ValueError: upstream down"):
        handle.result(timeout=1.0)
    (dead,) = app.broker.dead_letters()
    assert dead.id == handle.id
    assert dead.reason.startswith("ValueError: upstream down")
    assert dead.attempt == 3


def test_retry_after_schedules_exactly_then(app: App, clock: FakeClock) -> None:
    runs: list[float] = []

    @app.task
    def poll() -> str:
        runs.append(clock.time())
        if len(runs) == 1:
            raise Retry(after=5.0, reason="not ready yet")
        return "done"

    handle = poll.delay()
    drain(app)
    clock.advance(4.99)
    drain(app)
    assert len(runs) == 1
    clock.advance(0.01)
    drain(app)
    assert runs[1] - runs[0] == pytest.approx(5.0)
    assert handle.result(timeout=1.0) == "done"


def test_fail_goes_to_the_dead_letters_without_retrying(app: App) -> None:
    runs = []

    @app.task(retries=5)
    def charge() -> None:
        runs.append(1)
        raise Fail("card declined")

    handle = charge.delay()
    drain(app)
    assert runs == [1]
    assert handle.status() == "failed"
    assert app.broker.dead_letters()[0].reason == "Fail: card declined"


def test_a_result_that_is_not_json_fails_the_job_clearly(app: App) -> None:
    @app.task
    def make() -> object:
        return object()

    handle = make.delay()
    drain(app)
    assert handle.status() == "failed"
    assert "not JSON-serialisable" in app.broker.dead_letters()[0].reason


def test_bad_input_goes_to_the_dead_letters_and_the_worker_carries_on(
    app: App, clock: FakeClock
) -> None:
    @app.task
    def resize(path: str, width: int) -> str:
        return path

    def raw(task: str, args: list[object]) -> Envelope:
        job = Job(id=new_job_id(), task=task, args=args, enqueued_at=clock.time())
        return Envelope(id=job.id, queue="default", body=encode_job(job))

    garbage = Envelope(id=new_job_id(), queue="default", body=b"\x80not json")
    unknown, unfit = raw("vanished", []), raw("resize", ["a.jpg"])
    app.broker.enqueue([garbage, unknown, unfit])
    good = resize.delay("b.jpg", 100)
    worker = drain(app)
    assert good.result(timeout=1.0) == "b.jpg"
    reasons = {d.id: d.reason for d in app.broker.dead_letters()}
    assert "undecodable" in reasons[garbage.id]
    assert "unknown task 'vanished'" in reasons[unknown.id]
    assert "arguments do not fit" in reasons[unfit.id]
    for env in (garbage, unknown, unfit):
        assert app.job(env.id).status() == "failed"
    assert worker.stats.failed == 3


def test_a_job_whose_lease_ran_out_runs_again_with_its_attempt_raised(
    app: App, clock: FakeClock
) -> None:
    seen: list[int] = []

    @app.task
    def work() -> None:
        seen.append(1)

    handle = work.delay()
    (lost,) = app.broker.reserve(["default"], 1, lease=30.0)  # a worker that then died
    clock.advance(30.1)
    drain(app)
    assert seen == [1]
    record = handle.record()
    assert record is not None and record.attempt == 2
    assert app.broker.ack([lost]) == [False]  # the dead worker's reservation is stale


def test_a_job_that_keeps_losing_its_worker_is_dead_lettered(app: App, clock: FakeClock) -> None:
    @app.task(retries=0)
    def crashes() -> None: ...

    handle = crashes.delay()
    for _ in range(1 + CRASH_ALLOWANCE):
        assert app.broker.reserve(["default"], 1, lease=1.0)
        clock.advance(1.1)
    drain(app)
    assert handle.status() == "failed"
    assert "without finishing" in app.broker.dead_letters()[0].reason


def test_retried_dead_letters_run_again_and_forget_their_failure(app: App) -> None:
    fixed = False

    @app.task(retries=0)
    def once_broken() -> str:
        if not fixed:
            raise RuntimeError("bug")
        return "ok"

    handle = once_broken.delay()
    drain(app)
    assert handle.status() == "failed"
    fixed = True
    assert app.retry_dead([handle.id]) == [handle.id]
    assert handle.status() == "queued"
    drain(app)
    assert handle.result(timeout=1.0) == "ok"


def test_higher_priority_runs_first(app: App) -> None:
    order: list[str] = []

    @app.task
    def note(name: str) -> None:
        order.append(name)

    note.enqueue(("low",), priority=0)
    note.enqueue(("high",), priority=9)
    note.enqueue(("low2",), priority=0)
    Worker(app, burst=True, concurrency=1, prefetch=0).run()  # one slot: runs in reserve order
    assert order == ["high", "low", "low2"]


@pytest.mark.parametrize("attempt", [1, 2, 3, 10])
def test_backoff_delay_is_exponential_with_equal_jitter_and_capped(attempt: int) -> None:
    rng = random.Random(attempt)
    ceiling = min(60.0, 2.0 * 2 ** (attempt - 1))
    for _ in range(100):
        delay = backoff_delay(attempt, base=2.0, cap=60.0, rng=rng)
        assert ceiling / 2 <= delay <= ceiling


def test_job_states_are_the_documented_strings() -> None:
    assert [s.value for s in JobState] == [
        "queued", "scheduled", "running", "retrying", "succeeded", "failed", "unknown",
    ]  # fmt: skip

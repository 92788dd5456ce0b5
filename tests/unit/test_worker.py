"""The worker, in burst mode on the fake clock: outcomes, retries, bad input, leases."""

from __future__ import annotations

import asyncio
import random

import pytest

from sleipnir import App, Fail, JobFailedError, JobState, ResultTimeoutError, Retry, Worker
from sleipnir.brokers.base import BrokerJobState, Envelope
from sleipnir.job import new_job_id
from sleipnir.testing import FakeClock
from sleipnir.worker import MAX_LOST, backoff_delay

from .conftest import attempt_of, drain, raw_job


def test_a_job_runs_and_its_value_is_stored(app: App) -> None:
    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    handle = add.delay(2, b=3)
    worker = drain(app)
    assert handle.status() == "succeeded"
    assert handle.result(timeout=1.0) == 5
    record = handle.record()
    assert record is not None
    assert (record.state, record.task, record.attempt, record.error) == (
        "succeeded",
        "add",
        1,
        None,
    )
    assert worker.stats.succeeded == 1
    assert app.broker.job_info(handle.id) is None  # acked: the broker let it go
    assert app.broker.stats()[0].ready == 0


def test_status_is_running_while_the_task_runs(app: App) -> None:
    ids: list[str] = []
    seen: list[str] = []

    @app.task
    def work() -> None:
        seen.append(app.status(ids[0]))

    ids.append(work.delay().id)
    drain(app)
    assert seen == ["running"]


def test_result_times_out_while_the_job_has_not_run(app: App) -> None:
    @app.task
    def work() -> None: ...

    with pytest.raises(ResultTimeoutError):
        work.delay().result(timeout=0.0)


def test_an_async_task_runs_on_the_workers_event_loop(app: App) -> None:
    loops: list[asyncio.AbstractEventLoop] = []

    @app.task
    async def double(x: int) -> int:
        loops.append(asyncio.get_running_loop())
        return x * 2

    @app.task
    def triple(x: int) -> int:
        return x * 3

    handles = [double.delay(21), triple.delay(2)]
    drain(app)
    assert [h.result(timeout=1.0) for h in handles] == [42, 6]
    assert len(loops) == 1


def test_an_async_task_over_its_time_limit_fails(app: App) -> None:
    @app.task(retries=0, timeout=0.05)
    async def hang() -> None:
        await asyncio.Event().wait()

    handle = hang.delay()
    drain(app)
    assert handle.status() == "failed"
    with pytest.raises(JobFailedError, match=r"time limit of 0\.05 s"):
        handle.result(timeout=1.0)


def test_a_failing_task_is_retried_then_fails_for_good(app: App, clock: FakeClock) -> None:
    ids: list[str] = []
    attempts: list[int] = []

    @app.task(retries=2, backoff=1.0)
    def flaky() -> None:
        attempts.append(attempt_of(app, ids[0]))
        raise ValueError("upstream down")

    handle = flaky.delay()
    ids.append(handle.id)
    drain(app)
    assert attempts == [1]
    assert handle.status() == "retrying"
    clock.advance(1.0)
    drain(app)
    assert attempts == [1, 2]
    assert handle.status() == "retrying"
    clock.advance(2.0)
    drain(app)
    assert attempts == [1, 2, 3]
    assert handle.status() == "failed"
    with pytest.raises(JobFailedError, match=r"ValueError: upstream down$"):
        handle.result(timeout=1.0)
    (dead,) = app.broker.dead_letters()
    assert (dead.id, dead.attempt) == (handle.id, 3)
    assert dead.reason.startswith("ValueError: upstream down")
    assert "attempt 3 of 3, no retries left" in dead.reason
    clock.advance(3600.0)
    drain(app)
    assert attempts == [1, 2, 3]  # a dead letter is not run again by itself


def test_retrying_status_holds_while_the_retry_waits_and_when_it_is_due(
    app: App, clock: FakeClock
) -> None:
    @app.task(retries=1, backoff=10.0)
    def flaky() -> None:
        raise ValueError("no")

    handle = flaky.delay()
    drain(app)
    info = app.broker.job_info(handle.id)
    assert info is not None and info.state is BrokerJobState.SCHEDULED
    assert handle.status() == "retrying"
    clock.advance(10.0)
    info = app.broker.job_info(handle.id)
    assert info is not None and info.state is BrokerJobState.READY
    assert handle.status() == "retrying"


@pytest.mark.parametrize("backoff", [1.0, 10.0])
def test_first_retry_is_not_due_before_half_the_backoff_and_due_after_it(
    app: App, clock: FakeClock, backoff: float
) -> None:
    runs: list[float] = []

    @app.task(retries=1, backoff=backoff)
    def flaky() -> None:
        runs.append(clock.time())
        raise ValueError("no")

    flaky.delay()
    drain(app)
    clock.advance(backoff / 2 - 0.001)
    drain(app)
    assert len(runs) == 1
    clock.advance(backoff / 2 + 0.001)
    drain(app)
    assert len(runs) == 2
    assert backoff / 2 <= runs[1] - runs[0] <= backoff + 0.001


def test_retry_after_schedules_exactly_that_many_seconds_later(app: App, clock: FakeClock) -> None:
    runs: list[float] = []

    @app.task(backoff=100.0)  # Retry(after=) wins over the backoff
    def poll() -> str:
        runs.append(clock.time())
        if len(runs) == 1:
            raise Retry(after=5.0, reason="not ready yet")
        return "done"

    handle = poll.delay()
    drain(app)
    assert handle.status() == "retrying"
    clock.advance(4.99)
    drain(app)
    assert len(runs) == 1
    clock.advance(0.01)
    drain(app)
    assert runs[1] - runs[0] == pytest.approx(5.0)
    assert handle.result(timeout=1.0) == "done"


def test_retry_counts_as_an_attempt(app: App, clock: FakeClock) -> None:
    runs: list[int] = []

    @app.task(retries=1)
    def poll() -> None:
        runs.append(1)
        raise Retry(after=1.0)

    handle = poll.delay()
    for _ in range(4):
        drain(app)
        clock.advance(1.0)
    assert runs == [1, 1]
    assert handle.status() == "failed"
    assert app.broker.dead_letters()[0].reason.startswith("Retry: retry requested")


def test_fail_goes_to_the_dead_letters_without_retrying(app: App, clock: FakeClock) -> None:
    runs: list[int] = []

    @app.task(retries=5)
    def charge() -> None:
        runs.append(1)
        raise Fail("card declined")

    handle = charge.delay()
    drain(app)
    clock.advance(3600.0)
    drain(app)
    assert runs == [1]
    assert handle.status() == "failed"
    (dead,) = app.broker.dead_letters()
    assert (dead.id, dead.reason, dead.attempt) == (handle.id, "Fail: card declined", 1)
    with pytest.raises(JobFailedError, match="card declined"):
        handle.result(timeout=1.0)


def test_a_result_that_is_not_json_fails_the_job_with_a_clear_reason(app: App) -> None:
    runs: list[int] = []

    @app.task(retries=3)
    def make() -> object:
        runs.append(1)
        return object()

    handle = make.delay()
    drain(app)
    assert runs == [1]
    assert handle.status() == "failed"
    assert app.broker.dead_letters()[0].reason.startswith("result is not JSON-serialisable")
    with pytest.raises(JobFailedError, match="result is not JSON-serialisable"):
        handle.result(timeout=1.0)


def test_bad_input_goes_to_the_dead_letters_and_the_worker_carries_on(
    app: App, clock: FakeClock
) -> None:
    @app.task
    def resize(path: str, width: int) -> str:
        return f"{path}@{width}"

    garbage = Envelope(id=new_job_id(), queue="default", body=b"not json")
    unknown = raw_job(clock, "vanished")
    unfit = raw_job(clock, "resize", ["a.jpg"])
    app.broker.enqueue([garbage, unknown, unfit])
    good = resize.delay("b.jpg", 100)

    worker = drain(app)

    assert good.result(timeout=1.0) == "b.jpg@100"
    reasons = {d.id: d.reason for d in app.broker.dead_letters()}
    assert set(reasons) == {garbage.id, unknown.id, unfit.id}
    assert "undecodable" in reasons[garbage.id]
    assert "unknown task 'vanished'" in reasons[unknown.id]
    assert "arguments do not fit" in reasons[unfit.id]
    for env in (garbage, unknown, unfit):
        assert app.job(env.id).status() == "failed"
    assert (worker.stats.succeeded, worker.stats.failed) == (1, 3)


def test_bad_input_alone_does_not_stop_a_later_good_job(app: App, clock: FakeClock) -> None:
    @app.task
    def ok() -> str:
        return "ok"

    app.broker.enqueue([Envelope(id=new_job_id(), queue="default", body=b"\x00\xff")])
    drain(app)
    handle = ok.delay()
    drain(app)
    assert handle.result(timeout=1.0) == "ok"


def test_a_job_whose_lease_ran_out_runs_again_with_attempt_two(app: App, clock: FakeClock) -> None:
    ids: list[str] = []
    attempts: list[int] = []

    @app.task
    def work() -> str:
        attempts.append(attempt_of(app, ids[0]))
        return "done"

    handle = work.delay()
    ids.append(handle.id)
    (lost,) = app.broker.reserve(["default"], 1, lease=app.lease)  # a worker that then died
    drain(app)
    assert attempts == []  # still leased: nobody else may take it
    assert handle.status() == "running"
    clock.advance(app.lease + 0.1)
    drain(app)
    assert attempts == [2]
    assert handle.result(timeout=1.0) == "done"
    record = handle.record()
    assert record is not None and record.attempt == 2
    assert app.broker.ack([lost]) == [False]  # the dead worker's reservation is stale


def test_a_job_that_keeps_losing_its_worker_is_dead_lettered(app: App, clock: FakeClock) -> None:
    runs: list[int] = []

    @app.task(retries=0)
    def crashes() -> None:
        runs.append(1)

    handle = crashes.delay()
    for lost in range(MAX_LOST):
        (res,) = app.broker.reserve(["default"], 1, lease=1.0)
        assert (res.attempt, res.lost) == (lost + 1, lost)
        clock.advance(1.1)
    drain(app)
    assert runs == []
    assert handle.status() == "failed"
    assert f"lease ran out {MAX_LOST} times" in app.broker.dead_letters()[0].reason


def test_dead_letters_retried_through_the_broker_run_again(app: App) -> None:
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
    assert app.broker.retry_dead() == [handle.id]
    assert app.broker.dead_letters() == []
    drain(app)
    assert handle.result(timeout=1.0) == "ok"
    assert handle.status() == "succeeded"


def test_a_dead_letter_of_a_later_attempt_keeps_its_new_result_when_retried(
    app: App, clock: FakeClock
) -> None:
    fixed = False

    @app.task(retries=1, backoff=1.0)
    def once_broken() -> str:
        if not fixed:
            raise RuntimeError("bug")
        return "ok"

    handle = once_broken.delay()
    drain(app)
    clock.advance(1.0)
    drain(app)
    assert app.broker.dead_letters()[0].attempt == 2
    fixed = True
    assert app.retry_dead([handle.id]) == [handle.id]
    drain(app)  # runs as attempt 1 (attempts counted from zero again) and succeeds
    assert handle.status() == "succeeded"
    assert handle.result(timeout=1.0) == "ok"


def test_app_retry_dead_forgets_the_failure_and_the_job_runs_again(
    app: App, clock: FakeClock
) -> None:
    fixed = False

    @app.task(retries=1, backoff=1.0)
    def once_broken() -> str:
        if not fixed:
            raise RuntimeError("bug")
        return "ok"

    handle = once_broken.delay()
    drain(app)
    clock.advance(1.0)
    drain(app)
    assert handle.status() == "failed"
    fixed = True
    assert app.retry_dead([handle.id, "not-a-dead-letter"]) == [handle.id]
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


def test_a_worker_serves_the_queues_of_the_apps_tasks(app: App) -> None:
    @app.task(queue="images")
    def resize() -> str:
        return "resized"

    @app.task
    def other() -> None: ...

    handle = resize.delay()
    worker = drain(app)
    assert worker.queues == ["default", "images"]
    assert handle.result(timeout=1.0) == "resized"


@pytest.mark.parametrize("attempt", [1, 2, 3, 5, 8, 20])
def test_backoff_delay_lies_between_half_the_ceiling_and_the_ceiling(attempt: int) -> None:
    rng = random.Random(attempt)
    ceiling = min(60.0, 2.0 * 2 ** (attempt - 1))
    delays = [backoff_delay(attempt, base=2.0, cap=60.0, rng=rng) for _ in range(200)]
    assert all(ceiling / 2 <= d <= ceiling for d in delays)
    assert max(delays) - min(delays) > ceiling / 10  # jittered, not a constant


def test_backoff_delay_is_capped_and_repeatable_with_a_seeded_rng() -> None:
    assert all(30.0 <= backoff_delay(50, 1.0, 60.0, random.Random(i)) <= 60.0 for i in range(50))
    first = backoff_delay(3, 1.0, 60.0, random.Random(0))
    assert first == backoff_delay(3, 1.0, 60.0, random.Random(0))
    assert backoff_delay(1, 0.0, 60.0, random.Random(0)) == 0.0


def test_worker_refuses_bad_settings(app: App) -> None:
    with pytest.raises(ValueError, match="concurrency"):
        Worker(app, concurrency=0)
    with pytest.raises(ValueError, match="lease"):
        Worker(app, lease=0.0)


def test_job_state_of_every_outcome_is_one_of_the_documented_strings(app: App) -> None:
    @app.task(retries=0)
    def ok() -> None: ...

    @app.task(retries=0)
    def bad() -> None:
        raise Fail("no")

    handles = [ok.delay(), bad.delay()]
    drain(app)
    assert [h.status() for h in handles] == [JobState.SUCCEEDED, JobState.FAILED]


def test_app_retry_dead_keeps_the_outcome_of_a_worker_that_was_quicker_than_it(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another process's worker may take the job the moment it is back on its queue,
    # before App.retry_dead goes on to forget the old failure.
    fixed = False

    @app.task(retries=0)
    def once_broken() -> str:
        if not fixed:
            raise RuntimeError("bug")
        return "ok"

    handle = once_broken.delay()
    drain(app)
    fixed = True
    move = app.broker.retry_dead

    def move_then_a_quick_worker_runs_it(ids=None):  # type: ignore[no-untyped-def]
        moved = move(ids)
        drain(app)
        return moved

    monkeypatch.setattr(app.broker, "retry_dead", move_then_a_quick_worker_runs_it)
    assert app.retry_dead([handle.id]) == [handle.id]
    assert handle.status() == "succeeded"
    assert handle.result(timeout=1.0) == "ok"


def test_result_async_waits_on_the_event_loop_without_blocking_it(app: App) -> None:
    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    @app.task(retries=0)
    def broken() -> None:
        raise ValueError("nope")

    good, bad, never = add.delay(1, 2), broken.delay(), add.enqueue((0, 0), delay=3600.0)

    async def main() -> tuple[int, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        beat = asyncio.create_task(ticker())
        waiting = asyncio.create_task(good.result_async(timeout=30.0))
        await asyncio.to_thread(drain, app)  # the worker runs while the loop keeps going
        value = await waiting
        with pytest.raises(JobFailedError, match="ValueError: nope"):
            await bad.result_async(timeout=30.0)
        with pytest.raises(ResultTimeoutError):
            await never.result_async(timeout=0.01)
        beat.cancel()
        return value, ticks

    value, ticks = asyncio.run(main())
    assert value == 3
    assert ticks > 1

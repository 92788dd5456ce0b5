"""What a running job can see and what can be done to it: ctx, progress, cancel, limits,
chains and groups. Burst workers on the fake clock, on the memory and SQLite brokers."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from sleipnir import (
    App,
    Context,
    InvalidArgumentsError,
    JobCancelledError,
    JobFailedError,
    JobState,
    chain,
    group,
)
from sleipnir.task import parse_rate
from sleipnir.testing import FakeClock
from sleipnir.worker.features import cancel as cancel_module

from .conftest import drain

# -- ctx and progress ------------------------------------------------------------------


def test_a_task_taking_ctx_gets_its_job_and_callers_never_pass_it(app: App) -> None:
    seen: list[tuple[str, int, str]] = []

    @app.task
    def work(ctx: Context, n: int) -> int:
        seen.append((ctx.job_id, ctx.attempt, ctx.task))
        return n * 2

    handle = work.delay(21)
    with pytest.raises(InvalidArgumentsError):
        work.delay()
    drain(app)
    assert handle.result(timeout=1.0) == 42
    assert seen == [(handle.id, 1, "work")]
    assert work(5) == 10  # a direct call gets a detached context


def test_a_first_parameter_named_ctx_is_a_context_without_annotation(app: App) -> None:
    @app.task
    def work(ctx, n):  # type: ignore[no-untyped-def]
        return type(ctx).__name__

    handle = work.delay(1)
    drain(app)
    assert handle.result(timeout=1.0) == "Context"


def test_progress_is_readable_while_the_job_runs_and_after(app: App) -> None:
    during: list[Any] = []
    handles: list[Any] = []

    @app.task
    def report(ctx: Context) -> None:
        ctx.progress(40, 100)
        during.append(handles[0].progress())
        ctx.progress(41, 100)  # within 0.2 s of the last write: not stored
        during.append(handles[0].progress())
        ctx.progress(100, 100)  # the final report always is

    handles.append(report.delay())
    assert handles[0].progress() is None
    drain(app)
    assert during == [(40, 100), (40, 100)]
    assert handles[0].progress() == (100, 100)


# -- cancel ------------------------------------------------------------------------------


def test_a_cancelled_queued_job_never_runs(app: App) -> None:
    ran: list[int] = []

    @app.task
    def work(n: int) -> None:
        ran.append(n)

    keep, drop = work.delay(1), work.delay(2)
    assert drop.cancel() is True
    assert drop.status() == "cancelled"
    worker = drain(app)
    assert ran == [1]
    assert drop.status() == "cancelled"
    assert app.broker.job_info(drop.id) is None  # acked: gone from the queue
    with pytest.raises(JobCancelledError):
        drop.result(timeout=1.0)
    assert worker.stats.cancelled == 1
    assert keep.cancel() is False  # finished: nothing to cancel
    assert keep.status() == "succeeded"


@pytest.fixture
def quick_cancel_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cancel_module, "CANCEL_CHECK_EVERY", 0.01)


@pytest.mark.usefixtures("quick_cancel_checks")
def test_a_running_sync_task_is_told_through_its_ctx(app: App) -> None:
    handles: list[Any] = []
    told: list[bool] = []

    @app.task
    def long_job(ctx: Context) -> str:
        handles[0].cancel()
        told.append(ctx.wait(30.0))  # wakes as soon as the worker sees the request
        ctx.progress(1, 2)  # raises Cancelled
        return "finished anyway"

    handles.append(long_job.delay())
    started = time.monotonic()
    drain(app)
    assert time.monotonic() - started < 20.0
    assert told == [True]
    assert handles[0].status() == "cancelled"
    record = handles[0].record()
    assert record is not None and record.state is JobState.CANCELLED


@pytest.mark.usefixtures("quick_cancel_checks")
def test_a_running_async_task_is_cancelled_at_its_await(app: App) -> None:
    handles: list[Any] = []
    reached: list[str] = []

    @app.task
    async def long_job() -> str:
        handles[0].cancel()
        await asyncio.sleep(30.0)
        reached.append("end")
        return "done"

    handles.append(long_job.delay())
    started = time.monotonic()
    drain(app)
    assert time.monotonic() - started < 20.0
    assert reached == []
    assert handles[0].status() == "cancelled"


def test_a_cancelled_unique_job_frees_its_key(app: App) -> None:
    @app.task(unique_for=3600.0)
    def once(n: int) -> None: ...

    first = once.delay(1)
    first.cancel()
    drain(app)
    assert once.delay(1).id != first.id


# -- limits ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("100/m", (100, 60.0)), ("5/s", (5, 1.0)), ("1000/h", (1000, 3600.0)), ("10/30s", (10, 30.0))],
)
def test_rates_are_read_as_runs_per_period(text: str, expected: tuple[int, float]) -> None:
    assert parse_rate(text) == expected


@pytest.mark.parametrize("text", ["", "100", "x/m", "0/m", "5/0s", "5/w", "-1/s"])
def test_a_malformed_rate_is_refused_at_registration(app: App, text: str) -> None:
    with pytest.raises(ValueError, match="rate_limit"):

        @app.task(rate_limit=text)
        def work() -> None: ...


def test_a_rate_limited_job_waits_without_using_a_retry(app: App, clock: FakeClock) -> None:
    ran: list[int] = []

    @app.task(rate_limit="2/m", retries=0)
    def call_api(n: int) -> None:
        ran.append(n)

    handles = call_api.map([(i,) for i in range(5)])
    drain(app)
    assert len(ran) == 2
    waiting = [h for h in handles if h.status() == "scheduled"]
    assert len(waiting) == 3
    # A waiter comes back within one emission interval (30 s) after a slot frees.
    clock.advance(91.0)
    drain(app)
    assert len(ran) == 4
    clock.advance(91.0)
    drain(app)
    assert sorted(ran) == [0, 1, 2, 3, 4]
    records = [h.record() for h in handles]
    # retries=0: had a wait counted as an attempt, the job would have failed.
    assert all(r is not None and (r.state, r.attempt) == ("succeeded", 1) for r in records)


def test_a_concurrency_limit_holds_with_more_worker_threads(app: App, clock: FakeClock) -> None:
    lock = threading.Lock()
    running: list[int] = []
    most: list[int] = [0]
    gate = threading.Event()

    @app.task(concurrency=1, retries=0)
    def exclusive(n: int) -> None:
        with lock:
            running.append(n)
            most[0] = max(most[0], len(running))
        gate.wait(0.05)  # a little overlap for a second thread to try
        with lock:
            running.remove(n)

    handles = exclusive.map([(i,) for i in range(4)])
    for _ in range(20):
        drain(app, concurrency=4)
        if all(h.status() == "succeeded" for h in handles):
            break
        clock.advance(2.0)
    assert [h.status() for h in handles] == ["succeeded"] * 4
    assert most[0] == 1
    assert all(r is not None and r.attempt == 1 for r in (h.record() for h in handles))
    # Every slot was given back: another job may take it at once.
    assert app.results.acquire_slot("concurrency:exclusive", "probe", 1, clock.time() + 1) is None


# -- chains and groups ------------------------------------------------------------------


def _arith(app: App) -> tuple[Any, Any, Any]:
    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    @app.task(retries=0)
    def half(n: int) -> int:
        if n % 2:
            raise ValueError(f"{n} is odd")
        return n // 2

    @app.task
    def total(values: list[int], bonus: int = 0) -> int:
        return sum(values) + bonus

    return add, half, total


def test_a_chain_passes_each_result_to_the_next_step(app: App) -> None:
    add, half, _ = _arith(app)
    handle = chain(add.s(3, 5), half.s(), add.s(10)).delay()
    assert len(handle.steps) == 3
    assert handle.steps[-1] == handle
    drain(app)
    assert [s.result(timeout=1.0) for s in handle.steps] == [8, 4, 14]


def test_signatures_compose_with_the_pipe(app: App) -> None:
    add, half, _ = _arith(app)
    handle = (add.s(1, 1) | half.s() | add.s(5)).delay()
    drain(app)
    assert handle.result(timeout=1.0) == 6


def test_a_failed_step_fails_the_rest_without_running_them(app: App) -> None:
    add, half, _ = _arith(app)
    handle = chain(add.s(1, 2), half.s(), add.s(1)).delay()
    drain(app)
    first, middle, last = handle.steps
    assert first.result(timeout=1.0) == 3
    assert middle.status() == "failed"
    with pytest.raises(JobFailedError, match="earlier step"):
        last.result(timeout=1.0)


def test_a_chain_step_that_does_not_fit_is_refused_before_enqueueing(app: App) -> None:
    add, _, _ = _arith(app)
    with pytest.raises(InvalidArgumentsError):
        chain(add.s(1, 2), add.s(1, 2))  # the second would get three arguments
    assert app.broker.stats() == [] or all(s.ready == 0 for s in app.broker.stats())


def test_a_group_collects_results_in_order_and_calls_back(app: App) -> None:
    add, _, total = _arith(app)
    handle = group((add.s(i, i) for i in range(5)), callback=total.s(bonus=100)).delay()
    drain(app)
    assert handle.results(timeout=1.0) == [0, 2, 4, 6, 8]
    assert handle.callback is not None
    drain(app)
    assert handle.callback.result(timeout=1.0) == 120


def test_a_group_with_a_failed_member_fails_its_callback(app: App) -> None:
    _, half, total = _arith(app)
    handle = group([half.s(2), half.s(3)], callback=total.s()).delay()
    drain(app)
    with pytest.raises(JobFailedError):
        handle.results(timeout=1.0)
    assert handle.callback is not None
    with pytest.raises(JobFailedError, match="did not succeed"):
        handle.callback.result(timeout=1.0)


def test_a_repeated_settle_enqueues_the_next_step_once(app: App) -> None:
    from sleipnir.job import decode_job
    from sleipnir.workflow import follow_up

    add, _, _ = _arith(app)
    handle = chain(add.s(1, 1), add.s(1)).delay()
    first = decode_job(app.broker.reserve(["default"], 1, 30.0)[0].body)
    for _ in range(2):  # as if the step ran twice (its worker died before the ack)
        follow_up(app, [(first, JobState.SUCCEEDED, b"2", None)])
    ready = app.broker.reserve(["default"], 10, 30.0)
    assert [r.id for r in ready] == [handle.id]


# -- time limits of sync tasks ------------------------------------------------------------


@pytest.mark.usefixtures("quick_cancel_checks")
def test_a_sync_task_with_ctx_is_told_at_its_time_limit_and_retried(
    app: App, clock: FakeClock
) -> None:
    told: list[bool] = []

    @app.task(timeout=10.0, retries=1, backoff=0.0, max_backoff=0.0)
    def slow(ctx: Context) -> str:
        if ctx.attempt == 2:
            return "second attempt"
        clock.advance(11.0)  # past the limit, as the worker's clock sees it
        told.append(ctx.wait(30.0))
        ctx.check_cancelled()  # raises TimeoutError
        return "never"

    handle = slow.delay()
    drain(app)
    drain(app)
    assert told == [True]
    assert handle.result(timeout=1.0) == "second attempt"
    record = handle.record()
    assert record is not None and record.attempt == 2


def test_the_worker_says_which_sync_time_limits_it_cannot_enforce(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    @app.task(timeout=5.0)
    def blind() -> None: ...

    @app.task(timeout=5.0)
    def polite(ctx: Context) -> None: ...

    with caplog.at_level("INFO", logger="sleipnir.worker"):
        drain(app)
    lines = [r.getMessage() for r in caplog.records]
    assert any("not enforced" in line and "blind" in line for line in lines)
    assert not any("not enforced" in line and "polite" in line for line in lines)
    assert any("told to the task" in line and "polite" in line for line in lines)


def test_a_callback_too_big_to_enqueue_fails_and_the_members_still_settle(
    clock: FakeClock, tmp_path: Any
) -> None:
    app = App(broker="memory://", clock=clock, max_payload_bytes=400)

    @app.task
    def blob(n: int) -> str:
        return "x" * 150

    @app.task
    def joined(parts: list[str]) -> int:
        return len(parts)

    handle = group([blob.s(1), blob.s(2), blob.s(3)], callback=joined.s()).delay()
    drain(app)
    assert [len(v) for v in handle.results(timeout=1.0)] == [150, 150, 150]
    assert handle.callback is not None
    with pytest.raises(JobFailedError, match="could not be enqueued"):
        handle.callback.result(timeout=1.0)
    assert all(s.ready == s.running == 0 for s in app.broker.stats())

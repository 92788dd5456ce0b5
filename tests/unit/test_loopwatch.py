"""Async time limits are honest: a coroutine that blocks the worker's event loop.

A coroutine plays at blocking by moving the fake clock forward without awaiting
(``clock.advance`` stands for any call that does not await): the worker's watch reads
the app's clock (``FakeClock.monotonic``), and the tests of :class:`LoopWatch` alone a
fake monotonic clock of their own.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from sleipnir import App, JobFailedError
from sleipnir import loopwatch as loopwatch_module
from sleipnir.loopwatch import BlockedLoop, LoopWatch
from sleipnir.testing import FakeClock

from ..waiting import wait_until
from .conftest import drain

T = TypeVar("T")

BLOCKED = "without awaiting (it blocked the worker's event loop)"


def _blocked_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "has blocked the event loop" in r.getMessage()
    ]


# -- on the worker -----------------------------------------------------------------


def test_an_async_task_that_blocks_past_its_limit_fails_with_a_timeout(
    app: App, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    @app.task(retries=0, timeout=0.3)
    async def spin() -> str:
        clock.advance(0.45)  # never awaits: the loop cannot cancel it at 0.3 s
        return "done"

    handle = spin.delay()
    drain(app)
    assert handle.status() == "failed"
    with pytest.raises(JobFailedError, match=r"time limit of 0\.3 s without awaiting"):
        handle.result(timeout=1.0)
    record = handle.record()
    assert record is not None and record.error is not None
    assert record.error.startswith(
        f"TimeoutError: the job ran over its time limit of 0.3 s {BLOCKED}"
    )
    [warning] = _blocked_warnings(caplog)
    assert f"job {handle.id} (spin) has blocked the event loop for" in warning
    assert "CPU-bound work belongs in isolate=True or a sync task" in warning


def test_a_blocking_async_task_is_retried_by_its_policy(app: App, clock: FakeClock) -> None:
    runs: list[int] = []

    @app.task(retries=2, timeout=0.3)
    async def spin() -> str:
        runs.append(1)
        clock.advance(0.45)
        await asyncio.sleep(0)  # yields at last: the verdict still stands
        return "done"

    handle = spin.delay()
    drain(app)
    assert runs == [1]
    assert handle.status() == "retrying"
    record = handle.record()
    assert record is not None and record.error is not None
    assert BLOCKED in record.error


def test_a_job_that_awaits_is_not_charged_for_another_that_blocks(
    app: App, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    spinning = threading.Event()

    @app.task(retries=0, timeout=0.3)
    async def spin() -> None:
        spinning.set()
        clock.advance(0.45)

    @app.task(retries=0, timeout=5.0)
    async def polite() -> int:
        deadline = time.monotonic() + 5.0
        while not spinning.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.001)  # still running, awaiting, while the other blocks
        return 7

    awaiter, blocker = polite.delay(), spin.delay()
    drain(app, concurrency=2)
    assert blocker.status() == "failed"
    assert awaiter.status() == "succeeded"
    assert awaiter.result(timeout=1.0) == 7
    warnings = _blocked_warnings(caplog)
    assert [w for w in warnings if awaiter.id in w] == []
    assert len([w for w in warnings if blocker.id in w]) == 1


def test_a_job_that_blocks_for_less_than_its_limit_succeeds(
    app: App, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    @app.task(retries=0, timeout=0.5)
    async def brief() -> str:
        clock.advance(0.05)
        await asyncio.sleep(0)
        clock.advance(0.05)
        return "ok"

    handle = brief.delay()
    drain(app)
    assert handle.status() == "succeeded"
    assert handle.result(timeout=1.0) == "ok"
    assert _blocked_warnings(caplog) == []


def test_a_job_without_a_limit_that_blocks_long_is_told_once_and_keeps_its_value(
    app: App,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(loopwatch_module, "WARN_AFTER", 0.05)

    @app.task(retries=0)
    async def slow() -> str:
        clock.advance(0.1)
        await asyncio.sleep(0)
        clock.advance(0.1)
        return "ok"

    handle = slow.delay()
    drain(app)
    assert handle.status() == "succeeded"
    assert handle.result(timeout=1.0) == "ok"
    [warning] = _blocked_warnings(caplog)
    assert f"job {handle.id} (slow)" in warning


# -- the watch alone ------------------------------------------------------------------


class _Monotonic:
    """A monotonic clock that coroutines move forward to play at blocking."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def block(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def fake() -> _Monotonic:
    return _Monotonic()


def test_a_step_that_holds_the_loop_past_the_limit_raises_blocked_loop(fake: _Monotonic) -> None:
    watch = LoopWatch(monotonic=fake)

    async def spin() -> int:
        await asyncio.sleep(0)
        fake.block(0.2)
        await asyncio.sleep(0)
        fake.block(0.2)  # this step is running when the limit (0.3 s) comes
        return 1

    with pytest.raises(BlockedLoop, match=r"time limit of 0\.3 s without awaiting"):
        asyncio.run(_watched(watch, spin, "j1", 0.3))


def test_a_step_that_starts_after_the_limit_is_not_blamed(fake: _Monotonic) -> None:
    watch = LoopWatch(monotonic=fake)

    async def other() -> None:
        fake.block(0.5)  # another job holds the loop past the first one's limit

    async def polite() -> int:
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return 1

    async def main() -> list[int | None]:
        return list(
            await asyncio.gather(
                _watched(watch, polite, "j1", 0.3), _watched(watch, other, "j2", None)
            )
        )

    assert asyncio.run(main()) == [1, None]


def test_exceptions_reach_the_coroutine_as_with_yield_from(fake: _Monotonic) -> None:
    watch = LoopWatch(monotonic=fake)

    async def catches() -> str:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(fut.set_exception, ValueError("no"))
        try:
            await fut
        except ValueError as exc:
            return f"caught {exc}"
        return "missed"

    async def raises() -> None:
        await asyncio.sleep(0)
        raise KeyError("k")

    assert asyncio.run(_watched(watch, catches, "j1", 0.3)) == "caught no"
    with pytest.raises(KeyError):
        asyncio.run(_watched(watch, raises, "j2", 0.3))


def test_closing_the_watch_closes_the_coroutine(fake: _Monotonic) -> None:
    closed: list[bool] = []

    async def waits() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            closed.append(True)

    async def main() -> None:
        awaiting = LoopWatch(monotonic=fake).watch(waits(), "j1", "waits", None).__await__()
        next(awaiting)  # the first step: it now awaits its sleep
        awaiting.close()

    asyncio.run(main())
    assert closed == [True]


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=5.0)
    loop.close()


def test_the_watchdog_warns_while_the_loop_is_still_blocked(
    loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    release, warned = threading.Event(), threading.Event()
    logger = logging.getLogger("sleipnir.worker")
    handler = _OnWarning(warned)
    logger.addHandler(handler)
    watch = LoopWatch(warn_after=0.05, tick=0.01)
    watch.start()

    async def stuck() -> bool:
        return release.wait(timeout=10.0)  # holds the loop until the test lets go

    try:
        done = asyncio.run_coroutine_threadsafe(_watched(watch, stuck, "j1", None), loop)
        assert warned.wait(timeout=5.0)
        # the handler above runs before the warning reaches caplog's, on the root logger
        seen = wait_until(lambda: _blocked_warnings(caplog), 5.0, "the warning reached no log")
        still_blocked = not done.done()
    finally:
        release.set()
        watch.stop()
        logger.removeHandler(handler)
    assert still_blocked
    assert len(seen) == 1 and "job j1 (stuck)" in seen[0]
    assert done.result(timeout=5.0) is True
    assert len(_blocked_warnings(caplog)) == 1  # not again when the step ends


class _OnWarning(logging.Handler):
    def __init__(self, seen: threading.Event) -> None:
        super().__init__(logging.WARNING)
        self.seen = seen

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.set()


async def _watched(
    watch: LoopWatch, fn: Callable[[], Coroutine[Any, Any, T]], job_id: str, limit: float | None
) -> T:
    return await watch.watch(fn(), job_id, fn.__name__, limit)
